from __future__ import annotations

import dataclasses
import stat
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


TOKEN = "t0ken-with-enough-characters"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "sandbox.example"])
def test_a_non_loopback_host_without_tokens_is_refused(host: str) -> None:
    with pytest.raises(SettingsError, match="SANDBOX_API_TOKENS"):
        Settings.from_env({"SANDBOX_HOST": host})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_a_loopback_host_needs_no_tokens(host: str) -> None:
    assert Settings(host=host).auth_mode == "unauthenticated-loopback"


def test_unauthenticated_serving_beyond_loopback_can_be_allowed_explicitly() -> None:
    settings = Settings.from_env(
        {"SANDBOX_HOST": "0.0.0.0", "SANDBOX_ALLOW_UNAUTHENTICATED": "true"}
    )

    assert settings.auth_mode == "unauthenticated-allowed"


def test_tokens_are_kept_only_as_digests() -> None:
    settings = Settings.from_env(
        {"SANDBOX_HOST": "0.0.0.0", "SANDBOX_API_TOKENS": f" {TOKEN} ,second-token-0123456789"}
    )

    assert settings.auth_mode == "tokens"
    assert len(settings.api_token_digests) == 2
    assert TOKEN not in repr(settings)
    assert not any(TOKEN in repr(value) for value in vars(settings).values())


def test_replacing_a_setting_keeps_the_tokens() -> None:
    settings = Settings(api_tokens=TOKEN)

    assert dataclasses.replace(settings, port=9000).api_token_digests == (
        settings.api_token_digests
    )


@pytest.mark.parametrize("tokens", ["tiny-secret", f"{TOKEN},tiny-secret", " , "])
def test_short_or_empty_tokens_are_refused_without_showing_them(tokens: str) -> None:
    with pytest.raises(SettingsError, match="SANDBOX_API_TOKENS") as raised:
        Settings.from_env({"SANDBOX_API_TOKENS": tokens})

    assert "tiny-secret" not in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_the_memory_budget_defaults_to_most_of_the_host_memory() -> None:
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))

    budget = Settings().max_total_memory_mb

    assert abs(budget - total_kb * 3 // 4 // 1024) <= 1
    assert Settings.from_env({"SANDBOX_MAX_TOTAL_MEMORY_MB": "2048"}).max_total_memory_mb == 2048


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SANDBOX_MAX_CONCURRENT_EXECUTIONS", "0"),
        ("SANDBOX_MAX_CONCURRENT_CALLS", "0"),
        ("SANDBOX_CAPACITY_WAIT_S", "-1"),
        ("SANDBOX_MAX_TOTAL_MEMORY_MB", "100"),  # less than one default sandbox
        ("SANDBOX_MAX_CONNECTIONS", "0"),
    ],
)
def test_capacity_settings_are_checked(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SANDBOX_ALLOWED_HOSTS", "http://sandbox.example"),
        ("SANDBOX_ALLOWED_HOSTS", "sandbox.example:8080"),
        ("SANDBOX_ALLOWED_HOSTS", "sandbox.example/api"),
        ("SANDBOX_ALLOWED_HOSTS", "*, sandbox.example"),
        ("SANDBOX_CORS_ORIGINS", "app.example"),
        ("SANDBOX_CORS_ORIGINS", "https://app.example/path"),
        ("SANDBOX_CORS_ORIGINS", "https://app.example?x=1"),
        ("SANDBOX_CORS_ORIGINS", "https://user@app.example"),
        ("SANDBOX_CORS_ORIGINS", "https://app.example:http"),
        ("SANDBOX_CORS_ORIGINS", "ftp://app.example"),
        ("SANDBOX_CORS_ORIGINS", "*"),
        ("SANDBOX_CORS_ORIGINS", "null"),
    ],
)
def test_hosts_and_origins_that_are_not_names_are_refused_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_the_host_names_served_are_loopback_the_listening_host_and_those_allowed() -> None:
    settings = Settings.from_env({"SANDBOX_HOST": "10.0.0.7", "SANDBOX_API_TOKENS": "t" * 16,
                                  "SANDBOX_ALLOWED_HOSTS": "Sandbox.Example, [2001:db8::1]"})

    assert settings.host_names() == frozenset(
        {"localhost", "10.0.0.7", "sandbox.example", "2001:db8::1"})


def test_a_star_serves_every_host_and_an_unspecified_address_is_no_name() -> None:
    assert Settings(allowed_hosts="*").host_names() is None
    assert Settings(host="0.0.0.0", allow_unauthenticated=True).host_names() == frozenset(
        {"localhost"})


def test_origins_are_kept_as_browsers_send_them() -> None:
    settings = Settings(cors_origins="HTTPS://App.Example/, http://localhost:3000")

    assert settings.origins() == {"https://app.example", "http://localhost:3000"}


def test_the_store_is_sqlite_unless_a_database_url_is_set() -> None:
    shared = Settings.from_env({"SANDBOX_DATABASE_URL": "postgresql://app:secret@db/sandbox"})

    assert Settings().store_backend == "sqlite"
    assert shared.store_backend == "postgres"
    assert "secret" not in repr(shared)


def test_a_database_url_that_is_not_postgresql_is_refused_without_showing_it() -> None:
    with pytest.raises(SettingsError, match="SANDBOX_DATABASE_URL must be a postgresql") as error:
        Settings.from_env({"SANDBOX_DATABASE_URL": "mysql://app:secret@db/sandbox"})

    assert "secret" not in str(error.value)


def test_a_state_folder_keeps_its_instance_id_across_starts(tmp_path: Path) -> None:
    first = Settings(state_dir=tmp_path / "a").owner_id()
    again = Settings(state_dir=tmp_path / "a").owner_id()
    other = Settings(state_dir=tmp_path / "b").owner_id()

    assert first == again
    assert first != other
    assert first.rsplit("-", 1)[0] == other.rsplit("-", 1)[0]  # the host's name
    assert (tmp_path / "a" / "instance-id").read_text().strip() == first


def test_the_kept_instance_id_is_readable_by_the_server_alone(tmp_path: Path) -> None:
    Settings(state_dir=tmp_path).owner_id()

    assert stat.S_IMODE((tmp_path / "instance-id").stat().st_mode) == 0o600


def test_an_instance_id_given_is_used_as_it_is(tmp_path: Path) -> None:
    settings = Settings.from_env({"SANDBOX_INSTANCE_ID": "run-a.1",
                                  "SANDBOX_STATE_DIR": str(tmp_path)})

    assert settings.owner_id() == "run-a.1"
    assert not (tmp_path / "instance-id").exists()


@pytest.mark.parametrize("instance_id", ["-a", "a b", "a/b", "x" * 65])
def test_an_instance_id_outside_the_pattern_is_refused(instance_id: str) -> None:
    with pytest.raises(SettingsError, match="SANDBOX_INSTANCE_ID"):
        Settings(instance_id=instance_id)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SANDBOX_EGRESS_ALLOW": "pypi.org,http://x"}, "SANDBOX_EGRESS_ALLOW: port '//x'"),
        ({"SANDBOX_EGRESS_HOSTS": "wheels.test"}, "SANDBOX_EGRESS_HOSTS: 'wheels.test'"),
        ({"SANDBOX_EGRESS_ALLOW": "10.0.0.5"}, "names addresses \\(10.0.0.5\\)"),
        ({"SANDBOX_EGRESS_MAX_CONNECTIONS": "0"}, "SANDBOX_EGRESS_MAX_CONNECTIONS"),
        ({"SANDBOX_EGRESS_CONNECTIONS_PER_S": "0"}, "SANDBOX_EGRESS_CONNECTIONS_PER_S"),
        ({"SANDBOX_EGRESS_IDLE_TIMEOUT_S": "-1"}, "SANDBOX_EGRESS_IDLE_TIMEOUT_S"),
    ],
)
def test_egress_settings_are_checked(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_an_address_in_the_egress_allow_list_is_accepted_where_the_host_map_names_it() -> None:
    settings = Settings.from_env({"SANDBOX_EGRESS_ALLOW": "10.0.0.5:8080,wheels.test",
                                  "SANDBOX_EGRESS_HOSTS": "10.0.0.5=10.0.0.5"})

    assert settings.egress_policy().entries == ("10.0.0.5:8080", "wheels.test")
    assert str(settings.egress_host_map()["10.0.0.5"]) == "10.0.0.5"


def test_without_an_egress_allow_list_no_sandbox_gets_a_way_out() -> None:
    assert not Settings().egress_policy()


@pytest.mark.parametrize("variable", ["SANDBOX_RUNSC_PLATFORM", "SANDBOX_SESSION_PLATFORM"])
def test_a_platform_gvisor_does_not_have_is_refused(variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: "bare-metal"})


def test_sessions_wait_on_ptrace_and_scripts_run_on_systrap_by_default() -> None:
    assert (Settings().session_platform, Settings().runsc_platform) == ("ptrace", "systrap")
