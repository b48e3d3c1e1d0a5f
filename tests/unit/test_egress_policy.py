"""The egress allow-list grammar, its matching, and the operator's superset."""

from __future__ import annotations

import ipaddress

import pytest

from sandbox.domain.egress import (
    EgressPolicy,
    EgressRule,
    normalise_host,
    parse_host_map,
    split_host_port,
)


@pytest.mark.parametrize(
    ("entry", "host", "ports", "text"),
    [
        ("pypi.org", "pypi.org", (80, 443), "pypi.org"),
        ("PyPI.Org", "pypi.org", (80, 443), "pypi.org"),
        ("pypi.org.", "pypi.org", (80, 443), "pypi.org"),
        ("*.pythonhosted.org", "*.pythonhosted.org", (80, 443), "*.pythonhosted.org"),
        ("api.example.com:8443", "api.example.com", (8443,), "api.example.com:8443"),
        ("pypi.org:443", "pypi.org", (443,), "pypi.org:443"),
        ("wheels", "wheels", (80, 443), "wheels"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", (80, 443), "xn--bcher-kva.example"),
        ("a-b.c-d.test:1", "a-b.c-d.test", (1,), "a-b.c-d.test:1"),
        ("10.0.0.5", "10.0.0.5", (80, 443), "10.0.0.5"),
        ("10.0.0.5:8080", "10.0.0.5", (8080,), "10.0.0.5:8080"),
        ("[2001:DB8:0::1]", "2001:db8::1", (80, 443), "[2001:db8::1]"),
        ("[2001:db8::1]:443", "2001:db8::1", (443,), "[2001:db8::1]:443"),
        ("*.example.com:65535", "*.example.com", (65535,), "*.example.com:65535"),
    ],
)
def test_valid_entries_are_read_in_their_canonical_form(
    entry: str, host: str, ports: tuple[int, ...], text: str
) -> None:
    rule = EgressRule.parse(entry)

    assert (rule.host, rule.ports, str(rule)) == (host, ports, text)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("", "not a host name"),
        ("pypi.org ", "not a host name"),
        ("py pi.org", "not a host name"),
        ("pypi.org:0", "port"),
        ("pypi.org:65536", "port"),
        ("pypi.org:+80", "port"),
        ("pypi.org:", "port"),
        ("pypi.org:http", "port"),
        ("*", "not a host name"),
        ("*.", "not a host name"),
        ("**.example.com", "not a host name"),
        ("a.*.example.com", "not a host name"),
        ("*example.com", "not a host name"),
        ("-bad.example", "not a host name"),
        ("bad-.example", "not a host name"),
        ("under_score.example", "not a host name"),
        ("a" * 64 + ".example", "not a host name"),
        (".".join(["abcdefgh"] * 32), "not a host name"),
        ("bücher.example", "not a host name"),
        ("http://pypi.org", "port"),
        ("pypi.org/simple", "not a host name"),
        ("user@pypi.org", "not a host name"),
        ("127.1", "not a host name"),
        ("2130706433", "not a host name"),
        ("0x7f.0.0.1", "not a host name"),
        ("1.2.3.4.5", "not a host name"),
        ("2001:db8::1", "brackets"),
        ("[2001:db8::1", "host:port"),
        ("[2001:db8::1]x", "host:port"),
        ("[example.com]", "IPv6"),
        ("*.10.0.0.5", "addresses"),
    ],
)
def test_malformed_entries_are_refused_with_a_reason(entry: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        EgressRule.parse(entry)


@pytest.mark.parametrize(
    ("entry", "host", "port", "allowed"),
    [
        ("pypi.org", "pypi.org", 443, True),
        ("pypi.org", "pypi.org", 80, True),
        ("pypi.org", "pypi.org", 8080, False),
        ("pypi.org", "www.pypi.org", 443, False),
        ("pypi.org", "pypi.org.evil.test", 443, False),
        ("pypi.org", "evilpypi.org", 443, False),
        ("pypi.org:8443", "pypi.org", 443, False),
        ("pypi.org:8443", "pypi.org", 8443, True),
        ("*.example.com", "a.example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("*.example.com", "example.com", 443, False),
        ("*.example.com", "badexample.com", 443, False),
        ("*.example.com", "example.com.evil.test", 443, False),
        ("10.0.0.5", "10.0.0.5", 443, True),
        ("10.0.0.5", "10.0.0.6", 443, False),
    ],
)
def test_a_rule_matches_its_names_and_ports_only(
    entry: str, host: str, port: int, allowed: bool
) -> None:
    assert EgressPolicy.parse([entry]).allows(host, port) is allowed


@pytest.mark.parametrize(
    ("operator", "requested", "beyond"),
    [
        (["pypi.org"], ["pypi.org"], []),
        (["pypi.org"], ["pypi.org:443"], []),
        (["pypi.org:443"], ["pypi.org"], ["pypi.org"]),
        (["pypi.org"], ["pypi.org:8080"], ["pypi.org:8080"]),
        (["*.example.com"], ["a.example.com", "*.b.example.com", "*.example.com"], []),
        (["*.example.com"], ["example.com"], ["example.com"]),
        (["a.example.com"], ["*.example.com"], ["*.example.com"]),
        (["*.example.com:8443"], ["a.example.com"], ["a.example.com"]),
        (["pypi.org", "*.pythonhosted.org"], ["files.pythonhosted.org", "evil.test"],
         ["evil.test"]),
        ([], ["pypi.org"], ["pypi.org"]),
    ],
)
def test_the_operator_list_is_a_superset_of_what_a_sandbox_may_ask(
    operator: list[str], requested: list[str], beyond: list[str]
) -> None:
    uncovered = EgressPolicy.parse(operator).uncovered(EgressPolicy.parse(requested))

    assert uncovered == beyond


def test_a_policy_keeps_each_entry_once_in_order() -> None:
    policy = EgressPolicy.from_text(" b.test, a.test ,B.test,, a.test:443 ")

    assert policy.entries == ("b.test", "a.test", "a.test:443")


def test_a_policy_of_too_many_entries_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 100"):
        EgressPolicy.parse(f"host{index}.test" for index in range(101))


def test_an_empty_policy_allows_nothing() -> None:
    policy = EgressPolicy.from_text("")

    assert not policy
    assert not policy.allows("pypi.org", 443)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[::1]", "::1"),
        ("2001:DB8::0:1", "2001:db8::1"),
    ],
)
def test_request_hosts_are_normalised(given: str, canonical: str) -> None:
    assert normalise_host(given) == canonical


@pytest.mark.parametrize(
    "given", ["127.1", "0x7f000001", "2130706433", "017700000001", "exa mple.com", "a..b", "",
              "*.example.com", "example.com:443", "%31%32%37.0.0.1"]
)
def test_hosts_that_resolvers_would_read_as_addresses_or_garbage_are_refused(given: str) -> None:
    with pytest.raises(ValueError):
        normalise_host(given)


@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("pypi.org:443", ("pypi.org", 443)),
        ("pypi.org", ("pypi.org", None)),
        ("[::1]:8080", ("[::1]", 8080)),
        ("[::1]", ("[::1]", None)),
    ],
)
def test_host_and_port_are_split(text: str, split: tuple[str, int | None]) -> None:
    assert split_host_port(text) == split


def test_the_operator_host_map_reads_names_and_addresses() -> None:
    mapping = parse_host_map("wheels.test=127.0.0.1, API.test=[::1],10.0.0.5=10.0.0.5")

    assert mapping == {
        "wheels.test": ipaddress.ip_address("127.0.0.1"),
        "api.test": ipaddress.ip_address("::1"),
        "10.0.0.5": ipaddress.ip_address("10.0.0.5"),
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("wheels.test", "name=address"),
        ("wheels.test=", "does not appear to be an IPv4 or IPv6 address"),
        ("wheels.test=localhost", "does not appear to be an IPv4 or IPv6 address"),
        ("*.test=127.0.0.1", "not a host name"),
    ],
)
def test_a_malformed_host_map_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_host_map(text)
