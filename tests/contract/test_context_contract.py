"""What every SandboxRuntime does with code contexts, in cells that the fake's tiny language
and real Python read alike (on runsc the rootfs needs IPython: see rootfs/requirements.txt)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sandbox.domain.cell_capture import CellCapture
from sandbox.domain.cells import CellLimits, CellRun, CodeContext
from sandbox.domain.errors import ContextNotFound, InvalidState
from sandbox.domain.ids import new_context_id, new_sandbox_id
from sandbox.domain.model import IDLE, Language, SandboxSpec, Stream
from sandbox.domain.ports import OutputSink, SandboxRuntime
from sandbox.settings import Settings

pytestmark = pytest.mark.anyio

LIMITS = dataclasses.replace(Settings().default_limits(), timeout_s=20)
CELL = CellLimits(timeout_s=20, output_bytes=10_000, result_bytes=100_000)


class _Discard(OutputSink):
    async def write(self, stream: Stream, data: bytes) -> None:
        pass


@asynccontextmanager
async def context(runtime: SandboxRuntime) -> AsyncIterator[tuple[str, str]]:
    """A session with one Python context: (sandbox id, context id)."""
    spec = SandboxSpec(sandbox_id=new_sandbox_id(), limits=LIMITS)
    await runtime.launch(spec, IDLE, _Discard())
    try:
        made = CodeContext(new_context_id(), Language.PYTHON, 1_700_000_000.0)
        await runtime.start_context(spec.sandbox_id, made)
        yield spec.sandbox_id, made.context_id
    finally:
        await runtime.destroy(spec.sandbox_id)


async def cell(runtime: SandboxRuntime, ids: tuple[str, str], code: str,
               limits: CellLimits = CELL) -> CellRun:
    capture = CellCapture(*ids, limits)
    return await capture.finish(await runtime.run_cell(*ids, code, limits, capture))


def value(run: CellRun) -> str:
    [result] = [result for result in run.results if result.is_main_result]
    return str(result.data["text/plain"])


async def test_variables_live_from_cell_to_cell(runtime: SandboxRuntime) -> None:
    async with context(runtime) as ids:
        first = await cell(runtime, ids, "x = 41")
        second = await cell(runtime, ids, "x + 1")

    assert (first.results, first.error, first.outcome.execution_count) == ((), None, 1)
    assert (value(second), second.outcome.execution_count) == ("42", 2)


async def test_a_cells_output_is_kept_per_stream(runtime: SandboxRuntime) -> None:
    async with context(runtime) as ids:
        run = await cell(runtime, ids, 'import sys\nprint("out")\nprint("err", file=sys.stderr)')

    assert (run.stdout.text, run.stderr.text) == ("out\n", "err\n")


async def test_a_cells_exception_is_its_error(runtime: SandboxRuntime) -> None:
    async with context(runtime) as ids:
        run = await cell(runtime, ids, 'raise ValueError("bad")')

    assert run.error is not None
    assert (run.error.name, run.error.value) == ("ValueError", "bad")
    assert "ValueError" in run.error.traceback


async def test_an_unknown_context_is_not_found(runtime: SandboxRuntime) -> None:
    async with context(runtime) as (sandbox_id, _):
        with pytest.raises(ContextNotFound):
            await cell(runtime, (sandbox_id, new_context_id()), "1")


async def test_contexts_are_listed_and_a_stopped_one_is_gone(runtime: SandboxRuntime) -> None:
    async with context(runtime) as (sandbox_id, context_id):
        listed = [made.context_id for made in await runtime.list_contexts(sandbox_id)]
        await runtime.stop_context(sandbox_id, context_id)

        assert await runtime.list_contexts(sandbox_id) == []

    assert listed == [context_id]


async def test_interrupt_stops_the_running_cell_and_keeps_the_variables(
    runtime: SandboxRuntime,
) -> None:
    async with context(runtime) as ids:
        await cell(runtime, ids, "x = 5")
        running = asyncio.create_task(cell(runtime, ids, "import time\ntime.sleep(30)"))
        while True:  # until the cell runs: a second one is then refused
            await asyncio.sleep(0.05)
            try:
                await cell(runtime, ids, "x")
            except InvalidState:
                break

        await runtime.interrupt_context(*ids)
        interrupted = await running
        after = await cell(runtime, ids, "x")

    assert interrupted.error is not None and interrupted.error.name == "KeyboardInterrupt"
    assert value(after) == "5"


async def test_a_cell_past_its_timeout_is_interrupted_and_the_context_lives_on(
    runtime: SandboxRuntime,
) -> None:
    limits = dataclasses.replace(CELL, timeout_s=1)
    async with context(runtime) as ids:
        await cell(runtime, ids, "x = 5")
        timed_out = await cell(runtime, ids, "while True: pass", limits)
        after = await cell(runtime, ids, "x")

    assert (timed_out.outcome.timed_out, timed_out.outcome.restarted) == (True, False)
    assert timed_out.error is not None and timed_out.error.name == "TimeoutError"
    assert value(after) == "5"


async def test_restart_clears_the_variables(runtime: SandboxRuntime) -> None:
    async with context(runtime) as ids:
        await cell(runtime, ids, "x = 5")
        await runtime.restart_context(*ids)
        after = await cell(runtime, ids, "x")

    assert after.error is not None and after.error.name == "NameError"
    assert after.outcome.execution_count == 1


async def test_an_interpreter_that_exits_is_restarted_and_the_cell_says_so(
    runtime: SandboxRuntime,
) -> None:
    async with context(runtime) as ids:
        died = await cell(runtime, ids, "import os\nos._exit(3)")
        after = await cell(runtime, ids, "1 + 1")

    assert died.error is not None and died.error.name == "ContextDied"
    assert died.outcome.restarted is True
    assert "exited with code 3" in died.error.value
    assert value(after) == "2"


async def test_variables_survive_a_checkpoint_and_restore(runtime: SandboxRuntime) -> None:
    async with context(runtime) as (sandbox_id, context_id):
        await cell(runtime, (sandbox_id, context_id), 'kept = "here"')
        image = await runtime.checkpoint(sandbox_id)
        await runtime.restore(SandboxSpec(sandbox_id=sandbox_id, limits=LIMITS), image,
                              _Discard())
        await runtime.discard_checkpoint(image)

        listed = [made.context_id for made in await runtime.list_contexts(sandbox_id)]
        after = await cell(runtime, (sandbox_id, context_id), "kept")

    assert listed == [context_id]
    assert value(after) == "'here'"
