from __future__ import annotations

from starlette.testclient import TestClient

from sandbox.adapters.fake import FakeSandboxRuntime


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_ready_with_the_layers_that_hold_each_limit(client: TestClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "limits": {
        "memory": ["cgroup"], "cpu": ["cgroup"], "pids": ["rlimit", "cgroup"],
        "open_files": ["rlimit"], "file_size": ["rlimit"], "tmp": ["gvisor_tmpfs"],
        "wall_time": ["server_timer"], "output": ["server_cap"],
    }, "warnings": []}


def test_readyz_says_which_limits_are_weaker_on_a_host_without_cgroups(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    runtime.cgroups = False

    ready = client.get("/readyz").json()
    limits = ready["limits"]

    assert limits["cpu"] == []
    assert limits["memory"] == ["memory_watch"]
    assert limits["pids"] == ["rlimit"]
    assert limits["wall_time"] == ["server_timer"]
    assert ready["status"] == "ready"
    assert [warning.split(":")[0] for warning in ready["warnings"]] == ["no usable cgroups"] * 2
    assert "memory watch" in ready["warnings"][0]
    assert "no CPU quota" in ready["warnings"][1]


def test_readyz_is_a_503_listing_the_runtimes_problems(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    runtime.problems = ["runsc not found", "rootfs missing"]

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert response.json()["problems"] == ["runsc not found", "rootfs missing"]
    assert response.json()["limits"]["cpu"] == ["cgroup"]


def test_healthz_stays_ok_while_the_runtime_is_not_ready(
    client: TestClient, runtime: FakeSandboxRuntime
) -> None:
    runtime.problems = ["runsc not found"]

    response = client.get("/healthz")

    assert response.status_code == 200
