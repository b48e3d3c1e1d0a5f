"""Reading records, and the output of detached scripts."""

from __future__ import annotations

import pytest
from lifecycle_support import LIMITS, exited_script, limits, session, settled, suspended_session

from sandbox.domain.errors import SandboxNotFound
from sandbox.domain.ids import new_sandbox_id
from sandbox.domain.lifecycle.creation import run_detached
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.reading import follow_output, list_sandboxes, read_output
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.model import Language, SandboxState

pytestmark = pytest.mark.anyio


async def test_the_output_of_a_detached_script_is_kept_after_it_ended(
    sandboxes: Sandboxes,
) -> None:
    sandbox = await exited_script(sandboxes, 'print("out")\nprint("err", file=sys.stderr)')

    record, stdout, stderr = await read_output(sandboxes, sandbox.sandbox_id)

    assert record.state is SandboxState.EXITED
    assert (stdout.data, stderr.data) == (b"out\n", b"err\n")
    assert not (stdout.truncated or stderr.truncated)


async def test_the_output_of_a_detached_script_is_capped_per_stream(
    sandboxes: Sandboxes,
) -> None:
    capped = limits(timeout_s=30, output_bytes=4)
    sandbox = await run_detached(sandboxes, Language.PYTHON, b'print("abcdef")\n', capped)
    await settled(sandboxes, sandbox.sandbox_id)

    _, stdout, stderr = await read_output(sandboxes, sandbox.sandbox_id)

    assert (stdout.data, stdout.truncated) == (b"abcd", True)
    assert (stderr.data, stderr.truncated) == (b"", False)


async def test_following_the_output_yields_start_then_the_output_then_the_exit(
    sandboxes: Sandboxes,
) -> None:
    source = b'print("one")\ntime.sleep(0.05)\nprint("two")\nsys.exit(4)\n'
    sandbox = await run_detached(sandboxes, Language.PYTHON, source, LIMITS)

    events = [event async for event in follow_output(sandboxes, sandbox.sandbox_id, poll_s=0.01)]

    first, *middle, last = events
    assert first == {"type": "start", "sandbox_id": sandbox.sandbox_id}
    assert {event["type"] for event in middle} == {"stdout"}
    assert "".join(str(event["data"]) for event in middle) == "one\ntwo\n"
    assert (last["type"], last["state"], last["exit_code"]) == ("exit", "exited", 4)


async def test_following_the_output_of_a_sandbox_deleted_meanwhile_ends_with_deleted(
    sandboxes: Sandboxes,
) -> None:
    sandbox = await session(sandboxes)
    follower = follow_output(sandboxes, sandbox.sandbox_id, poll_s=0.01)
    await anext(follower)

    await delete_sandbox(sandboxes, sandbox.sandbox_id)
    events = [event async for event in follower]

    assert events == [{"type": "deleted", "sandbox_id": sandbox.sandbox_id}]


async def test_following_the_output_of_an_unknown_sandbox_fails_at_once(
    sandboxes: Sandboxes,
) -> None:
    with pytest.raises(SandboxNotFound):
        await anext(follow_output(sandboxes, new_sandbox_id()))


async def test_the_list_filters_by_state(sandboxes: Sandboxes) -> None:
    running = await session(sandboxes)
    suspended = await suspended_session(sandboxes)

    everything = await list_sandboxes(sandboxes)
    only_suspended = await list_sandboxes(sandboxes, SandboxState.SUSPENDED)

    assert {sandbox.sandbox_id for sandbox in everything} == {
        running.sandbox_id, suspended.sandbox_id
    }
    assert [sandbox.sandbox_id for sandbox in only_suspended] == [suspended.sandbox_id]
