"""`EgressProxy`: one listener per sandbox with an allow-list, on a Unix socket in a folder
that is bind-mounted into that sandbox alone; the sandbox's relay connects there.

Lifecycle: `open` before the sandbox starts (or is restored), `interrupt` before it is
checkpointed (gVisor cannot checkpoint an open host-socket connection), `close` when it is
checkpointed or destroyed. Every connection is logged (`egress.connection`) and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import structlog

from sandbox.adapters.egress.allowance import Allowance, EgressLimits
from sandbox.adapters.egress.exchange import Context, exchange
from sandbox.adapters.egress.outcome import STATUS, Cut, Refused, Report
from sandbox.adapters.egress.resolver import Resolver
from sandbox.adapters.egress.streams import CHUNK
from sandbox.domain.egress import EgressPolicy
from sandbox.domain.metrics import Metrics, NoMetrics

log = structlog.get_logger(__name__)

SOCKET_NAME = "proxy.sock"
BACKLOG = 64
REFUSAL_WRITE_S = 1.0
# Refusals by a cap are logged this many a second per sandbox; the rest are counted only.
LOGGED_REFUSALS_PER_S = 20


@dataclass
class _Listener:
    sandbox_id: str
    folder: Path
    context: Context
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    logged_second: int = 0
    logged: int = 0
    unlogged: int = 0


class EgressProxy:
    def __init__(
        self,
        limits: EgressLimits,
        resolver: Resolver,
        metrics: Metrics | None = None,
        operator: EgressPolicy | None = None,
    ) -> None:
        """`operator`: the server's own list, held at every connection besides the
        sandbox's (which was within it when asked for, but the server's may have shrunk)."""
        self._limits = limits
        self._resolver = resolver
        self._metrics = metrics or NoMetrics()
        self._operator = operator
        self._listeners: dict[str, _Listener] = {}

    def listening(self) -> set[str]:
        return set(self._listeners)

    def connections(self, sandbox_id: str) -> int:
        listener = self._listeners.get(sandbox_id)
        return 0 if listener is None else len(listener.tasks)

    async def open(self, sandbox_id: str, policy: EgressPolicy, folder: Path, owner: int) -> None:
        """Listen for the sandbox at `folder/proxy.sock`, which only `owner` (the relay's
        user inside) may use. A new sandbox run gets a fresh allowance."""
        await self.close(sandbox_id)
        listener = _Listener(sandbox_id, folder, Context(
            policy, self._resolver, self._limits, Allowance(self._limits), self._operator))
        sock = _bound_socket(folder, owner)
        try:
            listener.server = await asyncio.start_unix_server(
                lambda reader, writer: self._serve(listener, reader, writer),
                sock=sock, backlog=BACKLOG)
        except BaseException:
            sock.close()
            _unlink(folder)
            raise
        self._listeners[sandbox_id] = listener
        log.info("egress.listening", sandbox_id=sandbox_id, allow=list(policy.entries))

    async def interrupt(self, sandbox_id: str) -> None:
        """End the sandbox's open connections (before a checkpoint: a network
        interruption); it may connect again afterwards."""
        listener = self._listeners.get(sandbox_id)
        if listener is not None:
            await _end_connections(listener)

    async def close(self, sandbox_id: str) -> None:
        """Stop listening, end the connections, remove the socket. Idempotent."""
        listener = self._listeners.pop(sandbox_id, None)
        if listener is None:
            return
        if listener.server is not None:
            listener.server.close()
        await _end_connections(listener)
        if listener.server is not None:
            await listener.server.wait_closed()
        _unlink(listener.folder)

    async def close_all(self) -> None:
        for sandbox_id in list(self._listeners):
            await self.close(sandbox_id)

    async def _serve(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """The server's task for one connection. The work runs in a task of its own, which
        `interrupt` cancels: a cancelled server task makes asyncio (3.11) log a false error."""
        work = asyncio.create_task(self._relay(listener, reader, writer))
        listener.tasks.add(work)
        work.add_done_callback(listener.tasks.discard)
        try:
            await asyncio.wait({work})
        finally:
            work.cancel()  # a no-op unless the server's task itself is being cancelled

    async def _relay(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        report = Report(listener.sandbox_id)
        allowance = listener.context.allowance
        admitted = False
        try:
            allowance.admit()
            admitted = True
            async with asyncio.timeout(self._limits.total_timeout_s):
                await exchange(reader, writer, listener.context, report)
        except Refused as refused:
            report.verdict, report.reason = refused.verdict, refused.reason
            if report.received == 0:
                await _answer(reader, writer, refused)
        except Cut as cut:
            report.verdict, report.reason = cut.verdict, cut.reason
        except TimeoutError:
            report.verdict = "cut_timeout"
            report.reason = f"open for {self._limits.total_timeout_s:g} s, the most allowed"
        except asyncio.CancelledError:
            report.verdict, report.reason = "cut_interrupted", "suspended or deleted"
            raise
        except OSError as error:
            report.reason = f"ended by a peer: {error.strerror or error}"
        except Exception as error:  # a bug here must end this connection only
            log.exception("egress.failed", sandbox_id=listener.sandbox_id)
            report.verdict, report.reason = "failed_proxy", repr(error)[:200]
        finally:
            if admitted:
                allowance.release()
            writer.close()
            self._record(listener, report)

    def _record(self, listener: _Listener, report: Report) -> None:
        seconds = report.seconds
        self._metrics.egress_connection(report.verdict, report.sent, report.received, seconds)
        if report.verdict == "refused_limit" and not _may_log(listener):
            return
        event = log.info if report.verdict == "relayed" else log.warning
        event("egress.connection", sandbox_id=report.sandbox_id, host=report.host,
              port=report.port, address=report.address, sent=report.sent,
              received=report.received, duration_ms=int(seconds * 1000),
              verdict=report.verdict, reason=report.reason,
              **({"unlogged_refusals": listener.unlogged} if listener.unlogged else {}))
        listener.unlogged = 0


async def _end_connections(listener: _Listener) -> None:
    tasks = list(listener.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _may_log(listener: _Listener) -> bool:
    second = int(time.monotonic())
    if second != listener.logged_second:
        listener.logged_second, listener.logged = second, 0
    listener.logged += 1
    if listener.logged > LOGGED_REFUSALS_PER_S:
        listener.unlogged += 1
        return False
    return True


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refused: Refused
) -> None:
    """Send the refusal, then read what the client still sends until it closes (briefly):
    closing on unread bytes would reset the connection before the client read why."""
    with contextlib.suppress(OSError, TimeoutError, RuntimeError):
        async with asyncio.timeout(REFUSAL_WRITE_S):
            writer.write(refusal_response(refused))
            await writer.drain()
            writer.write_eof()
            while await reader.read(CHUNK):
                pass


def refusal_response(refused: Refused) -> bytes:
    """An answer a client shows: the reason in the status line (Python's http.client puts
    it into its tunnel error), in the body, and in an RFC 9209 Proxy-Status header."""
    status = HTTPStatus(refused.status)
    reason = "".join(char if " " <= char <= "~" else "?" for char in refused.reason)
    body = f"sandbox egress proxy: {reason}\n".encode()
    error_type = STATUS.get(refused.verdict, (0, "destination_unavailable"))[1]
    details = reason.replace("\\", "\\\\").replace('"', '\\"')
    head = (f"HTTP/1.1 {status.value} {status.phrase}: {reason[:200]}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f'Proxy-Status: sandbox-egress; error={error_type}; details="{details}"\r\n'
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


def _bound_socket(folder: Path, owner: int) -> socket.socket:
    """A listening socket at `folder/proxy.sock`, mode 0600, owned by `owner`. Bound through
    the folder's descriptor: a state folder's path can pass the 108 bytes a socket's allows."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_NAME, dir_fd=descriptor)
        sock.bind(f"/proc/self/fd/{descriptor}/{SOCKET_NAME}")
        os.chmod(SOCKET_NAME, 0o600, dir_fd=descriptor)
        os.chown(SOCKET_NAME, owner, owner, dir_fd=descriptor)
        os.fchown(descriptor, owner, owner)
        os.fchmod(descriptor, 0o700)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(descriptor)
    sock.setblocking(False)
    return sock


def _unlink(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        (folder / SOCKET_NAME).unlink()
