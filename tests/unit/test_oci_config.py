"""The OCI spec of a sandbox, built without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandbox.adapters.runsc.cli import Runsc
from sandbox.adapters.runsc.oci import build_config, environment
from sandbox.domain.model import Language, Limits, Program, SandboxSpec

LIMITS = Limits(timeout_s=5, memory_mb=256, cpus=1.5, pids=77, open_files=99, file_size_mb=3,
                tmp_mb=42, output_bytes=1000)
ROOTFS = Path("/var/lib/gvisor-sandbox/rootfs")
INPUT = Path("/state/bundles/0123456789abcdef01234567/input")
CGROUPS_PATH = "/gvisor-sandbox/0123456789abcdef01234567/sandbox"


def config_of(
    program: Program | None = None, spec: SandboxSpec | None = None
) -> dict[str, Any]:
    return build_config(
        spec or SandboxSpec(sandbox_id="0123456789abcdef01234567", limits=LIMITS),
        program or Program.script(Language.PYTHON, b"print(1)"),
        ROOTFS,
        INPUT,
        CGROUPS_PATH,
    )


def mount_at(config: dict[str, Any], destination: str) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = config["mounts"]
    [mount] = [m for m in mounts if m["destination"] == destination]
    return mount


def test_the_sandbox_has_its_own_network_pid_ipc_uts_and_mount_namespaces() -> None:
    namespaces = {entry["type"] for entry in config_of()["linux"]["namespaces"]}

    assert {"network", "pid", "ipc", "uts", "mount"} <= namespaces


def test_the_process_has_no_capabilities_at_all() -> None:
    capabilities = config_of()["process"]["capabilities"]

    kinds = ("bounding", "effective", "inheritable", "permitted", "ambient")
    assert capabilities == {kind: [] for kind in kinds}


def test_the_process_cannot_gain_privileges() -> None:
    assert config_of()["process"]["noNewPrivileges"] is True


def test_the_process_runs_as_uid_and_gid_1000_in_workspace() -> None:
    process = config_of()["process"]

    assert process["user"] == {"uid": 1000, "gid": 1000}
    assert process["cwd"] == "/workspace"
    assert process["terminal"] is False


def test_the_root_is_the_shared_rootfs_left_writable_for_the_memory_overlay() -> None:
    # A read-only root stays read-only even under --overlay2=root:memory.
    assert config_of()["root"] == {"path": str(ROOTFS), "readonly": False}


def test_tmp_is_a_tmpfs_of_the_requested_size() -> None:
    tmp = mount_at(config_of(), "/tmp")

    assert tmp["type"] == "tmpfs"
    assert "size=42m" in tmp["options"]


def test_the_input_folder_is_mounted_read_only() -> None:
    mount = mount_at(config_of(), "/sandbox/input")

    assert mount["source"] == str(INPUT)
    assert mount["type"] == "bind"
    assert "ro" in mount["options"]
    assert "rw" not in mount["options"]


def test_package_layers_are_mounted_read_only_and_put_on_pythonpath() -> None:
    spec = SandboxSpec(sandbox_id="0123456789abcdef01234567", limits=LIMITS,
                       package_dirs=("/layers/aaa", "/layers/bbb"))

    config = config_of(spec=spec)

    for index, source in enumerate(spec.package_dirs):
        mount = mount_at(config, f"/sandbox/packages/{index}")
        assert mount["source"] == source
        assert "ro" in mount["options"]
    assert "PYTHONPATH=/sandbox/packages/0:/sandbox/packages/1" in config["process"]["env"]


def test_the_rlimits_carry_the_limits() -> None:
    rlimits = {r["type"]: (r["soft"], r["hard"]) for r in config_of()["process"]["rlimits"]}

    assert rlimits == {
        "RLIMIT_NOFILE": (99, 99),
        "RLIMIT_NPROC": (77, 77),
        "RLIMIT_FSIZE": (3 * 1024 * 1024, 3 * 1024 * 1024),
        "RLIMIT_CORE": (0, 0),
    }


def test_the_cgroups_path_is_passed_through_and_cpu_is_a_quota() -> None:
    linux = config_of()["linux"]

    assert linux["cgroupsPath"] == CGROUPS_PATH
    cpu = linux["resources"]["cpu"]
    assert cpu["quota"] / cpu["period"] == 1.5


def test_the_pids_cgroup_limit_is_only_a_high_backstop() -> None:
    # A low pids.limit crashes the whole sandbox (it counts gVisor's own threads).
    assert config_of()["linux"]["resources"]["pids"]["limit"] >= 1000


@pytest.mark.parametrize(
    ("program", "argv"),
    [
        (Program.script(Language.PYTHON, b""), ["python3", "/sandbox/input/main.py"]),
        (Program.script(Language.BASH, b""), ["bash", "/sandbox/input/main.sh"]),
        (Program(language=None, argv=("ls", "-l", "/")), ["ls", "-l", "/"]),
    ],
    ids=["python", "bash", "argv"],
)
def test_the_process_runs_the_program(program: Program, argv: list[str]) -> None:
    assert config_of(program)["process"]["args"] == argv


def test_a_managed_sandbox_starts_the_agent_as_root_with_three_capabilities_alone() -> None:
    config = build_config(SandboxSpec(sandbox_id="0123456789abcdef01234567", limits=LIMITS),
                          Program(language=None), ROOTFS, INPUT, CGROUPS_PATH,
                          agent_dir=Path("/srv/agent"))
    process = config["process"]

    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["args"] == ["python3", "-I", "-S", "/sandbox/agent/agent.py"]
    granted = ["CAP_SETUID", "CAP_SETGID", "CAP_KILL"]
    assert process["capabilities"] == {
        "bounding": granted, "effective": granted, "permitted": granted,
        "inheritable": [], "ambient": [],
    }
    assert process["env"] == ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
    assert process["noNewPrivileges"] is True
    assert mount_at(config, "/sandbox/agent")["source"] == "/srv/agent"
    assert "ro" in mount_at(config, "/sandbox/agent")["options"]


def test_a_one_shot_sandbox_has_no_agent_mounted() -> None:
    destinations = {mount["destination"] for mount in config_of()["mounts"]}

    assert "/sandbox/agent" not in destinations


def test_the_environment_is_built_from_scratch_not_inherited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDBOX_TEST_CANARY", "server-secret")

    env = config_of()["process"]["env"]

    assert "HOME=/workspace" in env
    assert any(entry.startswith("PATH=") for entry in env)
    assert not [entry for entry in env if "SANDBOX_TEST_CANARY" in entry]
    assert not [entry for entry in env if "server-secret" in entry]


def test_the_spec_and_program_environment_are_added_the_program_last() -> None:
    spec = SandboxSpec(sandbox_id="0123456789abcdef01234567", limits=LIMITS,
                       env=(("COLOUR", "red"), ("SHAPE", "round")))
    program = Program(language=Language.PYTHON, source=b"", env=(("COLOUR", "blue"),))

    env = config_of(program, spec)["process"]["env"]

    assert "COLOUR=blue" in env
    assert "COLOUR=red" not in env
    assert "SHAPE=round" in env


def test_the_config_is_plain_json() -> None:
    config = config_of()

    assert json.loads(json.dumps(config)) == config


def test_the_kernels_oom_killer_takes_the_sandbox_before_anything_else() -> None:
    """runsc gives this score to the sandbox's own host processes: an OOM kill then ends the
    sandbox as a whole, never one program in it that gVisor would report as exit status 1."""
    assert config_of()["process"]["oomScoreAdj"] == 1000
def test_a_sandbox_with_an_allow_list_gets_its_proxy_folder_read_only_and_proxy_variables(
) -> None:
    spec = SandboxSpec(sandbox_id="0123456789abcdef01234567", limits=LIMITS,
                       network_allow=("pypi.org",))
    config = build_config(spec, Program(language=None), ROOTFS, INPUT, CGROUPS_PATH,
                          agent_dir=Path("/srv/agent"), egress_dir=Path("/srv/egress"))

    mount = mount_at(config, "/sandbox/egress")
    assert mount["source"] == "/srv/egress"
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(mount["options"])
    env = environment(spec, Program(language=None))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert f"{name}=http://127.0.0.1:3128" in env
    assert "NO_PROXY=localhost,127.0.0.1,::1" in env
    assert "network" in {entry["type"] for entry in config["linux"]["namespaces"]}


def test_a_sandbox_without_an_allow_list_has_no_proxy_folder_and_no_proxy_variables() -> None:
    spec = SandboxSpec(sandbox_id="0123456789abcdef01234567", limits=LIMITS)
    config = build_config(spec, Program(language=None), ROOTFS, INPUT, CGROUPS_PATH,
                          agent_dir=Path("/srv/agent"))

    assert "/sandbox/egress" not in {mount["destination"] for mount in config["mounts"]}
    assert not [entry for entry in environment(spec, Program(language=None))
                if "proxy" in entry.lower()]


def test_only_sandboxes_with_an_allow_list_may_open_host_sockets_and_none_gets_a_network(
) -> None:
    runsc = Runsc("runsc", Path("/state/runsc"), "systrap")

    plain = runsc.command("run", "x")
    egress = runsc.command("run", "x", host_uds=True)

    assert "--network=none" in plain and "--network=none" in egress
    assert not [flag for flag in plain if flag.startswith("--host-uds")]
    assert "--host-uds=open" in egress
