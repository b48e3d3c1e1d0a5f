"""The egress relay of a sandbox with an allow-list: listens on the sandbox's own loopback
(where HTTP_PROXY points) and joins each connection to the service's proxy, through the Unix
socket mounted at /sandbox/egress. It moves bytes only; the proxy on the host decides.

The agent starts it as the relay's own user (no capabilities), the only user who may open
that socket, and commands it over its stdin: `p` (pause: close every connection, answer `P`
on stdout; gVisor cannot checkpoint an open host-socket connection) and `g` (go on). It says
`R` once it listens. Builtins only, as for the agent: every import costs tens of ms here.
Usage: relay.py PORT SOCKET_PATH
"""

from __future__ import annotations

import _socket
import os
import select
import sys

HOST = "127.0.0.1"
MAX_PAIRS = 128
CHUNK = 64 * 1024
# Bytes queued towards one side beyond which the other side is not read.
HIGH_WATER = 256 * 1024
CONNECT_TIMEOUT_S = 5.0
REFUSAL_S = 0.5
READY, PAUSED, PAUSE, GO = b"R", b"P", b"p", b"g"
UNREACHABLE = (b"HTTP/1.1 502 Bad Gateway: the sandbox's egress proxy is not reachable\r\n"
               b"Content-Length: 0\r\nConnection: close\r\n\r\n")
IN, OUT, GONE = select.POLLIN, select.POLLOUT, select.POLLHUP | select.POLLERR


class Pair:
    """A connection from inside and its connection to the proxy, one queue towards each.

    When the inside ends its side, the proxy's side is shut once the bytes are through (a
    half-close). When the proxy ends, the pair ends once its bytes reached the inside: the
    relay never keeps a host-socket connection whose far end is done, since one left open
    fails a checkpoint (after a server crash, nobody pauses the relay first)."""

    def __init__(self, inside: _socket.socket, proxy: _socket.socket) -> None:
        self.inside = inside.fileno()
        self.socks = {inside.fileno(): inside, proxy.fileno(): proxy}
        self.peer = {inside.fileno(): proxy.fileno(), proxy.fileno(): inside.fileno()}
        self.queued = {fd: bytearray() for fd in self.socks}  # bytes to write to that fd
        self.ended: set[int] = set()  # fds read to their end
        self.shut = False  # the proxy's writing side

    def mask(self, fd: int) -> int:
        mask = 0
        if fd not in self.ended and len(self.queued[self.peer[fd]]) < HIGH_WATER:
            mask |= IN
        if self.queued[fd]:
            mask |= OUT
        return mask

    def readable(self, fd: int) -> bool:
        """Move what arrived; False when the pair is done or broken."""
        try:
            data = self.socks[fd].recv(CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        peer = self.peer[fd]
        if data:
            self.queued[peer] += data
            return True
        self.ended.add(fd)
        return self.pass_end(peer)

    def writable(self, fd: int) -> bool:
        try:
            sent = self.socks[fd].send(self.queued[fd])
        except BlockingIOError:
            return True
        except OSError:
            return False
        del self.queued[fd][:sent]
        return self.pass_end(fd)

    def pass_end(self, fd: int) -> bool:
        """Once the side writing to `fd` ended and its bytes are through: shut the proxy's
        writing side, or, when the proxy is the one that ended, end the pair."""
        if self.peer[fd] not in self.ended or self.queued[fd]:
            return True
        if fd == self.inside:
            return False
        if not self.shut:
            try:
                self.socks[fd].shutdown(_socket.SHUT_WR)
            except OSError:
                return False
            self.shut = True
        return True

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()


class Relay:
    def __init__(self, port: int, path: str) -> None:
        self.path = path
        self.listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        self.listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, port))
        self.listener.listen(MAX_PAIRS)
        self.listener.setblocking(False)
        self.pairs: dict[int, Pair] = {}
        self.paused = False

    def run(self) -> None:
        os.write(1, READY)
        while True:
            poller = select.poll()
            poller.register(0, IN)
            if not self.paused and len(self.pairs) < 2 * MAX_PAIRS:
                poller.register(self.listener.fileno(), IN)
            for fd, pair in self.pairs.items():
                poller.register(fd, pair.mask(fd))
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, event in events:
                self.on_event(fd, event)

    def on_event(self, fd: int, event: int) -> None:
        if fd == 0:
            self.command()
        elif fd == self.listener.fileno():
            self.accept()
        elif fd in self.pairs:
            pair = self.pairs[fd]
            going = True
            if event & (IN | GONE):
                going = pair.readable(fd)
            if going and event & OUT:
                going = pair.writable(fd)
            if not going:
                self.drop(pair)

    def command(self) -> None:
        order = os.read(0, 1)
        if not order:
            os._exit(0)  # the agent is gone
        if order == PAUSE:
            self.paused = True
            for pair in {id(pair): pair for pair in self.pairs.values()}.values():
                self.drop(pair)
            os.write(1, PAUSED)
        elif order == GO:
            self.paused = False

    def accept(self) -> None:
        try:
            fd, _address = self.listener._accept()  # type: ignore[attr-defined]
        except OSError:
            return
        inside = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, fd)
        proxy = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            proxy.settimeout(CONNECT_TIMEOUT_S)
            proxy.connect(self.path)
        except OSError:
            proxy.close()
            refuse(inside)
            return
        inside.setblocking(False)
        proxy.setblocking(False)
        pair = Pair(inside, proxy)
        for end in pair.socks:
            self.pairs[end] = pair

    def drop(self, pair: Pair) -> None:
        for fd in pair.socks:
            self.pairs.pop(fd, None)
        pair.close()


def refuse(inside: _socket.socket) -> None:
    """Say the proxy is unreachable, then read what the client sent until it closes
    (briefly): closing on unread bytes would reset the connection before it read why."""
    try:
        inside.settimeout(REFUSAL_S)
        inside.sendall(UNREACHABLE)
        inside.shutdown(_socket.SHUT_WR)
        while inside.recv(CHUNK):
            pass
    except OSError:
        pass
    inside.close()


def main() -> None:
    Relay(int(sys.argv[1]), sys.argv[2]).run()


if __name__ == "__main__":
    main()
