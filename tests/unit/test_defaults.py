"""Each default has one source, the settings: the limits a request gets and the lifecycle
policy are derived from them, never written down a second time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sandbox.containers import Container
from sandbox.domain.lifecycle.sandboxes import LifecyclePolicy
from sandbox.domain.model import Limits
from sandbox.settings import Settings

# Each setting, a value other than its default, and where a request or a sandbox sees it.
LIMIT_SETTINGS = {
    "default_timeout_s": (7.5, "timeout_s"),
    "default_memory_mb": (200, "memory_mb"),
    "cpus": (0.5, "cpus"),
    "pids_limit": (77, "pids"),
    "open_files_limit": (99, "open_files"),
    "file_size_mb": (3, "file_size_mb"),
    "tmp_mb": (5, "tmp_mb"),
    "output_limit_bytes": (1234, "output_bytes"),
}
POLICY_SETTINGS = {
    "max_running_sandboxes": (3, "max_running"),
    "retention_s": (11.0, "retention_s"),
    "suspended_retention_s": (13.0, "suspended_retention_s"),
    "max_file_bytes": (1024, "max_file_bytes"),
    "suspend_on_shutdown": (False, "suspend_on_shutdown"),
    "shutdown_grace_s": (2.0, "shutdown_grace_s"),
    "shutdown_concurrency": (3, "shutdown_concurrency"),
    "lease_ttl_s": (9.0, "lease_ttl_s"),
    "handoff_timeout_s": (7.0, "handoff_timeout_s"),
    "max_contexts": (3, "max_contexts"),
    "cell_result_bytes": (4096, "cell_result_bytes"),
    "max_fork": (5, "max_fork"),
}


@pytest.mark.parametrize("kind", [Limits, LifecyclePolicy])
def test_the_domain_declares_no_default_of_its_own(kind: type) -> None:
    with_defaults = [field.name for field in dataclasses.fields(kind)
                     if field.default is not dataclasses.MISSING
                     or field.default_factory is not dataclasses.MISSING]

    assert with_defaults == []


def test_every_limit_and_policy_value_has_a_setting() -> None:
    covered = {name for _, name in LIMIT_SETTINGS.values()} | {
        name for _, name in POLICY_SETTINGS.values()}

    assert covered == {field.name for field in dataclasses.fields(Limits)} | {
        field.name for field in dataclasses.fields(LifecyclePolicy)}


@pytest.mark.parametrize("setting", LIMIT_SETTINGS)
def test_changing_a_limit_setting_changes_what_a_request_gets_by_default(
    setting: str, tmp_path: Path
) -> None:
    value, limit = LIMIT_SETTINGS[setting]
    settings = Settings(runtime="fake", state_dir=tmp_path, **{setting: value})

    resolved = Container(settings=settings).limit_policy().resolve()

    assert getattr(resolved, limit) == value
    assert getattr(Settings(), setting) != value


@pytest.mark.parametrize("setting", POLICY_SETTINGS)
def test_changing_a_lifecycle_setting_changes_the_policy_the_use_cases_follow(
    setting: str, tmp_path: Path
) -> None:
    value, name = POLICY_SETTINGS[setting]
    settings = Settings(runtime="fake", state_dir=tmp_path, **{setting: value})

    policy = Container(settings=settings).lifecycle_policy()

    assert getattr(policy, name) == value
    assert getattr(Settings(), setting) != value
