"""The use cases of code contexts, on the fake runtime (whose cells are a tiny language, see
sandbox/adapters/fake_contexts.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lifecycle_support import NewSandboxes, limits, policy, session, suspended_session

from sandbox.domain.cell_capture import CellListener
from sandbox.domain.cells import CellError, CellResult
from sandbox.domain.errors import ContextNotFound, InvalidRequest, InvalidState, SandboxNotFound
from sandbox.domain.lifecycle import contexts
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import Language, Stream

pytestmark = pytest.mark.anyio


async def new_context(sandboxes: Sandboxes) -> tuple[str, str]:
    sandbox = await session(sandboxes)
    context = await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)
    return sandbox.sandbox_id, context.context_id


async def run(sandboxes: Sandboxes, ids: tuple[str, str], code: str,
              timeout_s: float | None = None) -> dict[str, Any]:
    return (await contexts.run_cell(sandboxes, *ids, code, timeout_s)).to_dict()


async def test_variables_live_from_one_cell_to_the_next(sandboxes: Sandboxes) -> None:
    ids = await new_context(sandboxes)

    first = await run(sandboxes, ids, 'x = 41\nprint("set")')
    second = await run(sandboxes, ids, "x + 1")

    assert (first["stdout"], first["results"], first["execution_count"]) == ("set\n", [], 1)
    assert second["results"] == [{"text/plain": "42", "is_main_result": True,
                                  "truncated": False}]
    assert second["execution_count"] == 2


async def test_contexts_are_listed_oldest_first_and_deleted_one_by_one(
    sandboxes: Sandboxes,
) -> None:
    sandbox = await session(sandboxes)
    made = [await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)
            for _ in range(3)]

    await contexts.delete_context(sandboxes, sandbox.sandbox_id, made[1].context_id)

    listed = await contexts.list_contexts(sandboxes, sandbox.sandbox_id)
    assert [context.context_id for context in listed] == [made[0].context_id,
                                                          made[2].context_id]
    with pytest.raises(ContextNotFound):
        await run(sandboxes, (sandbox.sandbox_id, made[1].context_id), "1")


async def test_contexts_of_one_sandbox_are_apart_from_each_other(
    sandboxes: Sandboxes,
) -> None:
    sandbox_id, first = await new_context(sandboxes)
    second = (await contexts.create_context(sandboxes, sandbox_id, Language.PYTHON)).context_id

    await run(sandboxes, (sandbox_id, first), "x = 1")
    answer = await run(sandboxes, (sandbox_id, second), "x")

    assert answer["error"] == {"name": "NameError", "value": "name 'x' is not defined",
                               "traceback": "Traceback (most recent call last):\n"
                                            "NameError: name 'x' is not defined"}


async def test_a_sandbox_holds_at_most_the_contexts_its_policy_allows(
    new_sandboxes: NewSandboxes,
) -> None:
    sandboxes = new_sandboxes(policy(max_contexts=2))
    sandbox = await session(sandboxes)
    for _ in range(2):
        await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)

    with pytest.raises(InvalidState, match="2 contexts, the most it may have"):
        await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)


async def test_starts_at_once_cannot_pass_the_cap_together(new_sandboxes: NewSandboxes) -> None:
    sandboxes = new_sandboxes(policy(max_contexts=2))
    sandbox = await session(sandboxes)

    made = await asyncio.gather(*(
        contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)
        for _ in range(5)), return_exceptions=True)

    assert sum(not isinstance(result, Exception) for result in made) == 2
    assert len(await contexts.list_contexts(sandboxes, sandbox.sandbox_id)) == 2


async def test_only_python_contexts_are_made(sandboxes: Sandboxes) -> None:
    sandbox = await session(sandboxes)

    with pytest.raises(InvalidRequest, match="python"):
        await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.BASH)


async def test_contexts_need_a_running_sandbox(sandboxes: Sandboxes) -> None:
    sandbox = await suspended_session(sandboxes)

    with pytest.raises(InvalidState, match="it must be running"):
        await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)
    with pytest.raises(InvalidState):
        await contexts.list_contexts(sandboxes, sandbox.sandbox_id)
    with pytest.raises(SandboxNotFound):
        await contexts.list_contexts(sandboxes, "0" * 24)


async def test_a_malformed_context_id_names_no_context(sandboxes: Sandboxes) -> None:
    sandbox = await session(sandboxes)

    with pytest.raises(ContextNotFound):
        await run(sandboxes, (sandbox.sandbox_id, "../x"), "1")


async def test_variables_survive_a_suspend_and_restore(sandboxes: Sandboxes) -> None:
    ids = await new_context(sandboxes)
    await run(sandboxes, ids, 'greeting = "kept"')

    await suspend_sandbox(sandboxes, ids[0])
    await restore_sandbox(sandboxes, ids[0])

    assert (await run(sandboxes, ids, "greeting"))["results"] == [
        {"text/plain": "'kept'", "is_main_result": True, "truncated": False}]


async def test_a_running_cell_keeps_its_sandbox_from_being_suspended(
    sandboxes: Sandboxes,
) -> None:
    ids = await new_context(sandboxes)
    running = asyncio.create_task(run(sandboxes, ids, "time.sleep(0.3)\n1"))
    await asyncio.sleep(0.05)

    with pytest.raises(InvalidState, match="busy"):
        await suspend_sandbox(sandboxes, ids[0])

    assert (await running)["error"] is None
    await suspend_sandbox(sandboxes, ids[0])


async def test_a_second_cell_in_a_busy_context_is_refused(sandboxes: Sandboxes) -> None:
    ids = await new_context(sandboxes)
    running = asyncio.create_task(run(sandboxes, ids, "time.sleep(0.3)"))
    await asyncio.sleep(0.05)

    with pytest.raises(InvalidState, match="a cell is running"):
        await run(sandboxes, ids, "1")

    await running


async def test_interrupt_stops_the_cell_and_keeps_the_variables(sandboxes: Sandboxes) -> None:
    ids = await new_context(sandboxes)
    await run(sandboxes, ids, "x = 7")
    running = asyncio.create_task(run(sandboxes, ids, "while True: pass"))
    await asyncio.sleep(0.05)

    await contexts.interrupt_context(sandboxes, *ids)

    interrupted = await running
    assert interrupted["error"] == {"name": "KeyboardInterrupt", "value": "", "traceback":
                                    "Traceback (most recent call last):\nKeyboardInterrupt"}
    assert (await run(sandboxes, ids, "x"))["results"][0]["text/plain"] == "7"


async def test_restart_clears_the_variables(sandboxes: Sandboxes) -> None:
    ids = await new_context(sandboxes)
    await run(sandboxes, ids, "x = 7")

    await contexts.restart_context(sandboxes, *ids)

    answer = await run(sandboxes, ids, "x")
    assert answer["error"]["name"] == "NameError"
    assert answer["execution_count"] == 1


async def test_a_cell_past_its_timeout_is_interrupted_and_told_as_timed_out(
    sandboxes: Sandboxes,
) -> None:
    ids = await new_context(sandboxes)
    await run(sandboxes, ids, "x = 7")

    answer = await run(sandboxes, ids, "while True: pass", timeout_s=0.1)

    assert (answer["timed_out"], answer["restarted"]) == (True, False)
    assert answer["error"]["name"] == "TimeoutError"
    assert (await run(sandboxes, ids, "x"))["error"] is None


async def test_a_cell_that_ignores_interrupts_past_its_timeout_restarts_its_context(
    sandboxes: Sandboxes,
) -> None:
    ids = await new_context(sandboxes)
    await run(sandboxes, ids, "x = 7")

    answer = await run(sandboxes, ids, "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                       "while True: pass", timeout_s=0.1)

    assert (answer["timed_out"], answer["restarted"]) == (True, True)
    assert "variables" in answer["error"]["value"]
    assert (await run(sandboxes, ids, "x"))["error"]["name"] == "NameError"


async def test_an_interpreter_that_exits_is_told_as_context_died_and_restarted(
    sandboxes: Sandboxes,
) -> None:
    ids = await new_context(sandboxes)

    answer = await run(sandboxes, ids, "os._exit(3)")

    assert answer["error"]["name"] == "ContextDied"
    assert answer["restarted"] is True
    assert (await run(sandboxes, ids, "1"))["error"] is None


async def test_without_a_timeout_a_cell_gets_its_sandboxs_own(sandboxes: Sandboxes) -> None:
    sandbox = await create_session(sandboxes, Language.PYTHON, limits(timeout_s=0.1))
    context = await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)

    answer = await contexts.run_cell(sandboxes, sandbox.sandbox_id, context.context_id,
                                     "while True: pass", None)

    assert answer.outcome.timed_out is True
    assert answer.error is not None and "timeout of 0.1 s" in answer.error.value


async def test_a_listener_hears_the_start_the_output_the_results_and_the_error(
    sandboxes: Sandboxes,
) -> None:
    ids = await new_context(sandboxes)
    heard: list[object] = []

    class Listener(CellListener):
        async def started(self, sandbox_id: str, context_id: str) -> None:
            heard.append(("start", context_id))

        async def output(self, stream: Stream, text: str) -> None:
            heard.append((stream.value, text))

        async def result(self, result: CellResult) -> None:
            heard.append(("result", result.data["text/plain"]))

        async def error(self, error: CellError) -> None:
            heard.append(("error", error.name))

    await contexts.run_cell(sandboxes, *ids, 'print("a")\nprint("b", file=sys.stderr)\n'
                                             'raise ValueError("no")', None, Listener())

    assert heard == [("start", ids[1]), ("stdout", "a\n"), ("stderr", "b\n"),
                     ("error", "ValueError")]


async def test_deleting_the_sandbox_under_a_running_cell_says_it_was_deleted(
    sandboxes: Sandboxes,
) -> None:
    ids = await new_context(sandboxes)
    running = asyncio.create_task(run(sandboxes, ids, "while True: pass"))
    await asyncio.sleep(0.05)

    await delete_sandbox(sandboxes, ids[0])

    with pytest.raises(SandboxNotFound, match="deleted while in use"):
        await running
