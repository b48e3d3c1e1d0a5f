import pytest

from sandbox.domain.errors import SandboxNotFound
from sandbox.domain.ids import ID_PATTERN, checked_sandbox_id, new_sandbox_id


def test_new_ids_are_24_lowercase_hex_characters() -> None:
    sandbox_id = new_sandbox_id()

    assert len(sandbox_id) == 24
    assert ID_PATTERN.match(sandbox_id)
    assert sandbox_id == sandbox_id.lower()


def test_new_ids_do_not_repeat() -> None:
    ids = {new_sandbox_id() for _ in range(1000)}

    assert len(ids) == 1000


def test_a_well_formed_id_is_returned_unchanged() -> None:
    sandbox_id = new_sandbox_id()

    assert checked_sandbox_id(sandbox_id) == sandbox_id


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "..",
        "../etc/passwd",
        "0123456789abcdef0123456",  # one short: runsc would match it as a prefix
        "0123456789abcdef012345678",
        "0123456789ABCDEF01234567",
        "0123456789abcdef0123456g",
        "0123456789abcdef01234567\n",
        " 0123456789abcdef01234567",
        "--root=/tmp/evil0000000",
    ],
)
def test_anything_else_names_no_sandbox(value: str) -> None:
    with pytest.raises(SandboxNotFound):
        checked_sandbox_id(value)


def test_the_error_quotes_at_most_64_characters_of_the_value() -> None:
    with pytest.raises(SandboxNotFound) as raised:
        checked_sandbox_id("z" * 10_000)

    assert "z" * 64 in raised.value.message
    assert "z" * 65 not in raised.value.message
    assert raised.value.code == "not_found"
