"""A stand-in pip for the installer's unit tests: it resolves and installs as pip does, in
miniature (files instead of packages), and can misbehave on request. No network, no root.
The real pip is exercised in tests/integration/test_packages.py."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from sandbox.adapters.pip_installer import InUse, PipPackageInstaller
from sandbox.domain.capacity import Capacity
from sandbox.domain.metrics import Metrics
from sandbox.domain.packages import PackagePolicy, RequirementSet, parse_requirements
from sandbox.settings import Settings

# Resolving: `name==N` resolves to version N, any other spelling to version 1; the names in
# NEEDS bring their dependencies. Installing `name==N` writes N KiB. Names that misbehave:
# slow* never end, `broken` fails as pip does, `direct` comes from a URL, `memhog` wants
# 256 MiB, `bomb` writes files until it is stopped, `bigfile` writes one growing file.
FAKE_PIP = r'''
import json, os, pathlib, re, sys, time

with pathlib.Path(__file__).with_suffix(".log").open("a") as log:
    log.write(f"{os.getpid()} {' '.join(sys.argv[1:])}\n")
if sys.argv[1:] == ["--version"]:
    version = pathlib.Path(__file__).with_suffix(".version")
    print(version.read_text() if version.exists() else "pip 23.2.1 from /fake (python 3.11)")
    sys.exit(0)
options = dict(arg[2:].split("=", 1) for arg in sys.argv if arg.startswith("--") and "=" in arg)
requirements = sys.argv[sys.argv.index("--") + 1:]
NEEDS = {"parent": ["child"], "needs-bad": ["bad"], "needs-direct": ["direct"]}


def release(requirement):
    name, operator, version = re.fullmatch(
        r"([a-z0-9-]+)(?:\[[a-z0-9,-]+\])?(==|!=|>=|<=|<|>|~=)?(.*)", requirement).groups()
    return name, version if operator == "==" else "1"


def resolve():
    chosen = dict(release(requirement) for requirement in requirements)
    for name in chosen:
        if name.startswith("slow"):
            time.sleep(60)
        if name == "broken":
            print("Collecting broken", flush=True)
            print("ERROR: No matching distribution found for broken", file=sys.stderr)
            sys.exit(1)
        if name == "memhog":
            bytearray(256 * 1024 * 1024)
    pending = list(chosen)
    while pending:
        for needed in NEEDS.get(pending.pop(), []):
            if needed not in chosen:
                chosen[needed] = "1"
                pending.append(needed)
    install = [{"metadata": {"name": name, "version": version}, "is_direct": name == "direct"}
               for name, version in chosen.items()]
    pathlib.Path(options["report"]).write_text(json.dumps({"version": "1", "install": install}))


def install():
    target = pathlib.Path(options["target"])
    target.mkdir(parents=True, exist_ok=True)
    for pin in requirements:
        name, version = pin.split("==")
        if name == "bomb":
            for index in range(256):  # 64 MiB, then wait to be stopped
                (target / f"part{index}.bin").write_bytes(bytes(256 * 1024))
                time.sleep(0.01)
            time.sleep(60)
        if name == "bigfile":
            with open(target / "big.bin", "wb") as big:
                for _ in range(64):
                    big.write(bytes(1024 * 1024))
                    big.flush()
        package = target / name.replace("-", "_")
        package.mkdir(exist_ok=True)
        (package / "__init__.py").write_text("VALUE = 1\n" + "#" * (int(version) * 1024))
        (target / "bin").mkdir(exist_ok=True)
        (target / "bin" / name).write_text("#!/host/python")


resolve() if "--dry-run" in sys.argv else install()
'''


def write_fake_pip(folder: Path) -> Path:
    script = folder / "fake_pip.py"
    script.write_text(FAKE_PIP)
    return script


def pip_runs(fake_pip: Path, kind: str = "") -> list[str]:
    """Each run of the fake pip: its pid and arguments; `kind` `resolve` or `install` keeps
    those runs only."""
    log = fake_pip.with_suffix(".log")
    runs = log.read_text().splitlines() if log.exists() else []
    if kind == "resolve":
        return [run for run in runs if "--dry-run" in run]
    if kind == "install":
        return [run for run in runs if "--no-deps" in run]
    return runs


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return dataclasses.replace(Settings(), state_dir=tmp_path / "state", **overrides)


def make_installer(
    settings: Settings,
    fake_pip: Path,
    in_use: InUse | None = None,
    capacity: Capacity | None = None,
    policy: PackagePolicy | None = None,
    metrics: Metrics | None = None,
) -> PipPackageInstaller:
    return PipPackageInstaller(settings, in_use=in_use, pip=(sys.executable, str(fake_pip)),
                               capacity=capacity, policy=policy, metrics=metrics)


def reqs(*items: str) -> RequirementSet:
    return parse_requirements(items, 20, None, frozenset())


def cache_entries(settings: Settings) -> list[str]:
    return sorted(entry.name for entry in (settings.state_dir / "packages").iterdir())


EMPTY_CACHE = [".aliases", ".pins", ".used"]


def process_ended(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
