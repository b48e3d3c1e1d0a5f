"""The language a request names, in the query or in a JSON body."""

from __future__ import annotations

from sandbox.domain.errors import InvalidRequest
from sandbox.domain.model import Language

LANGUAGES = ", ".join(language.value for language in Language)


def parse_language(value: str | None) -> Language:
    if value is None:
        raise InvalidRequest(f"the language parameter is required: {LANGUAGES}")
    try:
        return Language(value)
    except ValueError:
        raise InvalidRequest(f"language must be one of {LANGUAGES}, not {value[:40]!r}") from None
