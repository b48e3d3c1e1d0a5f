"""SANDBOX_POOL and SANDBOX_POOL_PREIMPORT: what they say, and what they refuse."""

from __future__ import annotations

import pytest

from sandbox.domain.model import Language
from sandbox.domain.packages import PackagePolicy
from sandbox.domain.pool_profiles import PoolProfile, parse_modules, parse_pool
from sandbox.settings import Settings, SettingsError

POLICY = PackagePolicy()


def test_languages_and_sizes_make_profiles_with_the_default_memory() -> None:
    assert parse_pool("python:4,bash:2", POLICY) == (
        PoolProfile(Language.PYTHON, 4), PoolProfile(Language.BASH, 2),
    )


def test_a_profile_may_name_its_memory_and_its_packages() -> None:
    (profile,) = parse_pool(" python[Tablib>=3,<4,six]@1024:1 ", POLICY)

    assert profile == PoolProfile(Language.PYTHON, 1, 1024, ("six", "tablib<4,>=3"))
    assert profile.name == "python[six,tablib<4,>=3]@1024"


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_setting_means_no_pool(value: str) -> None:
    assert parse_pool(value, POLICY) == ()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("python", "is not LANGUAGE[PACKAGES]@MEMORY_MB:SIZE"),
        ("python:two", "is not LANGUAGE"),
        ("ruby:1", "the language must be python or bash"),
        ("python:0", "the size must be from 1 to 64"),
        ("python:65", "the size must be from 1 to 64"),
        ("python@8:1", "at least 16 MiB"),
        ("bash[six]:1", "packages can only be installed for Python"),
        ("python[]:1", "the brackets name no package"),
        ("python[six,,]:1", "an empty package requirement"),
        ("python[https://x/y]:1", "URLs are not allowed"),
        ("python:1,,bash:1", "an empty entry"),
        ("python:1,", "an empty entry"),
        ("python:1,python:2", "'python' is given twice"),
    ],
)
def test_a_bad_setting_is_refused_saying_why(value: str, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_pool(value, POLICY)

    assert says in str(refused.value)


def test_packages_the_server_does_not_allow_are_refused() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        parse_pool("python[six]:1", PackagePolicy(deny=frozenset({"six"})))


def test_preimported_modules_are_dotted_names() -> None:
    assert parse_modules(" numpy, pandas ,xml.etree.ElementTree,") == (
        "numpy", "pandas", "xml.etree.ElementTree",
    )
    with pytest.raises(ValueError, match="not module names: os;rm"):
        parse_modules("numpy,os;rm")


def test_the_server_starts_with_a_small_pool_by_default() -> None:
    settings = Settings()

    assert [profile.name for profile in settings.pool_profiles()] == ["python", "bash"]
    assert settings.pool_modules() == ("numpy", "pandas")


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SANDBOX_POOL", "python:x", "SANDBOX_POOL: 'python:x' is not"),
        ("SANDBOX_POOL", "python@9000:1", "SANDBOX_POOL: python@9000 asks for more memory"),
        ("SANDBOX_POOL_PREIMPORT", "numpy;x", "SANDBOX_POOL_PREIMPORT: not module names"),
        ("SANDBOX_POOL_REFILL_CONCURRENCY", "0", "SANDBOX_POOL_REFILL_CONCURRENCY must be"),
    ],
)
def test_pool_settings_are_checked_at_start(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})

    assert says in str(refused.value)
