"""A Python interpreter kept started in a session, as the sandbox user, that forks a child
per Python exec: starting `python3` costs 50-70 ms inside gVisor, a fork of this small
process about 10.

The agent sends a request (marshal of a dict) with the child's stdin, stdout and stderr as
passed descriptors over a SOCK_SEQPACKET socket; this process answers with fixed-size
records (`MESSAGE`: STARTED request pid, FAILED request errno, EXITED pid wait-status), which
the agent, root, decodes without trusting them. A request without descriptors names a new
generation of the sandbox (it was restored as a copy): the zygote takes it into its
environment (SANDBOX_GENERATION, inherited by what it forks) and re-seeds its generators;
it answers nothing. The child runs the script as `python3 PATH`
would (see `scriptmain.run`).

It runs with the sandbox user's rights and in the tenant's reach: the agent checks what it
says (the pid must be its child, of the sandbox user, leading its own group).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import signal
import socket
import struct
import sys

import scriptmain  # type: ignore[import-not-found]  # beside this file

MAX_REQUEST = 64 * 1024
MESSAGE = struct.Struct(">Bqq")
STARTED, FAILED, EXITED = 1, 2, 3


def main() -> None:
    channel = socket.socket(fileno=int(os.environ.pop("SANDBOX_ZYGOTE_FD")))
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        ready, _, _ = select.select([channel, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
            report_exits(channel)
        if channel in ready and not serve(channel, (wake_read, wake_write)):
            return


def serve(channel: socket.socket, wake: tuple[int, int]) -> bool:
    message, fds, _flags, _address = socket.recv_fds(channel, MAX_REQUEST, 3)
    if not message:
        return False  # the agent is gone
    request = marshal.loads(message)
    if "generation" in request and not fds:
        os.environ["SANDBOX_GENERATION"] = str(request["generation"])
        scriptmain.reseed()
        return True
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        channel.send(MESSAGE.pack(FAILED, int(request["id"]), 22))
        return True
    try:
        pid = os.fork()
    except OSError as error:
        channel.send(MESSAGE.pack(FAILED, int(request["id"]), error.errno or 0))
        pid = -1
    if pid == 0:
        child(request, fds, channel, wake)
    for fd in fds:
        os.close(fd)
    if pid > 0:
        # As the child does: whichever runs first, it leads its own group (unless it ended).
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        channel.send(MESSAGE.pack(STARTED, int(request["id"]), pid))
    return True


def report_exits(channel: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        channel.send(MESSAGE.pack(EXITED, pid, status))


def child(
    request: dict[str, object], fds: list[int], channel: socket.socket, wake: tuple[int, int]
) -> None:
    """In the forked child: become the exec's process and never come back."""
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        channel.close()
        for fd in wake:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(str(request["cwd"]))
        sys.argv = list(request["argv"])  # type: ignore[call-overload]
    except BaseException:
        os._exit(127)
    scriptmain.run(str(request["path"]))


if __name__ == "__main__":
    main()
