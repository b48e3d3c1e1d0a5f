"""Which addresses the egress proxy may connect to: global unicast only.

An allowed name can still resolve inward (to the host's loopback, the LAN, the cloud metadata
server), by accident or on purpose; the proxy resolves every name itself and refuses such
addresses, unless the operator's map (SANDBOX_EGRESS_HOSTS) points the name there on purpose.
The ranges are listed here rather than taken from `ipaddress`'s `is_private` and `is_global`
alone, whose answers have changed between Python releases; those stay as a backstop.
"""

from __future__ import annotations

import ipaddress

from sandbox.domain.egress import IPAddress

# Names of cloud metadata services, refused whatever they resolve to.
METADATA_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data",
    "instance-data.ec2.internal",
})
# Metadata and platform endpoints; some are not in any special-purpose range.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(text) for text in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "fd00:ec2::254", "fd00:ec2::23",
    "100.100.100.200", "168.63.129.16",
))

_V4 = [(ipaddress.IPv4Network(net), why) for net, why in (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
)]
_V6 = [(ipaddress.IPv6Network(net), why) for net, why in (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "reserved"),  # IPv4-compatible, deprecated
    ("64:ff9b:1::/48", "reserved"),
    ("100::/64", "reserved"),
    ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo among them
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "reserved"),  # 6to4: an IPv4 address in disguise
    ("3fff::/20", "documentation"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "link-local"),
    ("ff00::/8", "multicast"),
)]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refusal(address: IPAddress) -> str | None:
    """Why the proxy must not connect to this address, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None)
        if embedded is not None:
            inner = refusal(embedded)
            return None if inner is None else f"{inner} (IPv4 inside IPv6)"
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    ranges = _V4 if isinstance(address, ipaddress.IPv4Address) else _V6
    for network, why in ranges:
        if address in network:
            return why
    if address.is_multicast:
        return "multicast"
    if address.is_private or address.is_reserved or not address.is_global:
        return "not a global address"
    return None
