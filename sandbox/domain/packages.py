"""Third-party packages a script asks for: checked strictly before any installer sees them.

A requirement is `name[extras]` with optional PEP 440 version specifiers, nothing else: no
URLs, paths, pip options or environment markers, so the installer can only ever be asked for
named releases from its configured index. The grammar is PEP 508's own (`packaging`), and
each requirement is normalised (names, extras and versions in their canonical spelling) so
that equivalent spellings make the same set.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import Specifier
from packaging.utils import InvalidName, canonicalize_name
from packaging.version import InvalidVersion, Version

from sandbox.domain.errors import InvalidRequest, PackageResolutionFailed
from sandbox.domain.model import Language
from sandbox.domain.pep723 import pep723_dependencies

if TYPE_CHECKING:
    from sandbox.domain.ports import PackageInstaller

log = structlog.get_logger(__name__)

MAX_REQUIREMENT_CHARS = 200
# Larger requests are read for a PEP 723 block and checked in a worker thread: a 1 MiB body
# takes a fraction of a second to scan and parse, which the event loop must not wait for.
INLINE_CHECK_CHARS = 16 * 1024


def normalise_name(name: str) -> str:
    """PEP 503: lower case, runs of `-`, `_` and `.` become one `-`."""
    return canonicalize_name(name)


@dataclass(frozen=True)
class RequirementSet:
    """Normalised requirement strings, sorted, each name once."""

    requirements: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __len__(self) -> int:
        return len(self.requirements)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(canonicalize_name(Requirement(item).name) for item in self.requirements)

    def key(self, python_tag: str, platform: str, index_identity: str) -> str:
        """The address of this set as asked for, for one interpreter, platform and index."""
        material = json.dumps([python_tag, platform, index_identity, *self.requirements])
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class ResolvedSet:
    """What a requirement set resolved to: `name==version` of every package it installs,
    dependencies included, names normalised, sorted."""

    pins: tuple[str, ...]

    @classmethod
    def of(cls, releases: Iterable[tuple[str, str]]) -> ResolvedSet:
        """From (name, version) pairs; ValueError if one is not a valid name or version."""
        pins = set()
        for name, version in releases:
            pins.add(f"{canonicalize_name(name, validate=True)}=={Version(version)}")
        return cls(tuple(sorted(pins)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(pin.partition("==")[0] for pin in self.pins)

    def key(self, python_tag: str, platform: str, index_identity: str) -> str:
        """The content address of the layer holding exactly these releases."""
        material = json.dumps(["pins", python_tag, platform, index_identity, *self.pins])
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class PackagePolicy:
    """What a request may ask for. `allow` None means any name not denied. The lists hold for
    every package a set resolves to, not only for the names asked for."""

    max_count: int = 20
    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    @classmethod
    def from_lists(cls, max_count: int, allow: str = "", deny: str = "") -> PackagePolicy:
        """From comma-separated lists of names (an empty allow list allows every name)."""
        allowed = _name_list(allow)
        return cls(max_count=max_count, allow=allowed or None, deny=_name_list(deny))

    def allows(self, name: str) -> bool:
        name = canonicalize_name(name)
        return name not in self.deny and (self.allow is None or name in self.allow)

    def check_resolved(self, resolved: ResolvedSet) -> None:
        """PackageResolutionFailed naming the first package of the set that is not allowed."""
        for name in resolved.names:
            if not self.allows(name):
                raise PackageResolutionFailed(
                    f"package {name!r} is not allowed on this server, and the requested "
                    "packages need it"
                )


def _name_list(value: str) -> frozenset[str]:
    names = [item.strip() for item in value.split(",") if item.strip()]
    invalid = []
    for name in names:
        try:
            canonicalize_name(name, validate=True)
        except InvalidName:
            invalid.append(name)
    if invalid:
        raise ValueError(f"not package names: {', '.join(invalid)}")
    return frozenset(canonicalize_name(name) for name in names)


def split_packages_param(value: str) -> list[str]:
    """Split `packages=a,b>=1,<2` into requirements: commas separate requirements and also the
    specifiers of one requirement, so a piece that starts with a version operator belongs to
    the piece before it. Empty pieces are kept (and refused by `parse_requirements`)."""
    if not value.strip():
        return []
    items: list[str] = []
    for piece in value.split(","):
        if items and piece.strip().startswith(("~=", "!=", "<", ">", "=")):
            items[-1] = f"{items[-1]},{piece}"
        else:
            items.append(piece)
    return items


def parse_requirements(
    items: Sequence[str], max_count: int, allow: frozenset[str] | None, deny: frozenset[str]
) -> RequirementSet:
    """Check and normalise requirements; InvalidRequest names the first one refused."""
    policy = PackagePolicy(max_count, allow, deny)
    by_name: dict[str, str] = {}
    for item in items:
        name, normalised = _parse_one(item)
        if not policy.allows(name):
            raise InvalidRequest(f"package {name!r} is not allowed on this server")
        known = by_name.setdefault(name, normalised)
        if known != normalised:
            raise InvalidRequest(
                f"package {name!r} is requested twice, differently: {known!r} and {normalised!r}"
            )
        if len(by_name) > max_count:
            raise InvalidRequest(f"at most {max_count} packages may be requested")
    return RequirementSet(tuple(sorted(by_name.values())))


def _parse_one(item: str) -> tuple[str, str]:
    text = item.strip(" ")
    shown = repr(text if len(text) <= 80 else text[:80] + "...")
    _refuse_what_is_not_a_named_release(text, shown)
    try:
        requirement = Requirement(text)
    except InvalidRequirement as error:
        reason = str(error).partition("\n")[0]
        raise InvalidRequest(f"package requirement {shown} is not a name with optional "
                             "[extras] and version specifiers such as 'pkg==1.2' or "
                             f"'pkg>=1,<2' ({reason})") from None
    if requirement.url is not None:
        raise InvalidRequest(f"package requirement {shown}: URLs are not allowed")
    if requirement.marker is not None:
        raise InvalidRequest(f"package requirement {shown}: environment markers are not "
                             "allowed")
    name = canonicalize_name(requirement.name)
    extras = sorted({canonicalize_name(extra) for extra in requirement.extras})
    specifiers = sorted({_normalised(specifier) for specifier in requirement.specifier})
    return name, name + (f"[{','.join(extras)}]" if extras else "") + ",".join(specifiers)


def _refuse_what_is_not_a_named_release(text: str, shown: str) -> None:
    """Clear words for what PEP 508 allows but this server does not, and for what pip would
    read as something else (an option, a path)."""
    if not text:
        raise InvalidRequest("an empty package requirement was given")
    if len(text) > MAX_REQUIREMENT_CHARS:
        raise InvalidRequest(f"package requirement {shown} is longer than "
                             f"{MAX_REQUIREMENT_CHARS} characters")
    if text.startswith("-"):
        raise InvalidRequest(f"package requirement {shown}: pip options are not allowed")
    if "://" in text or "@" in text or text.lower().startswith("file:"):
        raise InvalidRequest(f"package requirement {shown}: URLs are not allowed, only names "
                             "and version specifiers")
    if "/" in text or "\\" in text or text.startswith((".", "~")):
        raise InvalidRequest(f"package requirement {shown}: local paths are not allowed, "
                             "only names and version specifiers")
    if ";" in text:
        raise InvalidRequest(f"package requirement {shown}: environment markers are not "
                             "allowed")
    if any(char.isspace() and char != " " for char in text) or not text.isascii():
        raise InvalidRequest(f"package requirement {shown} holds characters other than "
                             "letters, digits, spaces and punctuation of version specifiers")


def _normalised(specifier: Specifier) -> str:
    """The operator and the version in PEP 440's normal form (`==1.0RC1` is `==1.0rc1`)."""
    version = specifier.version
    if specifier.operator == "===":  # arbitrary equality compares the text as given
        return f"==={version}"
    try:
        if version.endswith(".*"):
            return f"{specifier.operator}{Version(version[:-2])}.*"
        return f"{specifier.operator}{Version(version)}"
    except InvalidVersion:  # packaging accepted it: keep its own spelling
        return str(specifier)


def requested_set(
    language: Language | None, source: bytes, packages: Sequence[str], policy: PackagePolicy
) -> RequirementSet:
    """`packages` merged with the dependencies of a Python script's PEP 723 block, checked.
    CPU-bound on large input: `package_layers` calls it in a thread then."""
    if language is Language.BASH:
        if packages:
            raise InvalidRequest("packages can only be installed for Python")
        return RequirementSet()
    declared = pep723_dependencies(source) if language is Language.PYTHON else None
    return parse_requirements(
        [*packages, *(declared or [])], policy.max_count, policy.allow, policy.deny
    )


async def package_layers(
    installer: PackageInstaller | None,
    language: Language | None,
    source: bytes,
    packages: Iterable[str],
    policy: PackagePolicy,
) -> tuple[str, ...]:
    """The package folders to mount for a sandbox: `packages` merged with the dependencies of
    a Python script's PEP 723 block, installed by `installer`. Empty when nothing is asked for.
    `language` None is a long-lived sandbox (no script yet): `packages` alone count.

    Raises InvalidRequest (a bad requirement, packages for Bash, no installer),
    PackageResolutionFailed (the installer could not install the set, or it needs a package
    the policy refuses) and AtCapacity (too many builds are waiting)."""
    packages = list(packages)
    size = len(source) + sum(len(item) + 1 for item in packages)
    if size > INLINE_CHECK_CHARS:
        requirements = await asyncio.to_thread(requested_set, language, source, packages,
                                               policy)
    else:
        requirements = requested_set(language, source, packages, policy)
    if not requirements:
        return ()
    if installer is None:
        raise InvalidRequest("this server does not install packages")
    started = time.monotonic()
    layer = await installer.layer_for(requirements)
    log.info("packages.ready", requirements=list(requirements.requirements),
             ms=round((time.monotonic() - started) * 1000))
    return (layer,)
