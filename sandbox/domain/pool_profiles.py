"""What the warm pools hold: profiles read from `SANDBOX_POOL`.

Grammar (commas between entries; spaces around them are ignored; empty: no pool):

    entry    := language [ "[" packages "]" ] [ "@" memory_mb ] ":" size
              | "template/" template_id ":" size
    language := "python" | "bash"
    packages := requirements as `packages=` takes them: "tablib>=3,<4,six"

`python:2,bash:1` keeps two Python sandboxes and one Bash sandbox with the default memory
limit; `python@1024:1` one with 1024 MiB; `python[tablib]:1` one with tablib's package
layer mounted. A request takes a pooled sandbox when its language, memory limit and package
layers are those of the profile. `template/ID:2` keeps two copies of the template ID
(restored, waiting) for `/execute?template=ID`: the template then cannot be deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sandbox.domain.errors import InvalidRequest
from sandbox.domain.model import Language
from sandbox.domain.packages import PackagePolicy, parse_requirements, split_packages_param

MAX_SIZE = 64
_ENTRY = re.compile(
    r"(?P<language>[a-z]+)(?:\[(?P<packages>[^\[\]]*)\])?(?:@(?P<memory>[0-9]+))?:(?P<size>[0-9]+)"
)
_TEMPLATE_ENTRY = re.compile(r"template/(?P<template>[0-9a-f]{24}):(?P<size>[0-9]+)")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class PoolProfile:
    # None for a template's copies: the template's own language.
    language: Language | None
    size: int
    # None: the server's default memory limit.
    memory_mb: int | None = None
    # Normalised requirements (`RequirementSet.requirements`); empty: no package layer.
    requirements: tuple[str, ...] = ()
    # Copies of this template (whose record says language, limits, packages and network).
    template_id: str | None = None

    @property
    def name(self) -> str:
        """How logs and metrics name it: `python`, `python@1024`, `python[six]`,
        `template/ID`."""
        if self.template_id is not None:
            return f"template/{self.template_id}"
        assert self.language is not None
        packages = f"[{','.join(self.requirements)}]" if self.requirements else ""
        memory = f"@{self.memory_mb}" if self.memory_mb is not None else ""
        return f"{self.language.value}{packages}{memory}"


def parse_pool(text: str, policy: PackagePolicy) -> tuple[PoolProfile, ...]:
    """The profiles of a `SANDBOX_POOL` value; ValueError says what is wrong with it."""
    profiles: list[PoolProfile] = []
    for entry in _entries(text):
        profile = _profile(entry, policy)
        if any(known.name == profile.name for known in profiles):
            raise ValueError(f"{profile.name!r} is given twice")
        profiles.append(profile)
    return tuple(profiles)


def parse_modules(text: str) -> tuple[str, ...]:
    """The modules of `SANDBOX_POOL_PREIMPORT` (comma-separated dotted names)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    invalid = [name for name in names if not _MODULE.fullmatch(name)]
    if invalid:
        raise ValueError(f"not module names: {', '.join(invalid)}")
    return names


def _entries(text: str) -> list[str]:
    """Split at the commas outside brackets (requirements have commas of their own)."""
    entries, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    entries.append(current)
    stripped = [entry.strip() for entry in entries]
    if stripped == [""]:
        return []
    if "" in stripped:
        raise ValueError("an empty entry (two commas in a row, or one at an end)")
    return stripped


def _profile(entry: str, policy: PackagePolicy) -> PoolProfile:
    copies = _TEMPLATE_ENTRY.fullmatch(entry)
    if copies is not None:
        return PoolProfile(None, _size(entry, copies["size"]), template_id=copies["template"])
    match = _ENTRY.fullmatch(entry)
    if match is None:
        raise ValueError(f"{entry!r} is not LANGUAGE[PACKAGES]@MEMORY_MB:SIZE or "
                         "template/ID:SIZE (for example python:2, python@1024:1 or "
                         "template/0123456789abcdef01234567:2)")
    try:
        language = Language(match["language"])
    except ValueError:
        raise ValueError(f"{entry!r}: the language must be python or bash") from None
    size = _size(entry, match["size"])
    memory = int(match["memory"]) if match["memory"] is not None else None
    if memory is not None and memory < 16:
        raise ValueError(f"{entry!r}: the memory limit must be at least 16 MiB")
    requirements: tuple[str, ...] = ()
    if match["packages"] is not None:
        if language is not Language.PYTHON:
            raise ValueError(f"{entry!r}: packages can only be installed for Python")
        try:
            requirements = parse_requirements(
                split_packages_param(match["packages"]), policy.max_count, policy.allow,
                policy.deny,
            ).requirements
        except InvalidRequest as error:
            raise ValueError(f"{entry!r}: {error}") from None
        if not requirements:
            raise ValueError(f"{entry!r}: the brackets name no package")
    return PoolProfile(language, size, memory, requirements)


def _size(entry: str, text: str) -> int:
    size = int(text)
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"{entry!r}: the size must be from 1 to {MAX_SIZE}")
    return size
