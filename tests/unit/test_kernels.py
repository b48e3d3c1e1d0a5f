"""A sandbox's code contexts on runsc, against a scripted agent that plays their kernels
(well-behaved or not). tests/integration runs the real kernel on gVisor."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from agent_support import ScriptedAgent, connected

from sandbox.adapters.runsc import kernels as kernels_module
from sandbox.adapters.runsc.agent_frames import LiveProcess
from sandbox.adapters.runsc.inside import agent as agent_layout
from sandbox.adapters.runsc.inside import kernel_layout as layout
from sandbox.adapters.runsc.kernels import KERNEL_ARGV, Kernels, context_of, label_of
from sandbox.domain.cells import CellError, CellLimits, CellOutcome, CellResult, CodeContext
from sandbox.domain.errors import ContextNotFound, InvalidState, RuntimeFailure
from sandbox.domain.model import Language, Stream
from sandbox.domain.ports import CellSink

pytestmark = pytest.mark.anyio

CONTEXT = CodeContext("0123456789abcdef", Language.PYTHON, 1_700_000_000.0)
LIMITS = CellLimits(timeout_s=5, output_bytes=100, result_bytes=1000)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Kept(CellSink):
    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []

    async def started(self) -> None:
        self.items.append(("start", None))

    async def output(self, stream: Stream, data: bytes) -> None:
        self.items.append((stream.value, data))

    async def result(self, result: CellResult) -> None:
        self.items.append(("result", dict(result.data)))

    async def error(self, error: CellError) -> None:
        self.items.append(("error", error.name))


def kernel_frame(kind: int, cell: int, payload: bytes | dict[str, Any]) -> bytes:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    body = layout.HEAD.pack(kind, cell) + data
    return layout.LENGTH.pack(len(body)) + body


class PlayedKernel:
    """The agent's side of one kernel: its start, the cells it is sent, what it answers."""

    def __init__(self, agent: ScriptedAgent) -> None:
        self.agent = agent
        self.tag = 0
        self.spawned: dict[str, object] = {}

    async def start(self, ready: bool = True) -> None:
        self.tag, self.spawned = await self.agent.expect("spawn")
        await self.agent.started(self.tag)
        if ready:
            await self.say(layout.READY, 0, {"version": layout.VERSION, "pid": 9})

    async def say(self, kind: int, cell: int, payload: bytes | dict[str, Any]) -> None:
        await self.agent.out(self.tag, kernel_frame(kind, cell, payload))

    async def next_cell(self) -> dict[str, Any]:
        tag, args = await self.agent.expect("stdin")
        assert tag == self.tag
        data = bytes(args["data"])  # type: ignore[call-overload]
        (length,) = layout.LENGTH.unpack_from(data)
        request: dict[str, Any] = json.loads(data[layout.LENGTH.size:][:length])
        return request

    async def end(self, cell: int, count: int) -> None:
        await self.say(layout.END, cell, {"execution_count": count,
                                          "results_truncated": False})

    async def exits(self, code: int) -> None:
        await self.agent.exit(self.tag, code)


@asynccontextmanager
async def kernels_on_agent() -> AsyncIterator[tuple[Kernels, ScriptedAgent, list[str]]]:
    stuck: list[str] = []

    async def on_stuck() -> None:
        stuck.append("killed the sandbox")

    async with connected() as (channel, agent):
        kernels = Kernels("0123456789abcdef01234567", channel, ["A=1"], on_stuck)
        yield kernels, agent, stuck
        await kernels.close()


async def started(kernels: Kernels, agent: ScriptedAgent) -> PlayedKernel:
    played = PlayedKernel(agent)
    starting = asyncio.create_task(kernels.start(CONTEXT))
    await played.start()
    await starting
    return played


async def test_a_context_starts_its_labelled_interpreter_and_is_ready_when_it_says_so() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)

        assert kernels.listed() == [CONTEXT]

    assert played.spawned["argv"] == KERNEL_ARGV
    assert played.spawned["stdin"] is True
    assert played.spawned["env"] == [b"A=1"]
    assert played.spawned["label"] == b"context python 0123456789abcdef 1700000000"


async def test_an_interpreter_that_ends_before_it_is_ready_fails_the_start_saying_why() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = PlayedKernel(agent)
        starting = asyncio.create_task(kernels.start(CONTEXT))
        await played.start(ready=False)
        await agent.out(played.tag, b"ModuleNotFoundError: No module named 'IPython'\n",
                        agent_layout.STDERR)
        await played.exits(1)

        with pytest.raises(RuntimeFailure) as raised:
            await starting

        assert kernels.listed() == []

    assert raised.value.public_message is not None
    assert "exited with code 1" in raised.value.public_message
    assert "No module named 'IPython'" in raised.value.public_message


async def test_a_cells_frames_reach_its_sink_in_order_and_its_end_gives_the_count() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        sink = Kept()
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "1+1", LIMITS, sink))
        request = await played.next_cell()
        cell = request["cell"]
        await played.say(layout.STDOUT, cell, b"hi\n")
        await played.say(layout.RESULT, cell, {"data": {"text/plain": "2"}, "main": True,
                                               "truncated": False})
        await played.say(layout.ERROR, cell, {"name": "E", "value": "v", "traceback": "t"})
        await played.end(cell, 7)

        outcome = await running

    assert request["code"] == "1+1"
    assert (request["output_bytes"], request["result_bytes"]) == (100, 1000)
    assert outcome.execution_count == 7
    assert (outcome.timed_out, outcome.restarted, outcome.ended) == (False, False, None)
    assert sink.items == [("start", None), ("stdout", b"hi\n"),
                          ("result", {"text/plain": "2"}), ("error", "E")]


async def test_each_cell_gets_a_token_of_its_own() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        tokens = []
        for _ in range(3):
            running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, Kept()))
            tokens.append((await played.next_cell())["cell"])
            await played.end(tokens[-1], 1)
            await running

    assert len(set(tokens)) == 3 and all(0 < token < 2**63 for token in tokens)


async def forged(kernels: Kernels, agent: ScriptedAgent, frame: bytes) -> CellOutcome:
    """A cell whose kernel sends `frame`: it is killed, and started afresh."""
    played = await started(kernels, agent)
    running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, Kept()))
    await played.next_cell()
    await agent.out(played.tag, frame)
    tag, _ = await agent.expect("kill")
    assert tag == played.tag
    await played.exits(137)
    fresh = PlayedKernel(agent)
    await fresh.start()
    return await running


@pytest.mark.parametrize("frame", [
    kernel_frame(layout.STDOUT, 12345, b"a forged frame for another cell"),
    kernel_frame(layout.READY, 0, {"version": 1, "pid": 1}),
    kernel_frame(layout.RESULT, 0, {"data": {"text/plain": "x"}, "main": True,
                                    "truncated": False}),
    layout.LENGTH.pack(3) + b"abc",
    b"\xff" * 16,
])
async def test_a_kernel_that_breaks_the_protocol_is_killed_and_started_afresh(
    frame: bytes,
) -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        outcome = await forged(kernels, agent, frame)

        assert kernels.listed() == [CONTEXT]

    assert outcome.restarted is True
    assert outcome.ended is not None and outcome.ended.startswith("broke its protocol")


async def test_a_frame_of_the_right_cell_with_a_bad_bundle_is_a_violation_too() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, Kept()))
        cell = (await played.next_cell())["cell"]
        await played.say(layout.RESULT, cell, {"data": {"text/plain": "x", "image/png": "!"},
                                               "main": False, "truncated": False})
        await agent.expect("kill")
        await played.exits(137)
        await PlayedKernel(agent).start()

        outcome = await running

    assert outcome.ended is not None and "base64" in outcome.ended


async def test_a_frame_between_cells_gets_the_kernel_killed_at_once() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)

        await played.say(layout.STDOUT, 1, b"nobody asked")
        tag, _ = await agent.expect("kill")

    assert tag == played.tag


async def test_a_timed_out_cell_is_interrupted_and_the_context_lives_on() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        limits = CellLimits(timeout_s=0.1, output_bytes=100, result_bytes=1000)
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "loop", limits, Kept()))
        cell = (await played.next_cell())["cell"]
        tag, args = await agent.expect("signal")
        await played.say(layout.ERROR, cell, {"name": "KeyboardInterrupt", "value": "",
                                              "traceback": "t"})
        await played.end(cell, 4)

        outcome = await running

    assert (tag, args["signal"]) == (played.tag, signal.SIGINT)
    assert (outcome.timed_out, outcome.restarted, outcome.execution_count) == (True, False, 4)


async def test_a_cell_that_does_not_stop_when_interrupted_is_ended_with_its_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernels_module, "INTERRUPT_GRACE_S", 0.1)
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        limits = CellLimits(timeout_s=0.1, output_bytes=100, result_bytes=1000)
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "loop", limits, Kept()))
        await played.next_cell()
        await agent.expect("signal")
        await agent.expect("kill")
        await played.exits(137)
        await PlayedKernel(agent).start()

        outcome = await running

    assert (outcome.timed_out, outcome.restarted, outcome.execution_count) == (True, True, None)


async def test_an_interpreter_that_ended_between_cells_is_restarted_and_the_cell_not_run() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        await played.exits(3)
        await asyncio.sleep(0.05)  # the exit arrives
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, Kept()))
        fresh = PlayedKernel(agent)
        await fresh.start()

        outcome = await running
        listed = kernels.listed()

    assert outcome.restarted is True
    assert outcome.ended == "had exited with code 3 before this cell, which was not run"
    assert listed == [CONTEXT]


async def test_an_interpreter_that_dies_in_a_cell_is_told_and_started_afresh() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        sink = Kept()
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, sink))
        await played.next_cell()
        await agent.out(played.tag, b"Fatal Python error: Segmentation fault\n",
                        agent_layout.STDERR)
        await agent.exit(played.tag, 11, signalled=True)
        await PlayedKernel(agent).start()

        outcome = await running

    assert (outcome.restarted, outcome.ended) == (True, "was killed by signal 11")
    assert sink.items == [("start", None),
                          ("stderr", b"Fatal Python error: Segmentation fault\n")]


async def test_a_second_cell_while_one_runs_is_refused() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, Kept()))
        cell = (await played.next_cell())["cell"]

        with pytest.raises(InvalidState):
            await kernels.run(CONTEXT.context_id, "y", LIMITS, Kept())

        await played.end(cell, 1)
        await running


async def test_interrupt_signals_a_running_cell_and_nothing_else() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        kernels.interrupt(CONTEXT.context_id)  # no cell: nothing sent
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, Kept()))
        cell = (await played.next_cell())["cell"]

        kernels.interrupt(CONTEXT.context_id)
        op, tag, args = await agent.request()
        await played.end(cell, 1)
        await running

    assert (op, tag, args["signal"]) == ("signal", played.tag, signal.SIGINT)


async def test_restart_ends_the_interpreter_and_a_running_cell_is_told_so() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, Kept()))
        await played.next_cell()
        restarting = asyncio.create_task(kernels.restart(CONTEXT.context_id))
        await agent.expect("kill")
        await played.exits(137)
        await PlayedKernel(agent).start()

        await restarting
        outcome = await running

    assert (outcome.restarted, outcome.ended) == (True, "was restarted while the cell ran")


async def test_stop_forgets_the_context_and_an_unknown_one_is_not_found() -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        stopping = asyncio.create_task(kernels.stop(CONTEXT.context_id))
        await agent.expect("kill")
        await played.exits(137)
        await stopping

        assert kernels.listed() == []
        with pytest.raises(ContextNotFound):
            await kernels.run(CONTEXT.context_id, "x", LIMITS, Kept())


async def test_a_kernel_that_cannot_be_killed_ends_its_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernels_module, "KILL_GRACE_S", 0.1)
    async with kernels_on_agent() as (kernels, agent, stuck):
        await started(kernels, agent)

        stopping = asyncio.create_task(kernels.stop(CONTEXT.context_id))
        await agent.expect("kill")  # and never an exit
        await stopping

    assert stuck == ["killed the sandbox"]


async def test_after_a_restore_labelled_processes_are_contexts_again() -> None:
    other = CodeContext("fedcba9876543210", Language.PYTHON, 1_700_000_001.0)
    async with kernels_on_agent() as (kernels, agent, _):
        adopted = [kernels.adopt(5, LiveProcess(50, label_of(CONTEXT))),
                   kernels.adopt(6, LiveProcess(60, b"")),
                   kernels.adopt(7, LiveProcess(70, label_of(other))),
                   kernels.adopt(8, LiveProcess(80, label_of(CONTEXT)))]
        op, tag, _ = await agent.request()
        while op == "credit":
            op, tag, _ = await agent.request()

        assert kernels.listed() == [CONTEXT, other]

    assert adopted == [True, False, True, True]
    assert (op, tag) == ("kill", 8)  # a second process claiming a context is not it


@pytest.mark.parametrize("label", [
    b"context python 0123456789abcdef", b"context bash 0123456789abcdef 1",
    b"context python 0123456789ABCDEF 1", b"context python 0123456789abcdef 1 extra",
    b"context python 0123456789abcdef 1\n", b"exec",
])
def test_a_label_not_of_the_exact_form_names_no_context(label: bytes) -> None:
    assert context_of(label) is None


def test_a_label_names_the_context_it_was_made_for() -> None:
    assert context_of(label_of(CONTEXT)) == CONTEXT


async def test_a_cell_whose_caller_leaves_is_interrupted_and_its_context_busy_until_it_ends(
) -> None:
    async with kernels_on_agent() as (kernels, agent, _):
        played = await started(kernels, agent)
        running = asyncio.create_task(kernels.run(CONTEXT.context_id, "x", LIMITS, Kept()))
        cell = (await played.next_cell())["cell"]

        running.cancel()
        tag, args = await agent.expect("signal")
        with pytest.raises(InvalidState):
            await kernels.run(CONTEXT.context_id, "y", LIMITS, Kept())
        await played.end(cell, 1)
        await asyncio.sleep(0.05)
        again = asyncio.create_task(kernels.run(CONTEXT.context_id, "z", LIMITS, Kept()))
        next_cell = (await played.next_cell())["cell"]
        await played.end(next_cell, 2)

        assert (await again).execution_count == 2

    assert (tag, args["signal"]) == (played.tag, signal.SIGINT)
    assert running.cancelled()
