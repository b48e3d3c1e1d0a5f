"""Use cases of managed sandboxes: detached scripts and long-lived sessions.

Every change of a sandbox's state happens under that sandbox's lock, after re-reading its
record, so concurrent calls on one sandbox are serialised, never interleaved. A supervisor
task per running sandbox records how it ended.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from sandbox.domain.capacity import Capacity
from sandbox.domain.errors import (
    CheckpointMismatch,
    InvalidState,
    RuntimeFailure,
    SandboxNotFound,
)
from sandbox.domain.ids import checked_sandbox_id, new_sandbox_id
from sandbox.domain.metrics import Metrics, NoMetrics, verdict_of
from sandbox.domain.model import (
    IDLE,
    ExecutionResult,
    FileEntry,
    Language,
    Limits,
    Program,
    Sandbox,
    SandboxKind,
    SandboxState,
    Stream,
    can_move,
)
from sandbox.domain.output import OutputCapture
from sandbox.domain.ports import OutputLog, SandboxRuntime, SandboxStore, StoredOutput
from sandbox.domain.services import ExecutionEvents

log = structlog.get_logger(__name__)

@dataclass(frozen=True)
class LifecyclePolicy:
    max_running: int = 32
    retention_s: float = 24 * 3600
    suspended_retention_s: float = 7 * 24 * 3600
    max_file_bytes: int = 64 * 1024 * 1024
    suspend_on_shutdown: bool = True
    shutdown_grace_s: float = 30.0


class SandboxService:
    def __init__(
        self,
        runtime: SandboxRuntime,
        store: SandboxStore,
        outputs: OutputLog,
        policy: LifecyclePolicy,
        clock: Callable[[], float] = time.time,
        capacity: Capacity | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._outputs = outputs
        self._policy = policy
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._execs: Counter[str] = Counter()
        # Sandboxes being created or restored: they count towards max_running before their
        # records say running, so concurrent starts cannot together pass the limit.
        self._admission = asyncio.Lock()
        self._starting = 0
        # Shared with the ephemeral executions: a running sandbox holds its memory limit
        # there from admission until it stops running (see `_save`) or is deleted.
        self._capacity = capacity or Capacity(sys.maxsize, sys.maxsize, 0.0)
        self._metrics = metrics or NoMetrics()

    # Creating -------------------------------------------------------------------------

    async def run_detached(
        self,
        language: Language,
        source: bytes,
        limits: Limits,
        package_dirs: tuple[str, ...] = (),
        network_allow: tuple[str, ...] = (),
    ) -> Sandbox:
        """Start a script in a new sandbox and return at once; it runs on, its output kept."""
        return await self._create(SandboxKind.SCRIPT, language, limits, (), None,
                                  Program.script(language, source), package_dirs,
                                  network_allow)

    async def create_session(
        self,
        language: Language,
        limits: Limits,
        env: tuple[tuple[str, str], ...] = (),
        idle_timeout_s: float | None = None,
        package_dirs: tuple[str, ...] = (),
        network_allow: tuple[str, ...] = (),
    ) -> Sandbox:
        """A long-lived sandbox that idles until work arrives with exec."""
        return await self._create(SandboxKind.SESSION, language, limits, env, idle_timeout_s,
                                  IDLE, package_dirs, network_allow)

    async def _create(
        self,
        kind: SandboxKind,
        language: Language,
        limits: Limits,
        env: tuple[tuple[str, str], ...],
        idle_timeout_s: float | None,
        program: Program,
        package_dirs: tuple[str, ...],
        network_allow: tuple[str, ...] = (),
    ) -> Sandbox:
        now = self._clock()
        sandbox = Sandbox(
            sandbox_id=new_sandbox_id(), kind=kind, state=SandboxState.CREATING,
            language=language, limits=limits, created_at=now, updated_at=now, env=env,
            idle_timeout_s=idle_timeout_s, last_activity_at=now, package_dirs=package_dirs,
            network_allow=network_allow,
        )
        structlog.contextvars.bind_contextvars(sandbox_id=sandbox.sandbox_id)
        async with self._admitted(sandbox), self._lock(sandbox.sandbox_id):
            await self._store.add(sandbox)
            sink = self._outputs.sink(sandbox.sandbox_id, limits.output_bytes)
            try:
                await self._runtime.launch(sandbox.spec(), program, sink)
            except RuntimeFailure as failure:
                await self._save(sandbox, SandboxState.FAILED, reason=failure.message)
                raise
            except BaseException:
                # Cancelled (the client left) or broken: the runtime has removed what it
                # started; the record must not stay `creating`.
                await asyncio.shield(self._save(sandbox, SandboxState.FAILED,
                                                reason="creation was interrupted"))
                raise
            sandbox = await self._save(sandbox, SandboxState.RUNNING, running_since=now)
            self._supervise(sandbox)
        log.info("sandbox.created", kind=kind.value, language=language.value)
        return sandbox

    @contextlib.asynccontextmanager
    async def _admitted(self, sandbox: Sandbox) -> AsyncIterator[None]:
        """Hold a place under max_running while a sandbox starts, and its memory in the shared
        budget (waited for a bounded time); AtCapacity when there is no room. If the start
        fails, the memory is given back; if it succeeds, the sandbox keeps it."""
        async with self._admission:
            running = len(await self._store.list(SandboxState.RUNNING)) + self._starting
            if running >= self._policy.max_running:
                raise self._capacity.refusal(
                    "running_sandboxes",
                    f"{running} sandboxes are running, the most this server allows; "
                    "suspend or delete one, or retry later",
                    retry_after_s=5,
                )
            self._starting += 1
        try:
            await self._capacity.reserve(sandbox.sandbox_id, sandbox.limits.memory_mb)
            try:
                yield
            except BaseException:
                self._capacity.release(sandbox.sandbox_id)
                raise
        finally:
            self._starting -= 1

    # Reading --------------------------------------------------------------------------

    async def get(self, sandbox_id: str) -> Sandbox:
        sandbox = await self._store.get(checked_sandbox_id(sandbox_id))
        if sandbox is None:
            raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")
        return sandbox

    async def list_sandboxes(self, state: SandboxState | None = None) -> list[Sandbox]:
        return await self._store.list(state)

    async def read_output(self, sandbox_id: str) -> tuple[Sandbox, StoredOutput, StoredOutput]:
        sandbox = await self.get(sandbox_id)
        stdout = await self._outputs.read(sandbox.sandbox_id, Stream.STDOUT)
        stderr = await self._outputs.read(sandbox.sandbox_id, Stream.STDERR)
        return sandbox, stdout, stderr

    async def follow_output(
        self, sandbox_id: str, poll_s: float = 0.2
    ) -> AsyncIterator[dict[str, object]]:
        """Events of the output as it grows, until the sandbox stops running."""
        sandbox = await self.get(sandbox_id)
        yield {"type": "start", "sandbox_id": sandbox.sandbox_id}
        readers = {stream: _IncrementalText() for stream in Stream}
        while True:
            current = await self._store.get(sandbox.sandbox_id)
            for stream, reader in readers.items():
                chunk = await self._outputs.read(sandbox.sandbox_id, stream, reader.offset)
                if text := reader.feed(chunk):
                    yield {"type": stream.value, "data": text}
            if current is None:
                yield {"type": "deleted", "sandbox_id": sandbox.sandbox_id}
                return
            if current.state not in (SandboxState.CREATING, SandboxState.RUNNING):
                yield {"type": "exit" if current.state is SandboxState.EXITED else "state",
                       **current.to_dict()}
                return
            await asyncio.sleep(poll_s)

    # Working in a sandbox -------------------------------------------------------------

    async def exec(
        self,
        sandbox_id: str,
        program: Program,
        stdin: bytes,
        timeout_s: float | None,
        events: ExecutionEvents | None = None,
    ) -> ExecutionResult:
        events = events or ExecutionEvents()
        async with self._working(sandbox_id, "exec in") as sandbox:
            capture = OutputCapture(sandbox.limits.output_bytes, events.output)
            await events.started(sandbox.sandbox_id)
            outcome = await self._runtime.exec(
                sandbox.sandbox_id, program, capture, stdin, timeout_s or sandbox.limits.timeout_s
            )
            await capture.close()
        self._metrics.execution_finished("exec", verdict_of(outcome), outcome.duration_ms / 1000)
        language = program.language.value if program.language else "argv"
        log.info("sandbox.exec_finished", exit_code=outcome.exit_code,
                 timed_out=outcome.timed_out, duration_ms=outcome.duration_ms)
        return ExecutionResult(
            sandbox_id=sandbox.sandbox_id, language=language, outcome=outcome,
            stdout=capture.captured(Stream.STDOUT), stderr=capture.captured(Stream.STDERR),
        )

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        async with self._working(sandbox_id, "write files in") as sandbox:
            await self._runtime.write_file(sandbox.sandbox_id, path, data)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        async with self._working(sandbox_id, "read files in") as sandbox:
            return await self._runtime.read_file(
                sandbox.sandbox_id, path, self._policy.max_file_bytes
            )

    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        async with self._working(sandbox_id, "list files in") as sandbox:
            return await self._runtime.list_files(sandbox.sandbox_id, path)

    @contextlib.asynccontextmanager
    async def _working(self, sandbox_id: str, verb: str) -> AsyncIterator[Sandbox]:
        """Work in a running sandbox. Suspend waits for it; delete does not, and a runtime
        failure caused by a delete (or an out-of-memory end) is told as what happened."""
        sandbox = await self._begin_work(sandbox_id, verb)
        try:
            yield sandbox
        except RuntimeFailure:
            current = await self._store.get(sandbox.sandbox_id)
            if current is None:
                raise SandboxNotFound(f"sandbox {sandbox_id} was deleted while in use") from None
            if current.state is not SandboxState.RUNNING:
                raise InvalidState(
                    f"sandbox {sandbox_id} became {current.state.value} while in use"
                ) from None
            raise
        finally:
            await self._end_work(sandbox.sandbox_id)

    async def _begin_work(self, sandbox_id: str, verb: str) -> Sandbox:
        # No activity is recorded here: while work runs the reaper leaves the sandbox alone
        # (see `_execs`), and its idle time counts from when the work ends.
        async with self._lock(checked_sandbox_id(sandbox_id)):
            sandbox = await self._require(sandbox_id, SandboxState.RUNNING, verb)
            self._execs[sandbox.sandbox_id] += 1
            return sandbox

    async def _end_work(self, sandbox_id: str) -> None:
        self._execs[sandbox_id] -= 1
        if self._execs[sandbox_id] <= 0:
            del self._execs[sandbox_id]
        async with self._lock(sandbox_id):
            sandbox = await self._store.get(sandbox_id)
            if sandbox is not None:
                await self._touch(sandbox)
        if sandbox is None:
            self._locks.pop(sandbox_id, None)

    # Suspend, restore, delete ---------------------------------------------------------

    async def suspend(self, sandbox_id: str, reason: str = "suspended on request") -> Sandbox:
        async with self._lock(checked_sandbox_id(sandbox_id)):
            sandbox = await self._require(sandbox_id, SandboxState.RUNNING, "suspend")
            if self._execs[sandbox.sandbox_id]:
                raise InvalidState("the sandbox is busy with an exec or a file call; "
                                   "suspend it when that has finished")
            return await self._suspend_locked(sandbox, reason)

    async def _suspend_locked(self, sandbox: Sandbox, reason: str) -> Sandbox:
        started = time.monotonic()
        try:
            image = await self._runtime.checkpoint(sandbox.sandbox_id)
        except RuntimeFailure as failure:
            log.error("sandbox.suspend_failed", message=failure.message)
            await self._fail_if_ended(sandbox, failure)
            raise  # it runs on as it was
        now = self._clock()
        sandbox = await self._save(
            sandbox, SandboxState.SUSPENDED, reason=reason, checkpoint=image,
            checkpoint_identity=tuple(sorted(self._runtime.identity.items())),
            run_seconds=sandbox.run_seconds + now - (sandbox.running_since or now),
            running_since=None,
        )
        seconds = time.monotonic() - started
        self._metrics.sandbox_suspended(seconds)
        log.info("sandbox.suspended", reason=reason, ms=int(seconds * 1000))
        return sandbox

    async def _fail_if_ended(self, sandbox: Sandbox, failure: RuntimeFailure) -> None:
        """A checkpoint that fails half-way (a full disk) ends the sandbox: record it as
        failed, saying why, rather than let its supervisor call it an exit."""
        if sandbox.sandbox_id in await self._runtime.running_ids():
            return
        await self._runtime.destroy(sandbox.sandbox_id)
        await self._save(sandbox, SandboxState.FAILED, running_since=None,
                         reason=f"suspend failed and the sandbox ended: {failure.message}")
        raise RuntimeFailure(failure.message, public_message=(
            "the suspend failed and the sandbox has ended (a checkpoint that cannot be "
            "written ends it); it is now failed: its record says why, and it can only be deleted"
        )) from None

    async def restore(self, sandbox_id: str) -> Sandbox:
        async with self._lock(checked_sandbox_id(sandbox_id)):
            sandbox = await self._require(sandbox_id, SandboxState.SUSPENDED, "restore")
            async with self._admitted(sandbox):
                sandbox = await self._restore_locked(sandbox)
        return sandbox

    async def _restore_locked(self, sandbox: Sandbox) -> Sandbox:
        expected = dict(sandbox.checkpoint_identity)
        if expected != self._runtime.identity:
            raise CheckpointMismatch(
                f"the checkpoint was made with {_describe(expected)}, but this server "
                f"runs {_describe(self._runtime.identity)}; it cannot be restored here"
            )
        assert sandbox.checkpoint is not None
        started = time.monotonic()
        sink = self._outputs.sink(sandbox.sandbox_id, sandbox.limits.output_bytes)
        try:
            await self._runtime.restore(sandbox.spec(), sandbox.checkpoint, sink)
        except RuntimeFailure as failure:
            await self._save(sandbox, SandboxState.FAILED,
                             reason=f"restore failed: {failure.message}")
            raise RuntimeFailure(failure.message, public_message=(
                "the sandbox could not be restored (its checkpoint is unusable, or the runtime "
                "failed); it is now failed: its record says why, and it can only be deleted"
            )) from None
        await self._runtime.discard_checkpoint(sandbox.checkpoint)
        now = self._clock()
        sandbox = await self._save(sandbox, SandboxState.RUNNING, reason="restored",
                                   checkpoint=None, checkpoint_identity=(),
                                   running_since=now, last_activity_at=now)
        self._supervise(sandbox)
        seconds = time.monotonic() - started
        self._metrics.sandbox_restored(seconds)
        log.info("sandbox.restored", ms=int(seconds * 1000))
        return sandbox

    async def delete(self, sandbox_id: str, reason: str = "deleted on request") -> None:
        async with self._lock(checked_sandbox_id(sandbox_id)):
            await self._delete_locked(await self.get(sandbox_id), reason)

    async def _delete_locked(self, sandbox: Sandbox, reason: str) -> None:
        await self._runtime.destroy(sandbox.sandbox_id)
        await self._outputs.remove(sandbox.sandbox_id)
        await self._store.remove(sandbox.sandbox_id)
        self._capacity.release(sandbox.sandbox_id)
        self._locks.pop(sandbox.sandbox_id, None)
        log.info("sandbox.deleted", sandbox_id=sandbox.sandbox_id, reason=reason)

    # Supervision ----------------------------------------------------------------------

    def _supervise(self, sandbox: Sandbox) -> None:
        task = asyncio.create_task(self._watch(sandbox))
        self._supervisors[sandbox.sandbox_id] = task
        task.add_done_callback(lambda done: self._forget_supervisor(sandbox.sandbox_id, done))

    def _forget_supervisor(self, sandbox_id: str, task: asyncio.Task[None]) -> None:
        if self._supervisors.get(sandbox_id) is task:
            del self._supervisors[sandbox_id]

    async def _watch(self, sandbox: Sandbox) -> None:
        """Wait for the sandbox's init to end; record how, unless it was suspended or deleted.
        A detached script's time limit counts only the time it ran (not while suspended)."""
        budget = None
        if sandbox.kind is SandboxKind.SCRIPT:
            budget = max(sandbox.limits.timeout_s - sandbox.run_seconds, 0.0)
        timed_out = False
        try:
            async with asyncio.timeout(budget):
                outcome = await self._runtime.wait(sandbox.sandbox_id)
        except TimeoutError:
            timed_out = True
        async with self._lock(sandbox.sandbox_id):
            current = await self._store.get(sandbox.sandbox_id)
            if current is None or current.state is not SandboxState.RUNNING:
                return
            if current.running_since != sandbox.running_since:
                return  # a later run of the same sandbox has its own supervisor
            await self._runtime.destroy(sandbox.sandbox_id)
            now = self._clock()
            if not timed_out and outcome.failure is not None:
                log.error("sandbox.runtime_failed", sandbox_id=sandbox.sandbox_id,
                          detail=outcome.failure)
                await self._save(current, SandboxState.FAILED, running_since=None,
                                 reason="failed: the sandbox's agent stopped answering")
                return
            if timed_out:
                exit_code, reason = None, f"timed out after {sandbox.limits.timeout_s:g} s"
            elif outcome.oom_killed:
                exit_code, reason = outcome.exit_code, "killed: out of memory"
            else:
                exit_code, reason = outcome.exit_code, f"exited with code {outcome.exit_code}"
            await self._save(current, SandboxState.EXITED, exit_code=exit_code, reason=reason,
                             run_seconds=current.run_seconds + now - (current.running_since or now),
                             running_since=None)
        log.info("sandbox.exited", sandbox_id=sandbox.sandbox_id, exit_code=exit_code,
                 reason=reason)

    # Timers and start-up --------------------------------------------------------------

    async def reap(self) -> None:
        """Suspend idle sessions; delete what outlived its retention. Logs every why."""
        now = self._clock()
        for listed in await self._store.list():
            try:
                async with self._lock(listed.sandbox_id):
                    # Re-read: since the list was taken it may have been used or restored.
                    sandbox = await self._store.get(listed.sandbox_id)
                    if sandbox is not None:
                        await self._reap_locked(sandbox, now)
            except Exception:
                log.exception("sandbox.reap_failed", sandbox_id=listed.sandbox_id)

    async def _reap_locked(self, sandbox: Sandbox, now: float) -> None:
        idle_for = now - sandbox.last_activity_at
        if (sandbox.state is SandboxState.RUNNING and sandbox.idle_timeout_s is not None
                and idle_for > sandbox.idle_timeout_s and not self._execs[sandbox.sandbox_id]):
            await self._suspend_locked(
                sandbox, f"suspended after {sandbox.idle_timeout_s:g} s idle"
            )
            return
        retention = (self._policy.suspended_retention_s
                     if sandbox.state is SandboxState.SUSPENDED else self._policy.retention_s)
        ended = sandbox.state in (SandboxState.EXITED, SandboxState.FAILED,
                                  SandboxState.SUSPENDED)
        if ended and now - sandbox.updated_at > retention:
            await self._delete_locked(
                sandbox, reason=f"{sandbox.state.value} for longer than {retention:g} s"
            )

    async def reconcile(self) -> None:
        """Make the store and the host agree after a start: nothing unknown left on the host,
        no record that claims a state the host does not have."""
        records = {sandbox.sandbox_id: sandbox for sandbox in await self._store.list()}
        running = await self._runtime.running_ids()
        for sandbox in records.values():
            await self._reconcile_one(sandbox, sandbox.sandbox_id in running)
        for sandbox_id in await self._runtime.leftover_ids() - set(records):
            log.warning("sandbox.orphan_removed", sandbox_id=sandbox_id)
            await self._runtime.destroy(sandbox_id)
        for sandbox_id in await self._outputs.ids() - set(records):
            await self._outputs.remove(sandbox_id)

    async def _reconcile_one(self, sandbox: Sandbox, running: bool) -> None:
        sandbox_id = sandbox.sandbox_id
        if sandbox.state is SandboxState.SUSPENDED:
            return
        if sandbox.state in (SandboxState.EXITED, SandboxState.FAILED):
            await self._runtime.destroy(sandbox_id)
            return
        if sandbox.state is SandboxState.RUNNING and sandbox.kind is SandboxKind.SESSION \
                and running:
            # A session holds nothing but its files and processes: keep them on disk.
            with contextlib.suppress(RuntimeFailure):
                await self._suspend_locked(sandbox, "suspended when the server restarted")
                return
            if (await self.get(sandbox_id)).state is SandboxState.FAILED:
                return  # the failed suspend ended it, and its record says so
        await self._runtime.destroy(sandbox_id)
        reason = ("ended: the server restarted while it ran (its output so far is kept)"
                  if running else "ended: it was not running when the server restarted")
        state = SandboxState.EXITED if sandbox.state is SandboxState.RUNNING \
            else SandboxState.FAILED
        await self._save(sandbox, state, reason=reason, running_since=None)
        log.warning("sandbox.reconciled", sandbox_id=sandbox_id, reason=reason)

    async def close(self) -> None:
        """On shutdown, suspend what runs (within the grace period) so that a restart loses
        nothing; whatever could not be suspended is left to the next start's reconcile."""
        if self._policy.suspend_on_shutdown:
            try:
                async with asyncio.timeout(self._policy.shutdown_grace_s):
                    await self._suspend_all("suspended when the server stopped")
            except TimeoutError:
                log.warning("sandbox.shutdown_grace_expired")
        for task in list(self._supervisors.values()):
            task.cancel()
        for task in list(self._supervisors.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _suspend_all(self, reason: str) -> None:
        for sandbox in await self._store.list(SandboxState.RUNNING):
            async with self._lock(sandbox.sandbox_id):
                current = await self._store.get(sandbox.sandbox_id)
                if current is None or current.state is not SandboxState.RUNNING:
                    continue
                try:
                    await self._suspend_locked(current, reason)
                except RuntimeFailure:
                    log.warning("sandbox.shutdown_suspend_failed",
                                sandbox_id=sandbox.sandbox_id)

    # Helpers --------------------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def _require(self, sandbox_id: str, state: SandboxState, verb: str) -> Sandbox:
        sandbox = await self.get(sandbox_id)
        if sandbox.state is not state:
            raise InvalidState(
                f"cannot {verb} a sandbox that is {sandbox.state.value} (it must be "
                f"{state.value})"
            )
        return sandbox

    async def _touch(self, sandbox: Sandbox) -> Sandbox:
        touched = dataclasses.replace(sandbox, last_activity_at=self._clock())
        await self._store.save(touched)
        return touched

    async def _save(self, sandbox: Sandbox, state: SandboxState, **changes: object) -> Sandbox:
        if state is not sandbox.state and not can_move(sandbox.state, state):
            raise InvalidState(f"a {sandbox.state.value} sandbox cannot become {state.value}")
        updated = dataclasses.replace(sandbox, state=state, updated_at=self._clock(),
                                      **changes)  # type: ignore[arg-type]
        await self._store.save(updated)
        if state not in (SandboxState.CREATING, SandboxState.RUNNING):
            self._capacity.release(sandbox.sandbox_id)  # it no longer runs: its memory is free
        return updated


def _describe(identity: dict[str, str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(identity.items())) or "nothing"


class _IncrementalText:
    """Turns growing stored bytes into text, holding back a split multi-byte character."""

    def __init__(self) -> None:
        self.offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: StoredOutput) -> str:
        self.offset += len(chunk.data)
        return self._decoder.decode(chunk.data)
