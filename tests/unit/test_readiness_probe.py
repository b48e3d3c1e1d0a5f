"""Readiness proven by a probe sandbox: its answer kept while good, probed again after a real
sandbox failed to start, retried at most every few seconds while it fails, one at a time."""

from __future__ import annotations

import asyncio

import pytest
from lifecycle_support import ManualClock

from sandbox.adapters.runsc.probe import OK_FOR_S, RETRY_S, ReadinessProbe

pytestmark = pytest.mark.anyio


class Probes:
    def __init__(self, *answers: str | None) -> None:
        self.answers = list(answers)
        self.run = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> str | None:
        self.run += 1
        await self.gate.wait()
        return self.answers.pop(0) if self.answers else None


async def test_a_good_answer_is_kept_until_it_is_old() -> None:
    clock, probes = ManualClock(), Probes(None, "runsc cannot start sandboxes")
    probe = ReadinessProbe(probes, clock)

    first = await probe.problem()
    clock.advance(OK_FOR_S - 1)
    kept = await probe.problem()
    clock.advance(2)
    renewed = await probe.problem()

    assert (first, kept, renewed) == (None, None, "runsc cannot start sandboxes")
    assert probes.run == 2


async def test_a_sandbox_failing_to_start_makes_the_next_check_probe_again() -> None:
    clock, probes = ManualClock(), Probes(None, "runsc cannot start sandboxes")
    probe = ReadinessProbe(probes, clock)
    await probe.problem()

    probe.stale()

    assert await probe.problem() == "runsc cannot start sandboxes"
    assert probes.run == 2


async def test_a_failing_probe_is_tried_again_at_most_every_few_seconds() -> None:
    clock, probes = ManualClock(), Probes("broken", "broken", None)
    probe = ReadinessProbe(probes, clock)

    answers = [await probe.problem() for _ in range(5)]
    clock.advance(RETRY_S + 0.1)
    answers.append(await probe.problem())
    clock.advance(RETRY_S + 0.1)
    answers.append(await probe.problem())

    assert answers == ["broken"] * 6 + [None]
    assert probes.run == 3


async def test_checks_at_once_share_one_probe_sandbox() -> None:
    probes = Probes(None)
    probes.gate.clear()
    probe = ReadinessProbe(probes, ManualClock())

    checks = [asyncio.create_task(probe.problem()) for _ in range(5)]
    await asyncio.sleep(0.01)
    probes.gate.set()

    assert await asyncio.gather(*checks) == [None] * 5
    assert probes.run == 1
