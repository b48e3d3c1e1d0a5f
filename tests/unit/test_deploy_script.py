"""`make deploy` (scripts/deploy.sh) against a stand-in `gcloud` that records its arguments."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ("PROJECT", "REGION", "SERVICE", "IMAGE", "BUCKET", "CHECKPOINT_MOUNT",
            "SQL_INSTANCE", "DATABASE_URL_SECRET", "TOKENS_SECRET", "SERVICE_ACCOUNT", "CPU",
            "MEMORY", "CONCURRENCY", "MIN_INSTANCES", "MAX_INSTANCES", "TIMEOUT",
            "SHUTDOWN_GRACE_S", "DRY_RUN", "DEPLOY_ARGS")
STAND_IN = """#!/bin/sh
printf '%s\\0' "$@" >"$GCLOUD_ARGS_FILE"
"""


@dataclass
class Deploy:
    status: int
    stdout: str
    stderr: str
    gcloud_args: list[str] | None

    def flags(self) -> dict[str, list[str]]:
        """--name=value and bare --name flags, by name, in the order given."""
        assert self.gcloud_args is not None, "gcloud was not run"
        found: dict[str, list[str]] = defaultdict(list)
        for arg in self.gcloud_args[3:]:
            name, _, value = arg.partition("=")
            found[name].append(value)
        return found

    def env_vars(self) -> dict[str, str]:
        (joined,) = self.flags()["--set-env-vars"]
        return dict(pair.split("=", 1) for pair in joined.split(","))


def deploy(tmp_path: Path, *args: str, **settings: str) -> Deploy:
    return run_with_stand_in(tmp_path, ["scripts/deploy.sh", *args], settings)


def make_deploy(tmp_path: Path, **settings: str) -> Deploy:
    return run_with_stand_in(tmp_path, ["make", "--no-print-directory", "deploy"], settings)


def run_with_stand_in(tmp_path: Path, command: list[str], settings: dict[str, str]) -> Deploy:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "gcloud").write_text(STAND_IN)
    (bin_dir / "gcloud").chmod(0o755)
    recorded = tmp_path / "gcloud-args"
    recorded.unlink(missing_ok=True)
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    env.update(settings, PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_ARGS_FILE=str(recorded))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    gcloud_args = recorded.read_bytes().decode().split("\0")[:-1] if recorded.exists() else None
    return Deploy(done.returncode, done.stdout, done.stderr, gcloud_args)


def test_make_deploy_runs_gcloud_run_deploy_with_the_cloud_run_settings(tmp_path: Path) -> None:
    result = make_deploy(tmp_path, PROJECT="proj", REGION="europe-west1",
                         DEPLOY_ARGS="--labels=team=data")

    assert result.status == 0, result.stderr
    assert result.gcloud_args is not None
    assert result.gcloud_args[:3] == ["run", "deploy", "gvisor-sandbox"]
    flags = result.flags()
    assert flags["--project"] == ["proj"]
    assert flags["--region"] == ["europe-west1"]
    assert flags["--source"] == ["."]
    assert flags["--execution-environment"] == ["gen2"]
    assert flags["--no-cpu-throttling"] == [""]
    assert flags["--session-affinity"] == [""]
    assert flags["--no-allow-unauthenticated"] == [""]
    assert "--allow-unauthenticated" not in flags
    assert flags["--timeout"] == ["3600"]
    assert result.env_vars()["SANDBOX_SHUTDOWN_GRACE_S"] == "8"
    # Cloud Run routes by host names only known after a deploy; the Origin check stays.
    assert result.env_vars()["SANDBOX_ALLOWED_HOSTS"] == "*"
    assert result.gcloud_args[-1] == "--labels=team=data"


def test_the_printed_command_is_the_one_that_runs(tmp_path: Path) -> None:
    result = deploy(tmp_path, "--", "--labels=team=data science", PROJECT="proj",
                    REGION="us-central1", BUCKET="ckpt", TOKENS_SECRET="tokens")

    printed = shlex.split(result.stdout.replace("\\\n", " "))

    assert printed == ["gcloud", *(result.gcloud_args or [])]
    assert printed[-1] == "--labels=team=data science"


def test_the_bucket_is_mounted_where_the_checkpoints_go(tmp_path: Path) -> None:
    result = deploy(tmp_path, PROJECT="proj", REGION="r", BUCKET="my-checkpoints",
                    CHECKPOINT_MOUNT="/mnt/ckpt")

    flags = result.flags()
    assert flags["--add-volume"] == ["name=checkpoints,type=cloud-storage,bucket=my-checkpoints"]
    assert flags["--add-volume-mount"] == ["volume=checkpoints,mount-path=/mnt/ckpt"]
    assert result.env_vars()["SANDBOX_CHECKPOINT_DIR"] == "/mnt/ckpt"


def test_the_database_url_and_the_tokens_come_from_secret_manager(tmp_path: Path) -> None:
    result = deploy(tmp_path, PROJECT="proj", REGION="r", SQL_INSTANCE="proj:r:sandboxes",
                    DATABASE_URL_SECRET="sandbox-db-url", TOKENS_SECRET="sandbox-tokens")

    flags = result.flags()
    assert flags["--set-cloudsql-instances"] == ["proj:r:sandboxes"]
    assert flags["--set-secrets"] == [
        "SANDBOX_DATABASE_URL=sandbox-db-url:latest,SANDBOX_API_TOKENS=sandbox-tokens:latest"
    ]
    assert "SANDBOX_ALLOW_UNAUTHENTICATED" not in result.env_vars()
    assert "sandbox-tokens" not in result.flags()["--set-env-vars"][0]


def test_without_a_tokens_secret_cloud_run_iam_alone_admits_callers(tmp_path: Path) -> None:
    result = deploy(tmp_path, PROJECT="proj", REGION="r")

    assert result.env_vars()["SANDBOX_ALLOW_UNAUTHENTICATED"] == "true"
    assert result.flags()["--no-allow-unauthenticated"] == [""]
    assert result.flags()["--clear-secrets"] == [""]


def test_a_pushed_image_is_deployed_instead_of_the_source(tmp_path: Path) -> None:
    result = deploy(tmp_path, PROJECT="proj", REGION="r", IMAGE="registry.example/sandbox:1")

    assert result.flags()["--image"] == ["registry.example/sandbox:1"]
    assert "--source" not in result.flags()


def test_the_sizes_and_counts_are_settings(tmp_path: Path) -> None:
    result = deploy(tmp_path, PROJECT="proj", REGION="r", SERVICE="sbx", CPU="8",
                    MEMORY="32Gi", CONCURRENCY="200", MIN_INSTANCES="2", MAX_INSTANCES="5",
                    SERVICE_ACCOUNT="runner@proj.iam.gserviceaccount.com")

    flags = result.flags()
    assert result.gcloud_args is not None
    assert result.gcloud_args[2] == "sbx"
    assert (flags["--cpu"], flags["--memory"], flags["--concurrency"]) == (["8"], ["32Gi"],
                                                                         ["200"])
    assert (flags["--min-instances"], flags["--max-instances"]) == (["2"], ["5"])
    assert flags["--service-account"] == ["runner@proj.iam.gserviceaccount.com"]


def test_a_dry_run_prints_the_command_and_runs_nothing(tmp_path: Path) -> None:
    result = deploy(tmp_path, PROJECT="proj", REGION="r", DRY_RUN="1")

    assert result.status == 0
    assert result.stdout.startswith("gcloud run deploy gvisor-sandbox \\\n")
    assert result.gcloud_args is None


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"REGION": "r"}, "set PROJECT"),
        ({"PROJECT": "proj"}, "set REGION"),
        ({"PROJECT": "proj", "REGION": "r", "SQL_INSTANCE": "p:r:i"}, "DATABASE_URL_SECRET"),
        ({"PROJECT": "proj", "REGION": "r", "DATABASE_URL_SECRET": "url"}, "SQL_INSTANCE"),
    ],
    ids=["no project", "no region", "database without its url", "url without its database"],
)
def test_missing_settings_stop_the_deploy_before_gcloud_runs(
    tmp_path: Path, settings: dict[str, str], complaint: str
) -> None:
    result = deploy(tmp_path, **settings)

    assert result.status != 0
    assert complaint in result.stderr
    assert result.gcloud_args is None
