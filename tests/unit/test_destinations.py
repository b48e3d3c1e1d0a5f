"""Which addresses the egress proxy refuses to connect to, IPv4 and IPv6."""

from __future__ import annotations

import ipaddress

import pytest

from sandbox.domain.destinations import refusal


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("100.127.255.254", "shared address space (CGNAT)"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "a cloud metadata address"),
        ("169.254.170.2", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("168.63.129.16", "a cloud metadata address"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.0.8", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        ("198.18.0.1", "reserved"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fec0::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("::ffff:127.0.0.1", "loopback (IPv4 inside IPv6)"),
        ("::ffff:10.0.0.1", "private (IPv4 inside IPv6)"),
        ("::ffff:169.254.169.254", "a cloud metadata address (IPv4 inside IPv6)"),
        ("64:ff9b::7f00:1", "loopback (IPv4 inside IPv6)"),
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address (IPv4 inside IPv6)"),
        ("::127.0.0.1", "reserved"),
        ("2002:7f00:1::1", "reserved"),
        ("2001:0:4136:e378::1", "reserved"),
        ("100::1", "reserved"),
    ],
)
def test_inward_and_special_addresses_are_refused(address: str, why: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "151.101.0.223", "100.63.255.255", "100.128.0.1", "172.32.0.1",
     "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8",
     "64:ff9b::808:808"],
)
def test_global_unicast_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None
