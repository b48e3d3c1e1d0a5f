"""The init of every managed sandbox: starts processes as the sandbox user, moves their output,
their exits and files to and from the service, over frames on its stdin (from the service)
and its stdout (to the service).

It runs inside the sandbox, within the tenant's reach, so the service trusts none of what it
sends (`sandbox/adapters/runsc/agent_channel.py` checks every frame). It imports builtins
only: inside gVisor `json` costs 27 ms to import, `subprocess` 67 ms, `asyncio` over 90 ms.

Frames: `>I` length of the rest, then the body. From the service, the body is
`marshal.dumps((op, tag, args))`. To the service, it is `>BI` (kind, tag), then the kind's
payload (see the `*_PAYLOAD` structs). Output and downloads flow only within the credit the
service granted per tag; `pause` makes the agent fall silent before a checkpoint, and
`resume` (after a restore) makes it say which processes still run, after a sync marker the
service finds even if a checkpoint cut a frame in half.
"""

from __future__ import annotations

import _posixsubprocess
import _signal  # type: ignore[import-not-found]  # `signal` would import enum: 16 ms here
import _socket  # `socket` would import enum and selectors
import marshal
import os
import select
import struct
import sys
import time

TYPE_CHECKING = False  # `typing` itself costs an import of `re`
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")

VERSION = 1
SANDBOX_UID = 1000
SANDBOX_GID = 1000
# The egress relay's own user (and group): the only one who may open the proxy's socket.
RELAY_UID = 999
LENGTH = struct.Struct(">I")
REPLY = struct.Struct(">BI")
STARTED_PAYLOAD = struct.Struct(">q")
OUT_PAYLOAD = struct.Struct(">B")
EXIT_PAYLOAD = struct.Struct(">Bi")
ERROR_PAYLOAD = struct.Struct(">H")
DONE_PAYLOAD = struct.Struct(">Q")
STAT_PAYLOAD = struct.Struct(">BQd")
ENTRY_PAYLOAD = struct.Struct(">BQdH")
# A live process: its tag, pid and the length of its label, then the label.
PROC_PAYLOAD = struct.Struct(">IqB")
# What a session's zygote says (it runs as the sandbox user: decoded, never unmarshalled).
ZYGOTE_MESSAGE = struct.Struct(">Bqq")
ZYGOTE_STARTED, ZYGOTE_FAILED, ZYGOTE_EXITED = 1, 2, 3
SYNC = b"\x00\xffgvisor-sandbox-agent-sync:"

# What the agent sends.
HELLO, STARTED, OUT, EXIT, ERROR, DATA, DONE, ENTRIES, PAUSED, PROCS, STAT = range(1, 12)
STDOUT, STDERR = 1, 2
EXITED, SIGNALLED = 0, 1
FILE, DIRECTORY, LINK, OTHER = 0, 1, 2, 3
# Errors of the agent's own, beyond errno values.
UNKNOWN_TAG, BAD_REQUEST, TOO_MANY, NOT_REGULAR = 1001, 1002, 1003, 1004

MAX_REQUEST = 4 * 1024 * 1024
MAX_FRAME = 1024 * 1024
CHUNK = 64 * 1024
MAX_MESSAGE = 1000
# What the service may tag a process with, told back after a restore (a code context's id).
MAX_LABEL = 200
# Output queued for the service beyond which children are not read until it drains.
HIGH_WATER = 1024 * 1024
# After a process ends, its pipes normally close at once; a daemon it left may hold them.
DRAIN_GRACE_S = 0.3
# ... unless the service has granted no credit to read them: then it may be slow, not done.
STARVED_GRACE_S = 10.0
# gVisor signals a group one member at a time: children forked meanwhile survive one kill.
GROUP_KILL_ROUNDS = 100
KILL_ROUND_S = 0.01
# After the service's end of stdin closed (the server died), look for a new one (a restore).
REATTACH_POLL_S = 1.0
# How long the egress relay may take to start, and to close its connections for a pause
# (within the service's wait for the agent's answer).
RELAY_START_S = 10.0
RELAY_PAUSE_S = 2.0


class Proc:
    def __init__(self, tag: int, pid: int, pipes: dict[int, int], stdin: int, credit: int,
                 control: int) -> None:
        self.tag = tag
        self.pid = pid
        self.pipes = pipes  # our read end -> STDOUT or STDERR
        self.stdin = stdin  # our write end of its stdin, or -1
        self.stdin_queue = bytearray()
        self.stdin_closing = False
        self.credit = credit
        self.control = control  # our write end of its control pipe (a warm runner), or -1
        # The sandbox's last process (a warm sandbox's script): when it ends, every other
        # process ends too, as when the init of a sandbox ends.
        self.last = False
        self.status: int | None = None
        self.ended_at = 0.0
        self.forked = False  # a child of the zygote, whose exit the zygote reports
        self.label = b""  # the service's name for it, told back by `procs`


class Download:
    def __init__(self, tag: int, fd: int, limit: int, credit: int) -> None:
        self.tag = tag
        self.fd = fd
        self.limit = limit
        self.credit = credit
        self.sent = 0


class Pipes:
    """A new process's stdin, stdout and stderr (and a control pipe for a warm runner): our
    ends, and theirs, which are closed once the process holds them."""

    def __init__(self, stdin: bool, control: bool) -> None:
        self.ours: list[int] = []
        self.theirs: list[int] = []
        self.stdin = self.control = -1
        self.keep: tuple[int, ...] = ()
        try:
            self.out, their_out = self.pair()
            self.err, their_err = self.pair()
            if stdin:
                their_in, self.stdin = self.pair(reader_ours=False)
            else:
                their_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                self.theirs.append(their_in)
            if control:
                their_control, self.control = self.pair(reader_ours=False)
                os.set_inheritable(their_control, True)
                self.keep = (their_control,)
        except OSError:
            self.close_ours()
            self.close_theirs()
            raise
        self.child = (their_in, their_out, their_err)

    def pair(self, reader_ours: bool = True) -> tuple[int, int]:
        # Made as the sandbox user, so that the process may reopen them (/dev/stdout), as it
        # may the pipes of a script that is the sandbox's init.
        read, write = as_user(os.pipe)
        mine, other = (read, write) if reader_ours else (write, read)
        self.ours.append(mine)
        self.theirs.append(other)
        return read, write

    def close_theirs(self) -> None:
        for fd in self.theirs:
            os.close(fd)
        self.theirs = []

    def close_ours(self) -> None:
        for fd in self.ours:
            os.close(fd)
        self.ours = []


class Zygote:
    def __init__(self, pid: int, channel: _socket.socket) -> None:
        self.pid = pid
        self.channel = channel
        self.requests = 0
        # Spawns it was asked for and has not answered: request -> (tag, args, pipes).
        self.pending: dict[int, tuple[int, dict[str, object], Pipes]] = {}


class Agent:
    def __init__(self) -> None:
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.procs: dict[int, Proc] = {}
        self.by_pid: dict[int, Proc] = {}
        self.downloads: dict[int, Download] = {}
        self.uploads: dict[int, tuple[int, str, str]] = {}  # tag -> (fd, part, path)
        self.paused = False
        # Rounds left of killing every other process (the sandbox's last process ended);
        # one per turn of the loop, which reaps them in between.
        self.killing_all = 0
        self.relay: Relay | None = None  # the egress relay, in sandboxes with an allow-list
        self.detached = False  # the service's pipes are gone (it died); wait for a restore
        self.zygote: Zygote | None = None
        # Process groups never signalled for a request: the agent's own, and those of the
        # root helpers it runs. (A zygote, in the tenant's reach, could name any pid.)
        self.protected = {os.getpid()}
        self.killing: set[int] = set()  # groups being killed until they are empty
        self.reattach_at = 0.0
        self.wake_read, wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(wake_write, False)
        _signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        _signal.signal(_signal.SIGCHLD, _ignore)
        os.set_blocking(0, False)
        os.set_blocking(1, False)

    # Sending ----------------------------------------------------------------------------

    def send(self, kind: int, tag: int, payload: bytes = b"") -> None:
        if self.detached:
            return
        body = REPLY.pack(kind, tag) + payload
        self.outbox += LENGTH.pack(len(body)) + body

    def fail(self, tag: int, code: int, message: str) -> None:
        text = message.encode("utf-8", "replace")[:MAX_MESSAGE]
        self.send(ERROR, tag, ERROR_PAYLOAD.pack(min(code, 65535)) + text)

    def fail_os(self, tag: int, error: OSError) -> None:
        self.fail(tag, error.errno or BAD_REQUEST, error.strerror or "failed")

    def flush(self) -> None:
        while self.outbox:
            try:
                written = os.write(1, self.outbox[:CHUNK])
            except BlockingIOError:
                return
            except OSError:
                self.detach()
                return
            del self.outbox[:written]

    def detach(self) -> None:
        """The service is gone. Children run on; a restore will bring new pipes."""
        self.detached = True
        self.outbox.clear()
        self.inbox.clear()
        self.reattach_at = time.monotonic() + REATTACH_POLL_S

    # Receiving --------------------------------------------------------------------------

    def receive(self) -> None:
        try:
            data = os.read(0, MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if not self.detached:
                self.detach()
            else:
                self.reattach_at = time.monotonic() + REATTACH_POLL_S
            return
        if self.detached:
            self.detached = False  # restored: new pipes; the service will send `resume`
        self.inbox += data
        while len(self.inbox) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self.inbox)
            if length > MAX_REQUEST:
                sys.stderr.write("agent: oversized request, closing\n")
                os._exit(70)
            if len(self.inbox) < LENGTH.size + length:
                return
            body = bytes(self.inbox[LENGTH.size:LENGTH.size + length])
            del self.inbox[:LENGTH.size + length]
            op, tag, args = marshal.loads(body)
            self.handle(op, tag, args)

    def handle(self, op: str, tag: int, args: dict[str, object]) -> None:
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            self.fail(tag, BAD_REQUEST, "unknown operation " + op)
            return
        try:
            handler(tag, args)
        except OSError as error:
            self.fail_os(tag, error)
        except (KeyError, TypeError, ValueError) as error:
            self.fail(tag, BAD_REQUEST, repr(error))

    # Processes --------------------------------------------------------------------------

    def op_spawn(self, tag: int, args: dict[str, object]) -> None:
        if tag in self.procs or any(tag == pending[0] for pending in self.pending_forks()):
            self.fail(tag, BAD_REQUEST, "tag in use")
            return
        pipes = Pipes(bool(args.get("stdin")), bool(args.get("control")))
        if args.get("zygote") and self.zygote is not None and not args.get("control"):
            self.ask_zygote(self.zygote, tag, args, pipes)
        else:
            self.start(tag, args, pipes)

    def start(self, tag: int, args: dict[str, object], pipes: Pipes) -> None:
        argv = [os.fsencode(str(arg)) for arg in args["argv"]]  # type: ignore[attr-defined]
        env = [bytes(item) for item in args["env"]]  # type: ignore[attr-defined]
        if pipes.keep:
            env.append(b"SANDBOX_CONTROL_FD=%d" % pipes.keep[0])
        try:
            pid = spawn(argv, env, str(args["cwd"]), *pipes.child, pipes.keep)
        except OSError:
            pipes.close_ours()
            raise
        finally:
            pipes.close_theirs()
        self.track(tag, pid, pipes, int(args.get("credit", 0)))  # type: ignore[call-overload]
        self.procs[tag].last = bool(args.get("last"))
        self.procs[tag].label = bytes(args.get("label", b""))[:MAX_LABEL]  # type: ignore[call-overload]

    def track(self, tag: int, pid: int, pipes: Pipes, credit: int) -> None:
        for fd in pipes.ours:
            os.set_blocking(fd, False)
        proc = Proc(tag, pid, {pipes.out: STDOUT, pipes.err: STDERR}, pipes.stdin, credit,
                    pipes.control)
        self.procs[tag] = proc
        self.by_pid[pid] = proc
        self.send(STARTED, tag, STARTED_PAYLOAD.pack(pid))

    # A session's zygote: Python execs forked from an interpreter already started ----------

    def op_zygote(self, tag: int, args: dict[str, object]) -> None:
        if self.zygote is None:
            ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            try:
                os.set_inheritable(theirs.fileno(), True)
                env = [bytes(item) for item in args["env"]]  # type: ignore[attr-defined]
                env.append(b"SANDBOX_ZYGOTE_FD=%d" % theirs.fileno())
                null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                try:
                    argv = [os.fsencode(str(arg)) for arg in args["argv"]]  # type: ignore[attr-defined]
                    pid = spawn(argv, env, str(args["cwd"]), null, null, null, (theirs.fileno(),))
                finally:
                    os.close(null)
            except OSError:
                ours.close()
                raise
            finally:
                theirs.close()
            ours.setblocking(False)
            self.zygote = Zygote(pid, ours)
        self.send(DONE, tag, DONE_PAYLOAD.pack(self.zygote.pid))

    def pending_forks(self) -> list[tuple[int, dict[str, object], Pipes]]:
        return list(self.zygote.pending.values()) if self.zygote is not None else []

    def ask_zygote(self, zygote: Zygote, tag: int, args: dict[str, object], pipes: Pipes) -> None:
        zygote.requests += 1
        request = marshal.dumps({"id": zygote.requests, "path": str(args["script"]),
                                 "argv": [str(args["script"])], "cwd": str(args["cwd"])})
        rights = struct.pack("3i", *pipes.child)
        try:
            zygote.channel.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        except OSError:
            self.drop_zygote("it does not take requests")
            self.start(tag, args, pipes)
            return
        zygote.pending[zygote.requests] = (tag, args, pipes)

    def on_zygote(self, zygote: Zygote) -> None:
        try:
            message = zygote.channel.recv(ZYGOTE_MESSAGE.size + 1)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if len(message) != ZYGOTE_MESSAGE.size:
            self.drop_zygote("it ended or said something malformed")
            return
        kind, first, second = ZYGOTE_MESSAGE.unpack(message)
        if kind == ZYGOTE_EXITED:
            proc = self.by_pid.get(first)
            if proc is not None and proc.forked:
                del self.by_pid[first]
                proc.status = second
                proc.ended_at = time.monotonic()
            return
        pending = zygote.pending.pop(first, None)
        if pending is None:
            self.drop_zygote("it answered a request nobody made")
            return
        tag, args, pipes = pending
        if kind == ZYGOTE_STARTED and second > 1 and second not in self.by_pid:
            pipes.close_theirs()
            self.track(tag, second, pipes, int(args.get("credit", 0)))  # type: ignore[call-overload]
            self.procs[tag].forked = True
            return
        if kind != ZYGOTE_FAILED:
            self.drop_zygote("it named an impossible process")
        self.start_or_fail(tag, args, pipes)

    def start_or_fail(self, tag: int, args: dict[str, object], pipes: Pipes) -> None:
        try:
            self.start(tag, args, pipes)
        except OSError as error:
            self.fail_os(tag, error)

    def drop_zygote(self, why: str) -> None:
        """Forks go back to plain starts; its children, orphaned, are reaped by this init."""
        zygote, self.zygote = self.zygote, None
        if zygote is None:
            return
        sys.stderr.write(f"agent: the zygote is dropped: {why}\n")
        try:  # noqa: SIM105 (contextlib is one import more)
            os.killpg(zygote.pid, _signal.SIGKILL)
        except OSError:
            pass
        zygote.channel.close()
        for tag, args, pipes in zygote.pending.values():
            self.start_or_fail(tag, args, pipes)

    def op_stdin(self, tag: int, args: dict[str, object]) -> None:
        proc = self.procs.get(tag)
        if proc is not None and proc.stdin != -1:
            proc.stdin_queue += bytes(args["data"])  # type: ignore[call-overload]

    def op_stdin_close(self, tag: int, args: dict[str, object]) -> None:
        proc = self.procs.get(tag)
        if proc is not None and proc.stdin != -1:
            proc.stdin_closing = True

    def op_control(self, tag: int, args: dict[str, object]) -> None:
        """Hand a warm runner its work (a script to run), then close its control pipe."""
        proc = self.procs.get(tag)
        if proc is None or proc.control == -1:
            self.fail(tag, UNKNOWN_TAG, "no such runner")
            return
        os.set_blocking(proc.control, True)
        try:
            os.write(proc.control, bytes(args["data"]))  # type: ignore[call-overload]
        finally:
            os.close(proc.control)
            proc.control = -1

    def op_credit(self, tag: int, args: dict[str, object]) -> None:
        granted = int(args["bytes"])  # type: ignore[call-overload]
        if tag in self.procs:
            self.procs[tag].credit += granted
        elif tag in self.downloads:
            self.downloads[tag].credit += granted

    def op_signal(self, tag: int, args: dict[str, object]) -> None:
        proc = self.procs.get(tag)
        if proc is not None and proc.status is None and not self.guarded(proc.pid):
            try:  # noqa: SIM105 (contextlib is one import more)
                os.killpg(proc.pid, int(args["signal"]))  # type: ignore[call-overload]
            except ProcessLookupError:
                pass

    def op_kill(self, tag: int, args: dict[str, object]) -> None:
        """SIGKILL the process's group until it is gone (what it moved to a session of its
        own stays, as a daemon would). A fork bomb refills its group as it is killed, so
        the loop goes on killing it, a round at a time, until the group is empty."""
        proc = self.procs.get(tag)
        if proc is not None and not self.guarded(proc.pid):
            self.killing.add(proc.pid)
            self.kill_groups()

    def guarded(self, group: int) -> bool:
        """Groups never signalled for a request: the agent's own and the egress relay's."""
        return group in self.protected or (self.relay is not None and group == self.relay.pid)

    def kill_groups(self) -> None:
        for group in list(self.killing):
            for _round in range(GROUP_KILL_ROUNDS):
                try:
                    os.killpg(group, _signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    self.killing.discard(group)
                    break

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.by_pid.pop(pid, None)
            if proc is not None:  # else an orphan the init inherits: reaped, forgotten
                proc.status = status
                proc.ended_at = time.monotonic()
                if proc.last:
                    self.killing_all = GROUP_KILL_ROUNDS

    def kill_all_others(self) -> None:
        """SIGKILL every process but the agent, until none is left to signal."""
        self.killing_all -= 1
        try:
            os.kill(-1, _signal.SIGKILL)
        except ProcessLookupError:
            self.killing_all = 0

    def finish_ended(self, now: float) -> None:
        for proc in list(self.procs.values()):
            if proc.status is None:
                continue
            waited = now - proc.ended_at
            if proc.pipes and (waited < DRAIN_GRACE_S
                               or (proc.credit <= 0 and waited < STARVED_GRACE_S)):
                continue
            for fd in [*proc.pipes, proc.stdin, proc.control]:
                if fd != -1:
                    os.close(fd)
            del self.procs[proc.tag]
            if os.WIFSIGNALED(proc.status):
                how, code = SIGNALLED, os.WTERMSIG(proc.status)
            else:
                how, code = EXITED, os.waitstatus_to_exitcode(proc.status)
            self.send(EXIT, proc.tag, EXIT_PAYLOAD.pack(how, code))

    def read_output(self, proc: Proc, fd: int) -> None:
        try:
            data = os.read(fd, min(CHUNK, proc.credit))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os.close(fd)
            del proc.pipes[fd]
            return
        proc.credit -= len(data)
        self.send(OUT, proc.tag, OUT_PAYLOAD.pack(proc.pipes[fd]) + data)

    def feed_stdin(self, proc: Proc) -> None:
        if proc.stdin_queue:
            try:
                written = os.write(proc.stdin, proc.stdin_queue[:CHUNK])
            except BlockingIOError:
                return
            except OSError:
                proc.stdin_queue.clear()  # it closed its stdin: it does not want the rest
                proc.stdin_closing = True
            else:
                del proc.stdin_queue[:written]
        if proc.stdin_closing and not proc.stdin_queue:
            os.close(proc.stdin)
            proc.stdin = -1

    # Files, opened as the sandbox user ---------------------------------------------------

    def op_stat(self, tag: int, args: dict[str, object]) -> None:
        info = as_user(os.stat, str(args["path"]))
        self.send(STAT, tag, STAT_PAYLOAD.pack(kind_of(info.st_mode), info.st_size,
                                               info.st_mtime))

    def op_read(self, tag: int, args: dict[str, object]) -> None:
        # Non-blocking: opening a FIFO would otherwise wait for a writer, and so would the
        # whole agent. Only a regular file is read.
        fd = as_user(os.open, str(args["path"]), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if kind_of(info.st_mode) == DIRECTORY:
                raise IsADirectoryError(21, "is a directory")
            if kind_of(info.st_mode) != FILE:
                raise OSError(NOT_REGULAR, "not a regular file")
            if info.st_size > int(args["limit"]):  # type: ignore[call-overload]
                raise OSError(27, "file too large")
            os.set_blocking(fd, True)
        except OSError:
            os.close(fd)
            raise
        self.send(STAT, tag, STAT_PAYLOAD.pack(kind_of(info.st_mode), info.st_size,
                                               info.st_mtime))
        self.downloads[tag] = Download(tag, fd, int(args["limit"]),  # type: ignore[call-overload]
                                       int(args["credit"]))  # type: ignore[call-overload]

    def read_download(self, download: Download) -> None:
        data = os.read(download.fd, min(CHUNK, download.credit))
        if data and download.sent + len(data) <= download.limit:
            download.credit -= len(data)
            download.sent += len(data)
            self.send(DATA, download.tag, data)
            return
        os.close(download.fd)
        del self.downloads[download.tag]
        if data:  # it grew past the limit while being read
            self.fail(download.tag, 27, "file too large")
        else:
            self.send(DONE, download.tag, DONE_PAYLOAD.pack(download.sent))

    def op_write(self, tag: int, args: dict[str, object]) -> None:
        """Written to a part file beside the target and renamed at the end, so a failed or
        abandoned upload never leaves a half file under the name asked for."""
        path = str(args["path"])
        parent, name = os.path.split(path)
        part = os.path.join(parent, f".{name}.part-{tag}")
        if parent:
            as_user(os.makedirs, parent, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = as_user(os.open, part, flags, 0o644)
        self.uploads[tag] = (fd, part, path)
        self.send(DONE, tag, DONE_PAYLOAD.pack(0))

    def op_data(self, tag: int, args: dict[str, object]) -> None:
        upload = self.uploads.get(tag)
        if upload is None:
            return  # an earlier chunk failed and was answered
        data = memoryview(bytes(args["data"]))  # type: ignore[call-overload]
        try:
            while data:
                data = data[os.write(upload[0], data):]
        except OSError:
            self.drop_upload(tag)
            raise

    def op_end(self, tag: int, args: dict[str, object]) -> None:
        upload = self.uploads.pop(tag, None)
        if upload is None:
            return
        fd, part, path = upload
        size = os.fstat(fd).st_size
        os.close(fd)
        try:
            as_user(os.rename, part, path)
        except OSError:
            as_user(_unlink_quietly, part)
            raise
        self.send(DONE, tag, DONE_PAYLOAD.pack(size))

    def op_abort(self, tag: int, args: dict[str, object]) -> None:
        """The service gave up an upload: nothing is answered, nothing is left."""
        self.drop_upload(tag)

    def op_close(self, tag: int, args: dict[str, object]) -> None:
        """The service stopped reading a download: say how much was sent, and stop."""
        download = self.downloads.pop(tag, None)
        if download is not None:
            os.close(download.fd)
            self.send(DONE, tag, DONE_PAYLOAD.pack(download.sent))

    def drop_upload(self, tag: int) -> None:
        upload = self.uploads.pop(tag, None)
        if upload is not None:
            os.close(upload[0])
            as_user(_unlink_quietly, upload[1])

    def op_list(self, tag: int, args: dict[str, object]) -> None:
        most = int(args["max"])  # type: ignore[call-overload]
        payload = bytearray()
        with as_user(os.scandir, str(args["path"])) as entries:
            for count, entry in enumerate(entries):
                if count >= most:
                    raise OSError(TOO_MANY, f"more than {most} entries")
                info = entry.stat(follow_symlinks=False)
                name = os.fsencode(entry.name)
                payload += ENTRY_PAYLOAD.pack(kind_of(info.st_mode), info.st_size,
                                              info.st_mtime, len(name)) + name
                if len(payload) > MAX_FRAME - 1024:
                    raise OSError(TOO_MANY, "the listing is too large")
        self.send(ENTRIES, tag, bytes(payload))

    # Checkpoints ------------------------------------------------------------------------

    def op_pause(self, tag: int, args: dict[str, object]) -> None:
        if self.relay is not None:
            self.relay.pause()  # no host-socket connection may be open at a checkpoint
        self.paused = True
        self.send(PAUSED, tag)

    def op_unpause(self, tag: int, args: dict[str, object]) -> None:
        """The checkpoint did not happen after all: go on on the same pipes."""
        self.paused = False
        if self.relay is not None:
            self.relay.go()
        self.send(DONE, tag, DONE_PAYLOAD.pack(0))

    def op_resume(self, tag: int, args: dict[str, object]) -> None:
        """After a restore: whatever a checkpoint cut off is dropped, and a sync marker with
        the service's nonce starts the new stream."""
        self.paused = False
        if self.relay is not None:
            self.relay.go()
        self.outbox.clear()
        self.outbox += SYNC + bytes(args["nonce"])  # type: ignore[call-overload]
        self.op_procs(tag, args)

    def op_relay(self, tag: int, args: dict[str, object]) -> None:
        """Start the egress relay (`relay.py`) with this argv, once it listens."""
        if self.relay is None:
            argv = args["argv"]
            self.relay = Relay([os.fsencode(str(arg)) for arg in argv])  # type: ignore[attr-defined]
        self.relay.start()
        self.send(DONE, tag, DONE_PAYLOAD.pack(0))

    def op_procs(self, tag: int, args: dict[str, object]) -> None:
        """Every process whose exit the service has not been told yet, with its label."""
        live = b"".join(PROC_PAYLOAD.pack(proc.tag, proc.pid, len(proc.label)) + proc.label
                        for proc in self.procs.values())
        self.send(PROCS, tag, live)

    # The loop ---------------------------------------------------------------------------

    def run(self) -> None:
        self.send(HELLO, 0, struct.pack(">H", VERSION))
        while True:
            now = time.monotonic()
            if not (self.paused or self.detached):
                # Paused, the agent sends nothing at all: a checkpoint must not cut a frame.
                self.finish_ended(now)
                for download in list(self.downloads.values()):
                    if download.credit > 0 and len(self.outbox) < HIGH_WATER:
                        self.read_download(download)
            watched = self.watched()
            poller = select.poll()  # a plain list for the poll call: cheap to rebuild
            for fd, mask in watched.items():
                poller.register(fd, mask)
            try:
                events = poller.poll(self.timeout(now))
            except InterruptedError:
                events = []
            for fd, _event in events:
                self.on_ready(fd)
            self.reap()
            self.kill_groups()
            if self.killing_all:
                self.kill_all_others()
            if self.detached and time.monotonic() >= self.reattach_at:
                self.receive()

    def watched(self) -> dict[int, int]:
        watched = {self.wake_read: select.POLLIN}
        if not self.detached:
            watched[0] = select.POLLIN
        if self.zygote is not None:
            watched[self.zygote.channel.fileno()] = select.POLLIN
        if self.outbox:
            watched[1] = select.POLLOUT
        quiet = self.paused or self.detached or len(self.outbox) >= HIGH_WATER
        for proc in self.procs.values():
            if not quiet and proc.credit > 0:
                for fd in proc.pipes:
                    watched[fd] = select.POLLIN
            if proc.stdin != -1 and (proc.stdin_queue or proc.stdin_closing):
                watched[proc.stdin] = select.POLLOUT
        return watched

    def timeout(self, now: float) -> int | None:
        waits = [(DRAIN_GRACE_S if proc.credit > 0 else STARVED_GRACE_S) - (now - proc.ended_at)
                 for proc in self.procs.values()
                 if proc.status is not None and not self.paused]
        if not self.paused and len(self.outbox) < HIGH_WATER and any(
                download.credit > 0 for download in self.downloads.values()):
            waits.append(0.0)  # a file to read on: no reason to wait
        if self.detached:
            waits.append(self.reattach_at - now)
        if self.killing:
            waits.append(KILL_ROUND_S)
        if self.killing_all:
            return 0
        return None if not waits else max(0, int(min(waits) * 1000) + 1)

    def on_ready(self, fd: int) -> None:
        if fd == self.wake_read:
            _drain(fd)
        elif fd == 0:
            self.receive()
        elif fd == 1:
            self.flush()
        elif self.zygote is not None and fd == self.zygote.channel.fileno():
            self.on_zygote(self.zygote)
        else:
            for proc in list(self.procs.values()):
                if fd == proc.stdin:
                    self.feed_stdin(proc)
                elif fd in proc.pipes:
                    self.read_output(proc, fd)


class Relay:
    """The egress relay: a process of its own, as its own user, told to pause and go on
    over a pipe. One that does not pause in time is killed (and started again on resume):
    a checkpoint with a host-socket connection open fails."""

    def __init__(self, argv: list[bytes]) -> None:
        self.argv = argv
        self.pid = -1
        self.orders = -1  # our write end of its stdin
        self.answers = -1  # our read end of its stdout

    def start(self) -> None:
        self.stop()
        order_read, self.orders = os.pipe()
        self.answers, answer_write = os.pipe()
        try:
            self.pid = spawn(self.argv, [b"PATH=/usr/bin:/bin"], "/", order_read, answer_write,
                             2, (), RELAY_UID)
        finally:
            os.close(order_read)
            os.close(answer_write)
        if not self.answered(b"R", RELAY_START_S):
            self.stop()
            raise OSError(11, "the egress relay did not start")

    def answered(self, expected: bytes, wait_s: float) -> bool:
        poller = select.poll()
        poller.register(self.answers, select.POLLIN)
        if not poller.poll(int(wait_s * 1000)):
            return False
        return os.read(self.answers, 1) == expected

    def pause(self) -> None:
        try:
            os.write(self.orders, b"p")
            if self.answered(b"P", RELAY_PAUSE_S):
                return
        except OSError:
            pass
        self.stop()

    def go(self) -> None:
        try:
            os.write(self.orders, b"g")
        except OSError:
            try:
                self.start()
            except OSError as error:
                sys.stderr.write(f"agent: the egress relay did not come back: {error}\n")

    def stop(self) -> None:
        if self.pid > 0:
            try:  # noqa: SIM105 (contextlib is one import more)
                os.kill(self.pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
        for fd in (self.orders, self.answers):
            if fd != -1:
                os.close(fd)
        self.pid, self.orders, self.answers = -1, -1, -1


def spawn(argv: list[bytes], env: list[bytes], cwd: str, stdin: int, stdout: int, stderr: int,
          keep: tuple[int, ...], uid: int = SANDBOX_UID) -> int:
    """Start a program as the sandbox user (or `uid`, group alike) in a process group of its
    own, as subprocess does (its C helper, without importing subprocess); OSError when it
    cannot be executed."""
    error_read, error_write = os.pipe()
    try:
        pid = _posixsubprocess.fork_exec(
            argv, executables(argv[0], env), True, tuple(sorted((*keep, error_write))), cwd, env,
            stdin, -1, -1, stdout, -1, stderr, error_read, error_write,
            True, False, 0, uid, [], uid, -1,
            None,  # type: ignore[arg-type]  # no preexec_fn
            False,
        )
    finally:
        os.close(error_write)
    try:
        report = bytearray()
        while part := os.read(error_read, 4096):
            report += part
    finally:
        os.close(error_read)
    if not report:
        return pid
    # The child failed before exec and exited; the loop reaps it. Its report is
    # b"OSError:<errno in hex>:<noexec or noexec:chdir or empty>": "noexec" (Python 3.11,
    # the sandbox's) or "noexec:chdir" (3.12 on) when the folder could not be entered.
    _name, code, where = bytes(report).split(b":", 2)
    number = int(code, 16)
    subject = cwd if where.startswith(b"noexec") else os.fsdecode(argv[0])
    raise OSError(number, f"{subject}: {os.strerror(number)}")


def executables(program: bytes, env: list[bytes]) -> list[bytes]:
    if b"/" in program:
        return [program]
    path = next((item[5:] for item in env if item.startswith(b"PATH=")), os.defpath.encode())
    return [os.path.join(folder or b".", program) for folder in path.split(b":")]


def as_user(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a file call with the sandbox user's permissions (the agent itself is root)."""
    os.setegid(SANDBOX_GID)
    os.seteuid(SANDBOX_UID)
    try:
        return call(*args, **kwargs)
    finally:
        os.seteuid(0)
        os.setegid(0)


def kind_of(mode: int) -> int:
    kind = mode & 0o170000
    if kind == 0o100000:
        return FILE
    if kind == 0o040000:
        return DIRECTORY
    if kind == 0o120000:
        return LINK
    return OTHER


def _unlink_quietly(path: str) -> None:
    try:  # noqa: SIM105 (contextlib is one import more)
        os.unlink(path)
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _ignore(signum: int, frame: object) -> None:
    return None


def main() -> None:
    os.setgroups([])
    os.umask(0o022)
    os.chdir("/")
    Agent().run()


if __name__ == "__main__":
    main()
