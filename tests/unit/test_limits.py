import dataclasses
import math

import pytest
from lifecycle_support import limits

from sandbox.domain.errors import InvalidRequest
from sandbox.domain.limits import LimitPolicy

DEFAULTS = limits(timeout_s=30, memory_mb=512, output_bytes=4096)
POLICY = LimitPolicy(defaults=DEFAULTS, max_timeout_s=300, max_memory_mb=4096)


def test_no_request_values_give_the_defaults() -> None:
    assert POLICY.resolve() == DEFAULTS


def test_a_requested_timeout_replaces_only_the_timeout() -> None:
    limits = POLICY.resolve(timeout_s=2.5)

    assert limits == dataclasses.replace(DEFAULTS, timeout_s=2.5)


def test_a_requested_memory_replaces_only_the_memory() -> None:
    limits = POLICY.resolve(memory_mb=128)

    assert limits == dataclasses.replace(DEFAULTS, memory_mb=128)


def test_the_maxima_themselves_are_allowed() -> None:
    limits = POLICY.resolve(timeout_s=300, memory_mb=4096)

    assert (limits.timeout_s, limits.memory_mb) == (300, 4096)


def test_16_mb_is_the_smallest_memory() -> None:
    assert POLICY.resolve(memory_mb=16).memory_mb == 16


@pytest.mark.parametrize(
    "timeout_s", [0, -1, -0.0, 300.001, 10_000, math.nan, math.inf, -math.inf]
)
def test_a_timeout_outside_zero_to_the_maximum_is_rejected(timeout_s: float) -> None:
    with pytest.raises(InvalidRequest, match="at most 300 seconds"):
        POLICY.resolve(timeout_s=timeout_s)


@pytest.mark.parametrize("memory_mb", [0, -1, 15, 4097, 1 << 40])
def test_memory_outside_16_to_the_maximum_is_rejected(memory_mb: int) -> None:
    with pytest.raises(InvalidRequest, match="between 16 and 4096"):
        POLICY.resolve(memory_mb=memory_mb)


def test_a_rejected_request_has_the_invalid_request_code() -> None:
    with pytest.raises(InvalidRequest) as raised:
        POLICY.resolve(timeout_s=0)

    assert raised.value.code == "invalid_request"
