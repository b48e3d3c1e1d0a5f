"""The ports the use cases speak to. Adapters implement them; the fakes live in adapters/."""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.domain.cells import CellError, CellLimits, CellOutcome, CellResult, CodeContext
from sandbox.domain.model import (
    FileEntry,
    Language,
    Outcome,
    Program,
    Sandbox,
    SandboxSpec,
    SandboxState,
    Stream,
    Template,
)

if TYPE_CHECKING:
    from sandbox.domain.packages import RequirementSet


class OutputSink(abc.ABC):
    """Receives a sandbox's output as raw bytes, in the order it was read."""

    @abc.abstractmethod
    async def write(self, stream: Stream, data: bytes) -> None: ...


class CellSink(abc.ABC):
    """Receives what a cell makes, in the order it was made: output as raw bytes per stream,
    results (MIME bundles) and the exception the cell ended with. `started` comes first, once
    the runtime has taken the cell (its context exists and runs no other cell)."""

    @abc.abstractmethod
    async def started(self) -> None: ...

    @abc.abstractmethod
    async def output(self, stream: Stream, data: bytes) -> None: ...

    @abc.abstractmethod
    async def result(self, result: CellResult) -> None: ...

    @abc.abstractmethod
    async def error(self, error: CellError) -> None: ...


# The most a file transfer holds of a file at once, per step: files move in chunks of at most
# this size, so a transfer's memory stays a few chunks whatever the file's size.
FILE_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class OpenedFile:
    """A file being read out of a sandbox: its size, known before its first byte, then its
    bytes, exactly `size` of them, in chunks of at most FILE_CHUNK_BYTES. The iterator raises
    if the sandbox gives fewer (a SandboxError), so a cut transfer is never taken for a whole
    one."""

    size: int
    chunks: AsyncIterator[bytes]


class SandboxRuntime(abc.ABC):
    """Creates and runs isolated sandboxes.

    Contract, for every implementation:
    - the program never runs on the host, and a sandbox sees nothing of the host's files,
      network or processes;
    - `run` creates a sandbox whose init is the program, delivers all its output to the sink
      (reading on while the sink discards, so a flood never blocks the script), ends it after
      `limits.timeout_s` (the verdict `timed_out` comes from the runtime's own timer), reports
      an out-of-memory kill from its own accounting, and leaves no container, process or file
      behind, whatever happens, cancellation included;
    - `RuntimeFailure` is raised only when the runtime itself breaks, never for a failing script.
    """

    @abc.abstractmethod
    async def run(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> Outcome: ...

    @abc.abstractmethod
    async def readiness(self) -> list[str]:
        """Problems that stop the runtime from running sandboxes now; empty when ready."""

    @abc.abstractmethod
    def limit_layers(self) -> dict[str, list[str]]:
        """Which layers hold each limit on this host, strongest first (e.g. "memory":
        ["cgroup"], "cpu": []): an empty list means the limit is not held here."""

    @property
    @abc.abstractmethod
    def identity(self) -> dict[str, str]:
        """What a checkpoint depends on (runtime version, rootfs identity)."""

    # Long-lived sandboxes. `launch` returns once the sandbox runs; its output flows to the
    # sink until it ends or is checkpointed, and `wait` tells how it ended.

    @abc.abstractmethod
    async def launch(self, spec: SandboxSpec, program: Program, sink: OutputSink) -> None: ...

    @abc.abstractmethod
    async def wait(self, sandbox_id: str) -> Outcome:
        """Until the sandbox's init ends. exit_code is None when it did not end by itself
        (checkpointed, destroyed)."""

    @abc.abstractmethod
    async def exec(
        self, sandbox_id: str, program: Program, sink: OutputSink, stdin: bytes, timeout_s: float
    ) -> Outcome:
        """Run a program in a running sandbox. On timeout that program is killed; the
        sandbox lives on."""

    @abc.abstractmethod
    async def checkpoint(self, sandbox_id: str) -> str:
        """Save the sandbox (memory and all) and end it; return where the image is.

        On a RuntimeFailure no part of the image is left, and the sandbox either runs on or
        has ended (runsc ends it when the image cannot be written, on a full disk):
        `running_ids` tells which."""

    @abc.abstractmethod
    async def snapshot(self, sandbox_id: str, image: str) -> int:
        """Save the running sandbox's state (memory and all) into the empty folder `image`
        while it runs on; return the image's size in bytes. Egress connections open at that
        moment are closed (a network interruption), as at a checkpoint.

        On a RuntimeFailure the image is unusable (the caller removes it), and the sandbox
        either runs on or has ended: `running_ids` tells which."""

    @abc.abstractmethod
    async def restore(self, spec: SandboxSpec, image: str, sink: OutputSink) -> None:
        """Bring a checkpointed sandbox back under `spec.sandbox_id` (its own id, or a new
        one: a snapshot's image restores many times, each a copy); its processes continue.
        The image is left as it was. Each restore is a new generation of the sandbox: its
        processes are told, and generators the runtime started are re-seeded, so that no
        two copies draw the same numbers."""

    @abc.abstractmethod
    async def discard_checkpoint(self, image: str) -> None: ...

    @abc.abstractmethod
    async def destroy(self, sandbox_id: str) -> None:
        """End the sandbox and remove everything it has on the host, its checkpoint
        included. Idempotent."""

    @abc.abstractmethod
    async def write_file(self, sandbox_id: str, path: str, chunks: AsyncIterable[bytes]) -> int:
        """Write a file inside a running sandbox from `chunks`, taken as they come (never all
        at once), as the sandbox's user; parents are made. Returns the file's size.

        The file appears whole or not at all: when `chunks` raises (too large, the client
        left) or the write fails, the exception propagates, nothing new is left at `path`
        and a file that was there is unchanged. Nothing is read from `chunks` before the
        sandbox is ready to take the file, so a path that cannot be written is refused
        before any of it arrives."""

    @abc.abstractmethod
    def read_file(
        self, sandbox_id: str, path: str, limit_bytes: int
    ) -> AbstractAsyncContextManager[OpenedFile]:
        """Open a file inside a running sandbox for reading, as the sandbox's user.

        Entering raises before any byte is read: FileNotFoundInSandbox, PayloadTooLarge for
        a file larger than limit_bytes, InvalidRequest for a folder or a file the user may
        not read. Leaving ends whatever reads the file in the sandbox, however it is left
        (read to the end, abandoned half-way, cancelled)."""

    @abc.abstractmethod
    async def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]: ...

    # Warm sandboxes (pools): started before any request, each runs one script and is then
    # destroyed by its owner.

    @abc.abstractmethod
    async def start_warm(
        self, spec: SandboxSpec, language: Language, preimport: tuple[str, ...]
    ) -> None:
        """Start a sandbox that will run one script of `language` as soon as it is given (for
        Python, an interpreter with the modules `preimport` imported, waiting); return once it
        is ready. On a failure, or when cancelled, nothing of it is left."""

    @abc.abstractmethod
    async def run_warm(
        self, sandbox_id: str, program: Program, sink: OutputSink, timeout_s: float
    ) -> Outcome:
        """Run the script in a sandbox `start_warm` made for its language, with what `run`
        promises a script in a new sandbox (the same output, exit code and verdicts; ended
        after `timeout_s`). The sandbox is spent afterwards; its owner destroys it."""

    # Code contexts: persistent interpreters, children of the sandbox's init, so that they
    # (and their variables) survive a checkpoint and restore of the sandbox.

    @abc.abstractmethod
    async def start_context(self, sandbox_id: str, context: CodeContext) -> None:
        """Start the context's interpreter in a running sandbox, as the sandbox user with the
        sandbox's environment; return once it takes cells. RuntimeFailure (saying why) when
        it cannot start; then nothing of it is left."""

    @abc.abstractmethod
    async def list_contexts(self, sandbox_id: str) -> list[CodeContext]:
        """The sandbox's contexts, oldest first, those restored with it included."""

    @abc.abstractmethod
    async def run_cell(
        self, sandbox_id: str, context_id: str, code: str, limits: CellLimits, sink: CellSink
    ) -> CellOutcome:
        """Run one cell; what it makes goes to `sink` as it comes (no more than
        `limits.output_bytes` + 1 per stream and, roughly, `limits.result_bytes` of results:
        the caller caps exactly). At `limits.timeout_s` the cell is interrupted, and when it
        does not stop within a grace period the interpreter is restarted. An interpreter that
        ends (before or during the cell) or breaks the protocol is restarted; the outcome
        says so. ContextNotFound for an unknown context, InvalidState while another cell runs
        in it."""

    @abc.abstractmethod
    async def interrupt_context(self, sandbox_id: str, context_id: str) -> None:
        """Interrupt the running cell (KeyboardInterrupt); nothing when none runs."""

    @abc.abstractmethod
    async def restart_context(self, sandbox_id: str, context_id: str) -> None:
        """End the context's interpreter (a running cell ends with it) and start it afresh."""

    @abc.abstractmethod
    async def stop_context(self, sandbox_id: str, context_id: str) -> None:
        """End the context's interpreter and forget the context."""

    @abc.abstractmethod
    async def running_ids(self) -> set[str]:
        """Ids of sandboxes whose init runs now."""

    @abc.abstractmethod
    async def leftover_ids(self) -> set[str]:
        """Ids with anything on the host (container, bundle, cgroup, checkpoint)."""


class SandboxStore(abc.ABC):
    """Durable records of managed sandboxes. Every write is atomic: a crash at any moment
    leaves each record either as it was or as it was written.

    A write given `fence` is made only while that lease is the sandbox's live lease (same
    token, not expired by the store's clock), checked and written in one transaction: an
    owner paused past its lease, or fenced out by a newer one, gets `LeaseLost` and has
    written nothing. The lease is held for the transaction, so a new owner's `acquire`
    waits for the write and sees it afterwards."""

    @abc.abstractmethod
    async def add(self, sandbox: Sandbox) -> None: ...

    @abc.abstractmethod
    async def get(self, sandbox_id: str) -> Sandbox | None: ...

    @abc.abstractmethod
    async def save(self, sandbox: Sandbox, fence: Lease | None = None) -> None: ...

    @abc.abstractmethod
    async def remove(self, sandbox_id: str, fence: Lease | None = None) -> None: ...

    @abc.abstractmethod
    async def list(self, state: SandboxState | None = None) -> list[Sandbox]: ...


class TemplateStore(abc.ABC):
    """Durable records of templates. Every write is atomic."""

    @abc.abstractmethod
    async def add(self, template: Template) -> None: ...

    @abc.abstractmethod
    async def get(self, template_id: str) -> Template | None: ...

    @abc.abstractmethod
    async def remove(self, template_id: str) -> None: ...

    @abc.abstractmethod
    async def list(self) -> list[Template]:
        """Oldest first."""


class TemplateImages(abc.ABC):
    """Where the images of templates (and of forks, while they start) live, by key.

    The runtime writes an image into the folder `prepare` gives; `publish` keeps it (a shared
    store would upload it here, with what makes it verifiable); `local` gives a folder on this
    host to restore from. A record names a published image only once it is complete, so an
    image without a record (a crash half-way) is collected (`keys`, `remove`)."""

    @abc.abstractmethod
    async def prepare(self, key: str) -> str:
        """An empty folder on this host, readable by the server's user alone, for an image
        of `key` (whatever it held before is gone)."""

    @abc.abstractmethod
    async def publish(self, key: str) -> None:
        """The image written at `prepare(key)` is complete: keep it under `key`."""

    @abc.abstractmethod
    async def local(self, key: str) -> str:
        """A folder on this host holding the image of `key` (published, or prepared here);
        RuntimeFailure when there is none."""

    @abc.abstractmethod
    async def remove(self, key: str) -> None:
        """Idempotent."""

    @abc.abstractmethod
    async def keys(self) -> set[str]:
        """Every key with anything kept."""


@dataclass(frozen=True)
class Lease:
    """One instance's tenure over one sandbox. `token` is the fence: it only grows per
    sandbox and is never given twice. `expires_at` is seconds since the epoch by the
    store's clock (the database's, never an instance's)."""

    sandbox_id: str
    owner: str
    token: int
    expires_at: float


class LeaseStore(abc.ABC):
    """Who runs each sandbox. Held in the same database as the records, so that fenced
    writes (`SandboxStore.save(..., fence=lease)`) check the lease in their transaction.

    Contract, for every implementation:
    - `acquire` gives a lease only when the sandbox has no live lease of another owner; each
      acquire is a new tenure with a new, larger token, even by the same owner (its older
      lease is fenced out), after a release, or after the lease row was removed;
    - a lease is live until `expires_at` by the store's clock and not after: an expired
      lease cannot be renewed or fence a write, even if no one took it yet; its owner must
      acquire anew;
    - `renew` extends a live lease by ttl_s from now; None once it is gone;
    - `release` ends a lease early; releasing a lease no longer live does nothing;
    - `expired` lists leases past their expiry that no one released or took over: the
      sandboxes of instances that stopped renewing (a sweeper acquires them to act)."""

    @abc.abstractmethod
    async def acquire(self, sandbox_id: str, owner: str, ttl_s: float) -> Lease | None: ...

    @abc.abstractmethod
    async def renew(self, lease: Lease, ttl_s: float) -> Lease | None: ...

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None: ...

    @abc.abstractmethod
    async def current(self, sandbox_id: str) -> Lease | None:
        """The sandbox's live lease, if any."""

    @abc.abstractmethod
    async def expired(self) -> list[Lease]:
        """Leases past their expiry, oldest expiry first."""


class HandoffState(enum.StrEnum):
    REQUESTED = "requested"
    RELEASED = "released"


@dataclass(frozen=True)
class HandoffRequest:
    """An instance asks the owner of a running sandbox to checkpoint it and let go.
    `requested_at` is seconds since the epoch by the store's clock."""

    sandbox_id: str
    requester: str
    requested_at: float
    state: HandoffState


class HandoffRequests(abc.ABC):
    """Durable handoff requests, at most one per sandbox, so concurrent requesters agree on
    one: the first recorded. Signals only wake the owner; these rows are the truth a
    woken (or polling) owner reads."""

    @abc.abstractmethod
    async def request(self, sandbox_id: str, requester: str) -> HandoffRequest:
        """Records a request unless the sandbox has one; returns the one it has now."""

    @abc.abstractmethod
    async def get(self, sandbox_id: str) -> HandoffRequest | None: ...

    @abc.abstractmethod
    async def pending(self) -> list[HandoffRequest]:
        """Requests in state `requested`, oldest first."""

    @abc.abstractmethod
    async def mark(self, sandbox_id: str, requester: str, state: HandoffState) -> bool:
        """Moves the sandbox's request to `state` if `requester` made it; False otherwise."""

    @abc.abstractmethod
    async def remove(self, sandbox_id: str, requester: str) -> None:
        """Forgets the sandbox's request if `requester` made it."""


@dataclass(frozen=True)
class Signal:
    """A wake-up on a channel. `missed` marks a gap: signals may have been lost before it
    (the subscription reconnected, or its reader fell behind), so the reader must re-read
    the durable rows the signals point at."""

    channel: str
    payload: str
    missed: bool = False


class Subscription(abc.ABC):
    """Signals of the channels subscribed to, as they arrive; close it when done."""

    def __aiter__(self) -> Subscription:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Signal: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Signals(abc.ABC):
    """Wake-ups between instances. Best effort: a signal is delivered to every subscription
    listening when it is published, at most once, and may be lost (a subscriber reconnecting
    gets a `missed` signal instead). Whoever waits on a signal also polls the durable rows it
    points at, at an interval, and on every `missed` signal.

    Channel names are lowercase letters, digits and `_`, starting with a letter, at most 63
    characters; payloads are text under 8000 bytes."""

    @abc.abstractmethod
    async def publish(self, channel: str, payload: str) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, *channels: str) -> Subscription:
        """Listening when it returns: every signal published afterwards is delivered."""


# The most one `OutputLog.read` returns; a reader wanting more reads on from its new offset.
OUTPUT_READ_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class StoredOutput:
    data: bytes
    truncated: bool
    size: int


class OutputLog(abc.ABC):
    """The output of detached scripts, kept (capped) where it survives a restart."""

    @abc.abstractmethod
    def sink(self, sandbox_id: str, limit_bytes: int) -> OutputSink:
        """A sink that appends to the sandbox's output, up to limit_bytes per stream."""

    @abc.abstractmethod
    async def read(self, sandbox_id: str, stream: Stream, offset: int = 0) -> StoredOutput:
        """At most OUTPUT_READ_LIMIT bytes from offset, with the stream's whole size."""

    @abc.abstractmethod
    async def remove(self, sandbox_id: str) -> None: ...

    @abc.abstractmethod
    async def ids(self) -> set[str]:
        """Sandboxes with output kept."""


class PackageInstaller(abc.ABC):
    """Installs a checked requirement set into a folder that sandboxes mount read-only.

    Contract, for every implementation:
    - wheels only: no code of any package runs on the host;
    - every package the set resolves to, dependencies included, is allowed by the server's
      package policy, checked before anything is installed (`PackageResolutionFailed`
      naming the one refused);
    - sets that resolve to the same releases share one folder, built once however many ask
      for it at once; a set already built is returned without resolving it again;
    - a folder returned is complete, and a failed build leaves nothing behind;
    - `PackageResolutionFailed` says why a set cannot be installed (pip's own reason);
      `AtCapacity` when too many builds are already waiting.
    """

    @abc.abstractmethod
    async def layer_for(self, requirements: RequirementSet) -> str:
        """A host folder holding the set, importable when put on PYTHONPATH."""

    @abc.abstractmethod
    async def pins_of(self, layer: str) -> tuple[str, ...] | None:
        """The releases (`name==version`, sorted) in a folder `layer_for` gave; None when
        they are not known (a folder made before they were kept)."""

    @abc.abstractmethod
    async def layer_of(self, pins: tuple[str, ...]) -> str:
        """A folder holding exactly these releases: the same one, by the same key, that a set
        resolving to them gets on any instance with the same settings. Installed without
        resolving when missing here (a sandbox restored on another instance needs the very
        releases it was started with). The policy holds; errors as for `layer_for`."""

    @abc.abstractmethod
    async def readiness(self) -> list[str]:
        """Problems that stop the installer from installing now; empty when ready."""
