from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.settings import Settings, SettingsError


def test_from_env_reads_sandbox_variables_with_their_types() -> None:
    settings = Settings.from_env(
        {
            "SANDBOX_RUNTIME": "fake",
            "SANDBOX_PORT": "9000",
            "SANDBOX_DEFAULT_TIMEOUT_S": "2.5",
            "SANDBOX_STATE_DIR": "/srv/state",
            "SANDBOX_LOG_FORMAT": "console",
        }
    )

    assert settings.runtime == "fake"
    assert settings.port == 9000
    assert settings.default_timeout_s == 2.5
    assert settings.state_dir == Path("/srv/state")
    assert settings.log_format == "console"


def test_from_env_keeps_defaults_and_ignores_other_variables() -> None:
    settings = Settings.from_env({"HOME": "/root", "PORT": "1"})

    assert settings == Settings()


def test_default_limits_come_from_the_settings() -> None:
    settings = Settings(default_timeout_s=7, default_memory_mb=256, output_limit_bytes=99)

    limits = settings.default_limits()

    assert (limits.timeout_s, limits.memory_mb, limits.output_bytes) == (7, 256, 99)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SANDBOX_PORT", "eighty"),
        ("SANDBOX_PORT", "0"),
        ("SANDBOX_PORT", "70000"),
        ("SANDBOX_RUNTIME", "docker"),
        ("SANDBOX_LOG_FORMAT", "xml"),
        ("SANDBOX_DEFAULT_TIMEOUT_S", "soon"),
        ("SANDBOX_DEFAULT_TIMEOUT_S", "0"),
        ("SANDBOX_DEFAULT_TIMEOUT_S", "301"),
        ("SANDBOX_DEFAULT_MEMORY_MB", "8"),
        ("SANDBOX_MAX_BODY_BYTES", "0"),
        ("SANDBOX_OUTPUT_LIMIT_BYTES", "-1"),
        ("SANDBOX_CPUS", "0"),
        ("SANDBOX_REQUEST_READ_TIMEOUT_S", "-5"),
    ],
)
def test_an_invalid_value_is_a_settings_error_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"SANDBOX_RUNTIME": "docker", "SANDBOX_LOG_FORMAT": "xml"})

    assert "SANDBOX_RUNTIME" in str(raised.value)
    assert "SANDBOX_LOG_FORMAT" in str(raised.value)
