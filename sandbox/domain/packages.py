"""Third-party packages a script asks for: checked strictly before any installer sees them.

A requirement is `name[extras]` with optional PEP 440 version specifiers, nothing else: no
URLs, paths, pip options or environment markers, so the installer can only ever be asked for
named releases from its configured index.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from sandbox.domain.errors import InvalidRequest
from sandbox.domain.model import Language
from sandbox.domain.pep723 import pep723_dependencies

if TYPE_CHECKING:
    from sandbox.domain.ports import PackageInstaller

log = structlog.get_logger(__name__)

MAX_REQUIREMENT_CHARS = 200
# Larger requests are read for a PEP 723 block and checked in a worker thread: a 1 MiB body
# takes a fraction of a second to scan and parse, which the event loop must not wait for.
INLINE_CHECK_CHARS = 16 * 1024

NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_OPERATOR = r"~=|==|!=|<=|>=|<|>"
# PEP 440 (case-insensitive), plus a trailing `.*` that only == and != may use.
_VERSION = (
    r"v?(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*"
    r"(?:[-.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-.]?[0-9]*)?"
    r"(?:-[0-9]+|[-.]?(?:post|rev|r)[-.]?[0-9]*)?"
    r"(?:[-.]?dev[-.]?[0-9]*)?"
    r"(?:\+[a-z0-9]+(?:[-.][a-z0-9]+)*)?"
    r"(?:\.\*)?"
)
_SPECIFIER = rf"(?:{_OPERATOR}) *(?:{_VERSION})"
_REQUIREMENT = re.compile(
    rf"(?P<name>{NAME}) *"
    rf"(?:\[ *(?P<extras>{NAME}(?: *, *{NAME})*)? *\])? *"
    rf"(?P<specifiers>{_SPECIFIER}(?: *, *{_SPECIFIER})*)?",
    re.IGNORECASE,
)
_ONE_SPECIFIER = re.compile(rf"(?P<op>{_OPERATOR}) *(?P<version>{_VERSION})", re.IGNORECASE)
_STARTS_WITH_OPERATOR = re.compile(rf"(?:{_OPERATOR}|=)")
_NAME_RUNS = re.compile(r"[-_.]+")


def normalise_name(name: str) -> str:
    """PEP 503: lower case, runs of `-`, `_` and `.` become one `-`."""
    return _NAME_RUNS.sub("-", name).lower()


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
        return tuple(re.split(r"[\[<>=!~]", item, maxsplit=1)[0] for item in self.requirements)

    def key(self, python_tag: str, platform: str, index_identity: str) -> str:
        """The content address of this set installed for one interpreter, platform and index."""
        material = json.dumps([python_tag, platform, index_identity, *self.requirements])
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class PackagePolicy:
    """What a request may ask for. `allow` None means any name not denied."""

    max_count: int = 20
    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    @classmethod
    def from_lists(cls, max_count: int, allow: str = "", deny: str = "") -> PackagePolicy:
        """From comma-separated lists of names (an empty allow list allows every name)."""
        allowed = _name_list(allow)
        return cls(max_count=max_count, allow=allowed or None, deny=_name_list(deny))


def _name_list(value: str) -> frozenset[str]:
    names = [item.strip() for item in value.split(",") if item.strip()]
    invalid = [name for name in names if not re.fullmatch(NAME, name)]
    if invalid:
        raise ValueError(f"not package names: {', '.join(invalid)}")
    return frozenset(normalise_name(name) for name in names)


def split_packages_param(value: str) -> list[str]:
    """Split `packages=a,b>=1,<2` into requirements: commas separate requirements and also the
    specifiers of one requirement, so a piece that starts with a version operator belongs to
    the piece before it. Empty pieces are kept (and refused by `parse_requirements`)."""
    if not value.strip():
        return []
    items: list[str] = []
    for piece in value.split(","):
        if items and _STARTS_WITH_OPERATOR.match(piece.strip()):
            items[-1] = f"{items[-1]},{piece}"
        else:
            items.append(piece)
    return items


def parse_requirements(
    items: Sequence[str], max_count: int, allow: frozenset[str] | None, deny: frozenset[str]
) -> RequirementSet:
    """Check and normalise requirements; InvalidRequest names the first one refused."""
    by_name: dict[str, str] = {}
    for item in items:
        name, normalised = _parse_one(item)
        if name in deny or (allow is not None and name not in allow):
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
    match = _REQUIREMENT.fullmatch(text)
    if match is None:
        raise InvalidRequest(f"package requirement {shown} is not a name with optional "
                             "[extras] and version specifiers such as 'pkg==1.2' or "
                             "'pkg>=1,<2'")
    name = normalise_name(match["name"])
    extras = sorted({normalise_name(extra.strip())
                     for extra in (match["extras"] or "").split(",") if extra.strip()})
    specifiers = sorted(_specifier(spec, shown)
                        for spec in _ONE_SPECIFIER.finditer(match["specifiers"] or ""))
    return name, name + (f"[{','.join(extras)}]" if extras else "") + ",".join(specifiers)


def _specifier(found: re.Match[str], shown: str) -> str:
    operator, version = found["op"], found["version"]
    if version.endswith(".*") and operator not in ("==", "!="):
        raise InvalidRequest(f"package requirement {shown}: a wildcard version needs == or !=")
    if operator == "~=" and "." not in version:
        raise InvalidRequest(f"package requirement {shown}: ~= needs a version such as 1.2")
    return f"{operator}{version.lower()}"


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

    Raises InvalidRequest (a bad requirement, packages for Bash, no installer) and
    PackageResolutionFailed (the installer could not install the set)."""
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
