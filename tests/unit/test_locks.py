"""The lock files the image installs from (with --require-hashes) hold what the project
asks for: a dependency added to pyproject.toml or rootfs/requirements.txt without `make lock`
fails here, not in a build minutes later."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
APP_LOCK = ROOT / "requirements.lock"
ROOTFS_LOCK = ROOT / "rootfs" / "requirements.lock"


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def version(self) -> str:
        (specifier,) = self.requirement.specifier
        return specifier.version


def logical_lines(path: Path) -> list[str]:
    """Lines as pip reads them: comments dropped, backslash continuations joined."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        text = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if text.endswith("\\"):
            current += text[:-1] + " "
            continue
        current += text
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def pins(path: Path) -> dict[NormalizedName, Pin]:
    found = {}
    for line in logical_lines(path):
        if line.startswith("--"):
            continue  # an option line, such as --only-binary
        requirement, *options = line.split(" --hash=")
        parsed = Requirement(requirement.strip())
        found[canonicalize_name(parsed.name)] = Pin(parsed, tuple(o.strip() for o in options))
    return found


def requirement_lines(path: Path) -> list[Requirement]:
    return [Requirement(line) for line in logical_lines(path) if not line.startswith("-")]


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def app_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return [Requirement(text) for text in project["dependencies"]]


def build_requirements() -> list[Requirement]:
    build_system = pyproject()["build-system"]
    assert isinstance(build_system, dict)
    return [Requirement(text) for text in build_system["requires"]]


@pytest.mark.parametrize(
    ("lock", "wanted"),
    [
        (APP_LOCK, app_requirements),
        (APP_LOCK, build_requirements),
        (ROOTFS_LOCK, lambda: requirement_lines(ROOT / "rootfs" / "requirements.txt")),
    ],
    ids=["app", "app build backend", "rootfs"],
)
def test_every_requirement_is_pinned_in_its_lock_at_a_version_it_allows(
    lock: Path, wanted: object
) -> None:
    pinned = pins(lock)
    assert callable(wanted)

    unmet = [
        str(requirement) for requirement in wanted()
        if canonicalize_name(requirement.name) not in pinned
        or not requirement.specifier.contains(
            pinned[canonicalize_name(requirement.name)].version, prereleases=True
        )
    ]

    assert unmet == [], f"run `make lock`: {lock.name} does not satisfy {unmet}"


@pytest.mark.parametrize("lock", [APP_LOCK, ROOTFS_LOCK], ids=["app", "rootfs"])
def test_every_locked_release_is_exact_and_hashed(lock: Path) -> None:
    loose = [
        f"{name}: {pin.requirement}" for name, pin in pins(lock).items()
        if len(pin.requirement.specifier) != 1
        or next(iter(pin.requirement.specifier)).operator != "=="
        or not pin.hashes
        or not all(digest.startswith("sha256:") for digest in pin.hashes)
    ]

    assert loose == []
    assert len(pins(lock)) > 5


@pytest.mark.parametrize("lock", [APP_LOCK, ROOTFS_LOCK], ids=["app", "rootfs"])
def test_a_lock_names_no_index_and_no_local_folder(lock: Path) -> None:
    options = [line for line in logical_lines(lock) if line.startswith("-")]

    assert options == ["--only-binary :all:"]
    assert "file://" not in lock.read_text()


def test_the_logical_lines_of_a_lock_join_its_continuations(tmp_path: Path) -> None:
    lock = tmp_path / "example.lock"
    lock.write_text(
        "# a comment\n"
        "six==1.16.0 \\\n"
        "    --hash=sha256:aaa \\\n"
        "    --hash=sha256:bbb\n"
        "    # via something\n"
    )

    assert pins(lock) == {
        "six": Pin(Requirement("six==1.16.0"), ("sha256:aaa", "sha256:bbb"))
    }
