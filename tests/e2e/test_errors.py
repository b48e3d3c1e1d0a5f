from __future__ import annotations

from sandbox.domain.errors import SandboxError
from sandbox.entrypoints.errors import STATUS_BY_CODE


def every_error_class(base: type[SandboxError] = SandboxError) -> list[type[SandboxError]]:
    return [
        kind
        for subclass in base.__subclasses__()
        for kind in (subclass, *every_error_class(subclass))
    ]


def test_every_domain_error_code_has_a_status() -> None:
    unmapped = {kind.code for kind in every_error_class()} - STATUS_BY_CODE.keys()

    assert unmapped == set()
