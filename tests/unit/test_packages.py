"""Requirements a request may ask for, PEP 723 blocks, and the package-layers use case."""

from __future__ import annotations

import threading

import pytest

from sandbox.adapters.fake_packages import FakePackageInstaller
from sandbox.domain import packages
from sandbox.domain.errors import InvalidRequest, PackageResolutionFailed
from sandbox.domain.model import Language
from sandbox.domain.packages import (
    PackagePolicy,
    RequirementSet,
    ResolvedSet,
    package_layers,
    parse_requirements,
    split_packages_param,
)

NOTHING: frozenset[str] = frozenset()
POLICY = PackagePolicy(max_count=5)


def parse(*items: str, max_count: int = 20) -> RequirementSet:
    return parse_requirements(items, max_count, None, NOTHING)


@pytest.mark.parametrize(
    ("item", "normalised"),
    [
        ("six", "six"),
        ("Six", "six"),
        ("  six  ", "six"),
        ("Foo_Bar.baz", "foo-bar-baz"),
        ("foo__bar", "foo-bar"),
        ("tomli-w==1.0.0", "tomli-w==1.0.0"),
        ("requests[socks]", "requests[socks]"),
        ("requests[Socks, security]>=2", "requests[security,socks]>=2"),
        ("numpy>=1.20,<3", "numpy<3,>=1.20"),
        ("numpy >= 1.20 , < 3", "numpy<3,>=1.20"),
        ("attrs~=23.1", "attrs~=23.1"),
        ("attrs!=22.*", "attrs!=22.*"),
        ("django==4.2.*", "django==4.2.*"),
        ("pkg==1.0rc1", "pkg==1.0rc1"),
        ("pkg==1!2.0.post3.dev4+local.7", "pkg==1!2.0.post3.dev4+local.7"),
        ("pkg>1,<=2,!=1.5", "pkg!=1.5,<=2,>1"),
        ("A1", "a1"),
        ("pkg==1.0RC1", "pkg==1.0rc1"),
        ("pkg==v1.0", "pkg==1.0"),
        ("pkg==1.0+Local", "pkg==1.0+local"),
        ("pkg<=1.0.POST1", "pkg<=1.0.post1"),
        ("pkg!=1.0.*", "pkg!=1.0.*"),
        ("pkg (>=1.0)", "pkg>=1.0"),
        ("pkg[]", "pkg"),
        ("pkg>=1,>=1", "pkg>=1"),
        ("pkg>=1,", "pkg>=1"),
        ("pkg===1.0", "pkg===1.0"),
    ],
)
def test_valid_requirements_are_normalised(item: str, normalised: str) -> None:
    assert parse(item).requirements == (normalised,)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("https://x/y.whl", "URLs"),
        ("pkg @ https://example.invalid/pkg.whl", "URLs"),
        ("pkg@git+ssh://host/repo", "URLs"),
        ("file:pkg.whl", "URLs"),
        ("git+https://host/repo", "URLs"),
        ("../x", "local paths"),
        ("/tmp/x", "local paths"),
        ("./pkg", "local paths"),
        (".", "local paths"),
        ("C:\\pkg", "local paths"),
        ("~/pkg", "local paths"),
        ("-e .", "pip options"),
        ("--index-url=http://evil/simple", "pip options"),
        ("-r requirements.txt", "pip options"),
        ("--no-binary=:all:", "pip options"),
        ('x; os_name=="posix"', "environment markers"),
        ("x --hash=sha256:abc", "not a name"),
        ("x --index-url=y", "not a name"),
        ("x\n--index-url=y", "characters"),
        ("x\t==1", "characters"),
        ("x\u00a0", "characters"),
        ("x==1\r", "characters"),
        ("pkg==1 2", "not a name"),
        ("pkg==", "not a name"),
        ("pkg==1.0 extra", "not a name"),
        ("pkg==one", "not a name"),
        ("pkg>=1.*", r"\.\* suffix can only be used with `==` or `!=`"),
        ("pkg~=1", "not a name"),
        ("pkg!=1.0rc1.*", "not a name"),
        ("pkg[", "not a name"),
        ("pkg-", "not a name"),
        ("_pkg", "not a name"),
        ("pkg,other", "not a name"),
        ("pkg==1.0;", "environment markers"),
        ("pkg#==1", "not a name"),
        ("péter", "characters"),
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 201, "longer than"),
    ],
)
def test_hostile_or_malformed_requirements_are_refused(item: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse(item)


def test_more_requirements_than_allowed_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="at most 3 packages"):
        parse("a", "b", "c", "d", max_count=3)


def test_the_same_requirement_twice_counts_once() -> None:
    assert parse("a", "A", "b", "a", max_count=2).requirements == ("a", "b")


def test_one_name_asked_for_twice_differently_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="twice"):
        parse("numpy==1.26", "NumPy>=2")


def test_a_denied_name_is_refused_in_any_spelling() -> None:
    policy = PackagePolicy.from_lists(20, deny="Bad_Pkg")

    with pytest.raises(InvalidRequest, match="'bad-pkg' is not allowed"):
        parse_requirements(["bad.pkg==1"], policy.max_count, policy.allow, policy.deny)


def test_with_an_allow_list_only_its_names_pass() -> None:
    policy = PackagePolicy.from_lists(20, allow="six, tomli_w")

    allowed = parse_requirements(["Tomli-W", "six"], 20, policy.allow, policy.deny)

    assert allowed.requirements == ("six", "tomli-w")
    with pytest.raises(InvalidRequest, match="'attrs' is not allowed"):
        parse_requirements(["six", "attrs"], 20, policy.allow, policy.deny)


def test_an_empty_allow_list_allows_every_name() -> None:
    assert PackagePolicy.from_lists(20, allow=" , ").allow is None


def test_a_policy_refuses_lists_of_things_that_are_not_names() -> None:
    with pytest.raises(ValueError, match="not package names"):
        PackagePolicy.from_lists(20, deny="ok, not/a/name")


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("", []),
        ("  ", []),
        ("six", ["six"]),
        ("a,b==1.2", ["a", "b==1.2"]),
        ("b>=1,<2", ["b>=1,<2"]),
        ("a,b>=1,<2,c", ["a", "b>=1,<2", "c"]),
        ("b>=1, <2 ,!=1.5,c~=1.0", ["b>=1, <2 ,!=1.5", "c~=1.0"]),
        ("requests[socks],six", ["requests[socks]", "six"]),
        ("a,,b", ["a", "", "b"]),
        ("<2,a", ["<2", "a"]),
    ],
)
def test_the_packages_parameter_splits_on_commas_between_requirements(
    value: str, items: list[str]
) -> None:
    assert split_packages_param(value) == items


def test_a_split_parameter_parses_into_its_requirements() -> None:
    items = split_packages_param("Six,numpy>=1,<3")

    assert parse(*items).requirements == ("numpy<3,>=1", "six")


def test_an_empty_piece_of_the_parameter_is_refused_by_the_parser() -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        parse(*split_packages_param("a,,b"))


def test_the_key_does_not_depend_on_the_order_or_spelling() -> None:
    one = parse("Six", "numpy>=1,<3")
    other = parse("numpy<3, >=1", "six")

    assert one.key("cp311", "manylinux", "index") == other.key("cp311", "manylinux", "index")
    assert len(one.key("cp311", "manylinux", "index")) == 64


def test_the_key_differs_by_python_tag_platform_index_and_requirements() -> None:
    requirements = parse("six")
    key = requirements.key("cp311", "manylinux", "index")

    assert requirements.key("cp312", "manylinux", "index") != key
    assert requirements.key("cp311", "musllinux", "index") != key
    assert requirements.key("cp311", "manylinux", "mirror") != key
    assert parse("six==1.16").key("cp311", "manylinux", "index") != key


def test_names_are_the_normalised_names() -> None:
    assert parse("Requests[socks]>=2", "six").names == ("requests", "six")


PEP723 = b"""\
#!/usr/bin/env python3
# /// script
# requires-python = ">=3.11"
# dependencies = [
#   "six",
#   "tomli-w==1.0.0",
# ]
# ///
import six
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_no_packages_means_no_layer_and_no_install() -> None:
    installer = FakePackageInstaller()

    layers = await package_layers(installer, Language.PYTHON, b"print(1)", [], POLICY)

    assert layers == ()
    assert installer.installed == []


@pytest.mark.anyio
async def test_no_packages_need_no_installer() -> None:
    assert await package_layers(None, Language.PYTHON, b"print(1)", [], POLICY) == ()


@pytest.mark.anyio
async def test_packages_and_the_scripts_block_are_installed_as_one_layer() -> None:
    installer = FakePackageInstaller()

    layers = await package_layers(installer, Language.PYTHON, PEP723, ["attrs", "six"], POLICY)

    assert installer.installed == [parse("attrs", "six", "tomli-w==1.0.0")]
    assert layers == (await installer.layer_for(parse("six", "attrs", "tomli-w==1.0.0")),)


@pytest.mark.anyio
async def test_a_long_lived_sandbox_gets_its_packages_without_a_script() -> None:
    installer = FakePackageInstaller()

    layers = await package_layers(installer, None, b"", ["six"], POLICY)

    assert len(layers) == 1
    assert installer.installed == [parse("six")]


@pytest.mark.anyio
async def test_packages_for_bash_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="only be installed for Python"):
        await package_layers(FakePackageInstaller(), Language.BASH, b"echo", ["six"], POLICY)


@pytest.mark.anyio
async def test_a_bash_script_is_not_read_for_a_pep723_block() -> None:
    installer = FakePackageInstaller()

    assert await package_layers(installer, Language.BASH, PEP723, [], POLICY) == ()
    assert installer.installed == []


@pytest.mark.anyio
async def test_the_policy_counts_the_scripts_block_too() -> None:
    policy = PackagePolicy(max_count=2)

    with pytest.raises(InvalidRequest, match="at most 2"):
        await package_layers(FakePackageInstaller(), Language.PYTHON, PEP723, ["attrs"], policy)


@pytest.mark.anyio
async def test_a_bad_requirement_in_the_block_is_refused_before_any_install() -> None:
    installer = FakePackageInstaller()
    source = b'# /// script\n# dependencies = ["pkg @ https://example.invalid/p.whl"]\n# ///\n'

    with pytest.raises(InvalidRequest, match="URLs"):
        await package_layers(installer, Language.PYTHON, source, [], POLICY)
    assert installer.installed == []


@pytest.mark.anyio
async def test_packages_without_an_installer_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="does not install packages"):
        await package_layers(None, Language.PYTHON, b"", ["six"], POLICY)


@pytest.mark.anyio
async def test_an_installer_failure_comes_through_with_its_reason() -> None:
    installer = FakePackageInstaller(unavailable={"No_Such"})

    with pytest.raises(PackageResolutionFailed, match="no-such==9.9"):
        await package_layers(installer, Language.PYTHON, b"", ["no-such==9.9"], POLICY)


def test_releases_are_pinned_in_their_normal_spelling() -> None:
    resolved = ResolvedSet.of([("Foo_Bar", "1.0RC1"), ("six", "1.16.0"), ("foo-bar", "1.0rc1")])

    assert resolved.pins == ("foo-bar==1.0rc1", "six==1.16.0")
    assert resolved.names == ("foo-bar", "six")


@pytest.mark.parametrize("release", [("not a name", "1.0"), ("six", "one"), ("", "1.0")])
def test_a_release_that_is_not_a_name_and_version_cannot_be_pinned(
    release: tuple[str, str],
) -> None:
    with pytest.raises(ValueError):
        ResolvedSet.of([release])


def test_the_layer_key_is_the_releases_and_never_a_requested_sets_key() -> None:
    pins = ResolvedSet(("six==1.16.0",))

    assert pins.key("cp311", "p", "i") == ResolvedSet(("six==1.16.0",)).key("cp311", "p", "i")
    assert pins.key("cp311", "p", "i") != ResolvedSet(("six==1.17.0",)).key("cp311", "p", "i")
    assert pins.key("cp311", "p", "i") != parse("six==1.16.0").key("cp311", "p", "i")


def test_the_policy_holds_for_every_resolved_package_and_names_the_one_refused() -> None:
    policy = PackagePolicy.from_lists(20, deny="Bad_Dep")
    resolved = ResolvedSet.of([("good", "1"), ("bad-dep", "2")])

    with pytest.raises(PackageResolutionFailed, match="'bad-dep' is not allowed"):
        policy.check_resolved(resolved)
    PackagePolicy.from_lists(20, allow="good,bad-dep").check_resolved(resolved)
    with pytest.raises(PackageResolutionFailed, match="'bad-dep'"):
        PackagePolicy.from_lists(20, allow="good").check_resolved(resolved)


@pytest.mark.anyio
async def test_a_dependency_the_policy_denies_is_refused_though_not_asked_for() -> None:
    installer = FakePackageInstaller(dependencies={"tablib": ["bad"]},
                                     policy=PackagePolicy.from_lists(20, deny="bad"))

    with pytest.raises(PackageResolutionFailed, match="'bad' is not allowed"):
        await package_layers(installer, Language.PYTHON, b"", ["tablib"], POLICY)
    assert installer.installed == []


@pytest.mark.anyio
async def test_spellings_that_resolve_alike_share_one_layer() -> None:
    installer = FakePackageInstaller()

    one = await package_layers(installer, Language.PYTHON, b"", ["numpy!=0.0.1"], POLICY)
    other = await package_layers(installer, Language.PYTHON, b"", ["NumPy!=0.0.2"], POLICY)

    assert one == other


def checked_in(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The threads in which scripts are read for a PEP 723 block."""
    threads = []
    real = packages.pep723_dependencies

    def recording(source: bytes) -> list[str] | None:
        threads.append(threading.current_thread())
        return real(source)

    monkeypatch.setattr(packages, "pep723_dependencies", recording)
    return threads


@pytest.mark.anyio
async def test_a_large_script_is_read_and_checked_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = checked_in(monkeypatch)
    large = PEP723 + b"#\n" * packages.INLINE_CHECK_CHARS

    layers = await package_layers(FakePackageInstaller(), Language.PYTHON, large, [], POLICY)

    assert len(layers) == 1
    assert len(threads) == 1 and threads[0] is not threading.current_thread()


@pytest.mark.anyio
async def test_a_small_script_is_read_at_once_without_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = checked_in(monkeypatch)

    await package_layers(FakePackageInstaller(), Language.PYTHON, PEP723, [], POLICY)

    assert threads == [threading.current_thread()]
