"""Egress policy: which hosts and ports a sandbox may reach through the service's proxy.

An entry is a host name, optionally with a `*.` prefix (every name below it, not the name
itself) and a `:port` (443 and 80 when none is given): `pypi.org`, `*.pythonhosted.org`,
`api.example.com:8443`. IP literals (`10.0.0.5`, `[2001:db8::1]:443`) are entries too, but
the server only accepts them where its operator map names them (see `settings.py`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = (80, 443)
MAX_ENTRIES = 100
WILDCARD = "*."
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"\A{_LABEL}(?:\.{_LABEL})*\Z")
_PORT = re.compile(r"\A[0-9]{1,5}\Z")
MAX_NAME = 253


def normalise_host(text: str) -> str:
    """A host as a request names it, in one canonical form: a lower-case name without its
    trailing dot, or an IP address in its compressed form. ValueError for anything else
    (spaces, `127.1`, `0x7f.1`, a bare number: forms that resolvers read as addresses)."""
    host = text.lower().removesuffix(".")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(f"{text[:80]!r} is not an IPv6 address in brackets") from None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if (len(host) > MAX_NAME or not _NAME.match(host) or host.rsplit(".", 1)[-1].isdigit()
            or _reads_as_address(host)):
        raise ValueError(f"{text[:80]!r} is not a host name")
    return host


def _reads_as_address(host: str) -> bool:
    """Whether the C library would take this for an IPv4 address (`0x7f000001`, `127.1`)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; the port is None when not given."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text[:80]!r} is not host:port")
        return f"[{host}]", _port(rest[1:]) if rest else None
    host, colon, port = text.rpartition(":")
    if not colon:
        return text, None
    if ":" in host:
        raise ValueError(f"{text[:80]!r}: write an IPv6 address in brackets, [2001:db8::1]:443")
    return host, _port(port)


def _port(text: str) -> int:
    if not _PORT.match(text) or not 0 < int(text) < 65536:
        raise ValueError(f"port {text[:10]!r} must be a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class EgressRule:
    host: str  # canonical: a name, `*.` + a name, or an IP address
    ports: tuple[int, ...] = DEFAULT_PORTS

    @classmethod
    def parse(cls, entry: str) -> EgressRule:
        if not entry or any(char.isspace() for char in entry):
            raise ValueError(f"{entry[:80]!r} is not a host name")
        host, port = split_host_port(entry)
        wildcard = host.startswith(WILDCARD)
        canonical = normalise_host(host.removeprefix(WILDCARD))
        if wildcard and is_ip_literal(canonical):
            raise ValueError(f"{entry[:80]!r}: `*.` goes with names, not addresses")
        ports = DEFAULT_PORTS if port is None else (port,)
        return cls(WILDCARD + canonical if wildcard else canonical, ports)

    @property
    def wildcard(self) -> bool:
        return self.host.startswith(WILDCARD)

    @property
    def is_address(self) -> bool:
        return is_ip_literal(self.host)

    def matches(self, host: str, port: int) -> bool:
        """Whether a request for this canonical host and port falls under the rule."""
        if port not in self.ports:
            return False
        if self.wildcard:
            return host.endswith(self.host[1:])
        return host == self.host

    def covers(self, other: EgressRule) -> bool:
        """Whether everything `other` allows, this rule allows too."""
        if not set(other.ports) <= set(self.ports):
            return False
        if self.wildcard:
            return other.host == self.host or other.host.endswith(self.host[1:])
        return other.host == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.ports == DEFAULT_PORTS else f"{host}:{self.ports[0]}"


@dataclass(frozen=True)
class EgressPolicy:
    """A list of rules; empty allows nothing."""

    rules: tuple[EgressRule, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressPolicy:
        """ValueError naming the first bad entry."""
        rules: list[EgressRule] = []
        for entry in entries:
            rule = EgressRule.parse(entry)
            if rule not in rules:
                rules.append(rule)
            if len(rules) > MAX_ENTRIES:
                raise ValueError(f"at most {MAX_ENTRIES} entries are allowed")
        return cls(tuple(rules))

    @classmethod
    def from_text(cls, text: str) -> EgressPolicy:
        """Comma-separated entries, as in SANDBOX_EGRESS_ALLOW or `allow_hosts=`."""
        return cls.parse(entry.strip() for entry in text.split(",") if entry.strip())

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def entries(self) -> tuple[str, ...]:
        return tuple(str(rule) for rule in self.rules)

    def allows(self, host: str, port: int) -> bool:
        return any(rule.matches(host, port) for rule in self.rules)

    def uncovered(self, other: EgressPolicy) -> list[str]:
        """The entries of `other` that go beyond this policy."""
        return [str(rule) for rule in other.rules
                if not any(mine.covers(rule) for mine in self.rules)]


def parse_host_map(text: str) -> dict[str, IPAddress]:
    """`name=address,...` (SANDBOX_EGRESS_HOSTS): names the operator points at addresses on
    purpose, internal ones included. ValueError naming the first bad pair."""
    mapping: dict[str, IPAddress] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        name, equals, address = pair.partition("=")
        if not equals:
            raise ValueError(f"{pair[:80]!r} is not name=address")
        try:
            mapping[normalise_host(name.strip())] = ipaddress.ip_address(
                address.strip().strip("[]"))
        except ValueError as error:
            raise ValueError(f"{pair[:80]!r}: {error}") from None
    return mapping
