"""Egress allow-lists over HTTP: asked for on POST /sandboxes and /execute, held to the
operator's list, kept in the record."""

from __future__ import annotations

import re
from typing import Any

import pytest

from e2e.support import Service, StartService

OPERATOR = "pypi.org,*.pythonhosted.org,api.example.com:8443"


@pytest.fixture
def egress(start_service: StartService) -> Service:
    return start_service(egress_allow=OPERATOR)


def test_a_session_keeps_its_allow_list_in_its_record(egress: Service) -> None:
    created = egress.client.post("/sandboxes", json={
        "network": {"allow": ["PyPI.org", "files.pythonhosted.org", "api.example.com:8443"]}})

    assert created.status_code == 201
    allow = ["pypi.org", "files.pythonhosted.org", "api.example.com:8443"]
    assert created.json()["network"] == {"allow": allow}
    shown = egress.client.get(f"/sandboxes/{created.json()['sandbox_id']}").json()
    assert shown["network"] == {"allow": allow}


def test_a_sandbox_without_an_allow_list_shows_an_empty_one(egress: Service) -> None:
    created = egress.client.post("/sandboxes", json={})

    assert created.json()["network"] == {"allow": []}


def test_the_allow_list_survives_suspend_and_restore(egress: Service) -> None:
    sandbox_id = egress.client.post(
        "/sandboxes", json={"network": {"allow": ["pypi.org"]}}).json()["sandbox_id"]

    egress.client.post(f"/sandboxes/{sandbox_id}/suspend")
    restored = egress.client.post(f"/sandboxes/{sandbox_id}/restore")

    assert restored.json()["network"] == {"allow": ["pypi.org"]}


def test_execute_hands_its_allow_list_to_the_runtime(egress: Service) -> None:
    response = egress.client.post(
        "/execute?language=python&allow_hosts=pypi.org,a.pythonhosted.org:443",
        content=b'print("hi")\n')

    assert response.status_code == 200
    spec, _program = egress.runtime.runs[-1]
    assert spec.network_allow == ("pypi.org", "a.pythonhosted.org:443")


def test_a_detached_script_keeps_its_allow_list(egress: Service) -> None:
    response = egress.client.post("/execute?language=python&detach=true&allow_hosts=pypi.org",
                                  content=b'print("hi")\n')

    assert response.status_code == 202
    assert response.json()["network"] == {"allow": ["pypi.org"]}


def test_execute_without_allow_hosts_gets_no_way_out(egress: Service) -> None:
    egress.client.post("/execute?language=python", content=b'print("hi")\n')

    spec, _program = egress.runtime.runs[-1]
    assert spec.network_allow == ()


BEYOND: list[tuple[dict[str, Any], str]] = [
    ({"allow": ["evil.test"]}, "asks for more than this server allows: evil.test"),
    ({"allow": ["pypi.org:8080"]}, "more than this server allows: pypi.org:8080"),
    ({"allow": ["*.pypi.org"]}, "more than this server allows: \\*.pypi.org"),
    ({"allow": ["pythonhosted.org"]}, "more than this server allows: pythonhosted.org"),
    ({"allow": ["api.example.com"]}, "more than this server allows: api.example.com"),
    ({"allow": ["127.0.0.1"]}, "more than this server allows: 127.0.0.1"),
]
MALFORMED: list[tuple[Any, str]] = [
    ({"allow": ["http://pypi.org/simple"]}, "network.allow"),
    ({"allow": ["pypi.org:0"]}, "port"),
    ({"allow": "pypi.org"}, "allow must be a list of strings"),
    ({"allow": [1]}, "allow\\[0\\] must be a string"),
    ({"deny": ["pypi.org"]}, "network has unknown field\\(s\\): deny"),
    (["pypi.org"], "network must be an object"),
]


@pytest.mark.parametrize(("network", "message"), BEYOND + MALFORMED)
def test_an_allow_list_beyond_the_operators_or_malformed_is_a_400_and_starts_nothing(
    egress: Service, network: Any, message: str
) -> None:
    response = egress.client.post("/sandboxes", json={"network": network})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert re.search(message, response.json()["error"]["message"])
    assert egress.runtime.live == set()


@pytest.mark.parametrize("allow_hosts", ["evil.test", "pypi.org:22", "bad host", "10.0.0.1"])
def test_execute_with_allow_hosts_beyond_the_operators_is_a_400_and_runs_nothing(
    egress: Service, allow_hosts: str
) -> None:
    response = egress.client.post(f"/execute?language=python&allow_hosts={allow_hosts}",
                                  content=b'print("hi")\n')

    assert response.status_code == 400
    assert egress.runtime.runs == []


def test_without_an_operator_list_any_egress_request_is_a_400(service: Service) -> None:
    response = service.client.post("/sandboxes", json={"network": {"allow": ["pypi.org"]}})

    assert response.status_code == 400
    assert "allows no egress" in response.json()["error"]["message"]
    assert "SANDBOX_EGRESS_ALLOW" in response.json()["error"]["message"]


def test_an_empty_allow_list_is_no_egress_and_no_error(service: Service) -> None:
    response = service.client.post("/sandboxes", json={"network": {"allow": []}})

    assert response.status_code == 201
    assert response.json()["network"] == {"allow": []}
