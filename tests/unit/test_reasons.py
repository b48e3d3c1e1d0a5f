"""Why a sandbox is in its state: a code and a sentence of the service's own. The runtime's
and the host's words (paths, versions) go to the log, bound to the sandbox's id, never into a
record a client reads."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import LIMITS, ControlledRuntime, session, settled, suspended_session
from structlog.testing import capture_logs

from sandbox.domain.errors import RuntimeFailure
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.reading import list_sandboxes
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.model import Language, Sandbox, SandboxState
from sandbox.domain.reasons import Reason, ReasonCode

pytestmark = pytest.mark.anyio

HOST_DETAIL = ("runsc restore failed: open /var/lib/gvisor-sandbox/state/checkpoints/x/"
               "checkpoint.img: no such file or directory (runsc 0.0~20240729, goroutine 1)")


async def broken(*args: object) -> None:
    raise RuntimeFailure(HOST_DETAIL)


async def failed_create(sandboxes: Sandboxes, runtime: ControlledRuntime) -> Sandbox:
    runtime.launch = broken
    with pytest.raises(RuntimeFailure):
        await create_session(sandboxes, Language.PYTHON, LIMITS)
    [failed] = await list_sandboxes(sandboxes)
    return failed


async def failed_suspend(sandboxes: Sandboxes, runtime: ControlledRuntime) -> Sandbox:
    sandbox = await session(sandboxes)

    async def fail_and_end(sandbox_id: str) -> str:
        await runtime.destroy(sandbox_id)
        raise RuntimeFailure(HOST_DETAIL)

    runtime.checkpoint = fail_and_end
    with pytest.raises(RuntimeFailure):
        await suspend_sandbox(sandboxes, sandbox.sandbox_id)
    return await settled(sandboxes, sandbox.sandbox_id)


async def failed_restore(sandboxes: Sandboxes, runtime: ControlledRuntime) -> Sandbox:
    sandbox = await suspended_session(sandboxes)
    runtime.restore = broken
    with pytest.raises(RuntimeFailure):
        await restore_sandbox(sandboxes, sandbox.sandbox_id)
    return await sandboxes.get(sandbox.sandbox_id)


FAILURES: dict[ReasonCode, Callable[[Sandboxes, ControlledRuntime], Awaitable[Sandbox]]] = {
    ReasonCode.CREATE_FAILED: failed_create,
    ReasonCode.SUSPEND_FAILED: failed_suspend,
    ReasonCode.RESTORE_FAILED: failed_restore,
}


@pytest.mark.parametrize("code", FAILURES)
async def test_a_runtime_failure_leaves_a_code_and_a_sentence_not_the_runtimes_words(
    sandboxes: Sandboxes, runtime: ControlledRuntime, code: ReasonCode
) -> None:
    with capture_logs() as logs:
        failed = await FAILURES[code](sandboxes, runtime)

    shown = json.dumps(failed.to_dict())
    assert failed.state is SandboxState.FAILED
    assert (failed.reason_code, failed.reason) == (code, Reason.of(code).text)
    assert "/var/lib" not in shown and "runsc" not in shown and "goroutine" not in shown
    assert any(entry.get("detail") == HOST_DETAIL
               and entry.get("sandbox_id") == failed.sandbox_id for entry in logs)


def test_every_code_has_a_sentence_of_its_own() -> None:
    sentences = {code: Reason.of(code, exit_code=3, seconds=30).text for code in ReasonCode}

    assert len(set(sentences.values())) == len(ReasonCode)
    assert all(sentence and "{" not in sentence for sentence in sentences.values())
