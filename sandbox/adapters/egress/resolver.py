"""Names to addresses, done by the proxy itself: the operator's map first (trusted, internal
addresses allowed), then the system resolver, whose every answer must be a global address."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping

from sandbox.adapters.egress.outcome import Refused
from sandbox.domain.destinations import METADATA_NAMES, refusal
from sandbox.domain.egress import IPAddress, is_ip_literal

Lookup = Callable[[str, int], Awaitable[list[str]]]


async def system_lookup(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


class Resolver:
    def __init__(
        self,
        host_map: Mapping[str, IPAddress],
        timeout_s: float,
        lookup: Lookup = system_lookup,
    ) -> None:
        self._map = dict(host_map)
        self._timeout_s = timeout_s
        self._lookup = lookup

    def screen(self, host: str) -> None:
        """Refuse, before the allow-list is even asked, what is never reached unless the
        operator's map names it: IP addresses and cloud metadata names."""
        if host in self._map:
            return
        if is_ip_literal(host):
            raise Refused("refused_address", f"{host} is an IP address; egress goes to host "
                          "names only (the allow-list names hosts, not addresses)")
        if host in METADATA_NAMES:
            raise Refused("refused_address", f"{host} is a cloud metadata service")

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Where to connect for a canonical host; Refused when it must not be reached."""
        self.screen(host)
        if host in self._map:
            return [self._map[host]]
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await self._lookup(host, port)
        except (OSError, TimeoutError) as error:
            raise Refused("failed_upstream",
                          f"cannot resolve {host}: {str(error) or 'no answer in time'}") from None
        addresses = _unique(ipaddress.ip_address(text.split("%", 1)[0]) for text in found)
        if not addresses:
            raise Refused("failed_upstream", f"cannot resolve {host}: no address")
        for address in addresses:
            why = refusal(address)
            if why is not None:
                # One inward answer taints the name: a resolver may rotate its answers.
                raise Refused("refused_address",
                              f"{host} resolves to {address}, {why}: refused")
        return addresses


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    seen: list[IPAddress] = []
    for address in addresses:
        if address not in seen:
            seen.append(address)
    return seen
