"""The defaults a request gets are the settings' own: change a setting and the next request
gets the new value, on every route that takes limits."""

from __future__ import annotations

from e2e.support import StartService, create_session

CHANGED = {"default_timeout_s": 7.5, "default_memory_mb": 100, "cpus": 0.5, "pids_limit": 77,
           "open_files_limit": 99, "output_limit_bytes": 1234}


def test_a_session_gets_the_limits_the_settings_say(start_service: StartService) -> None:
    service = start_service(**CHANGED)

    sandbox_id = create_session(service.client)
    record = service.client.get(f"/sandboxes/{sandbox_id}").json()

    assert record["limits"] == {"timeout_s": 7.5, "memory_mb": 100, "cpus": 0.5, "pids": 77,
                                "open_files": 99, "output_bytes": 1234}


def test_a_script_runs_with_the_limits_the_settings_say(start_service: StartService) -> None:
    service = start_service(**CHANGED)

    answer = service.client.post("/execute?language=bash", content=b"echo hi\n")

    assert answer.status_code == 200
    [(spec, _)] = service.runtime.runs
    assert (spec.limits.timeout_s, spec.limits.memory_mb, spec.limits.cpus) == (7.5, 100, 0.5)
    assert (spec.limits.pids, spec.limits.open_files, spec.limits.output_bytes) == (77, 99, 1234)
