from __future__ import annotations

import pytest

from sandbox.adapters.migrations import Migration, SchemaMismatch, checked_sequence, pending

KNOWN = (Migration(1, "one", ("CREATE TABLE a (x int)",)),
         Migration(2, "two", ("CREATE TABLE b (x int)",)),
         Migration(3, "three", ("CREATE TABLE c (x int)",)))


def applied(*versions: int) -> dict[int, str]:
    return {version: KNOWN[version - 1].checksum for version in versions}


def test_a_new_database_gets_every_migration_in_order() -> None:
    assert pending({}, KNOWN, "db") == list(KNOWN)


def test_a_database_part_way_gets_the_rest() -> None:
    assert pending(applied(1, 2), KNOWN, "db") == [KNOWN[2]]


def test_an_up_to_date_database_gets_nothing() -> None:
    assert pending(applied(1, 2, 3), KNOWN, "db") == []


def test_a_database_newer_than_the_code_is_refused_with_what_to_do() -> None:
    newer = {**applied(1, 2, 3), 4: "later"}

    with pytest.raises(SchemaMismatch, match=r"the db has schema version 4, newer than this "
                                             r"code knows \(3\).*newer release"):
        pending(newer, KNOWN, "the db")


def test_an_applied_migration_that_was_edited_is_refused() -> None:
    edited = {**applied(1, 3), 2: Migration(2, "two", ("CREATE TABLE b (y int)",)).checksum}

    with pytest.raises(SchemaMismatch, match=r"migration 2 \(two\) was applied with other SQL"):
        pending(edited, KNOWN, "db")


def test_a_database_missing_a_migration_below_its_latest_is_refused() -> None:
    with pytest.raises(SchemaMismatch, match=r"lacks migrations \[2\]"):
        pending(applied(1, 3), KNOWN, "db")


@pytest.mark.parametrize("versions", [(1, 3), (2, 1), (1, 1), (0, 1)])
def test_migrations_in_the_code_are_numbered_one_to_n(versions: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="numbered 1..n"):
        checked_sequence(tuple(Migration(version, "m", ("SELECT 1",)) for version in versions))
