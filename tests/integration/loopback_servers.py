"""Servers on the host's loopback for the egress tests, each in a thread of its own: a web
server (with a redirect to a name no allow-list holds), an echo server that counts its open
connections, and a PEP 503 index of handmade wheels. Sandboxes reach them only through the
egress proxy and the operator's map; nothing here listens beyond 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import http.server
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from handmade_wheel import write_wheel

REDIRECT_TARGET = "http://evil.test/"


@dataclass
class Served:
    port: int
    paths: list[str] = field(default_factory=list)
    open_connections: int = 0
    connections: int = 0


class _Web(http.server.BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        self.served.paths.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", REDIRECT_TARGET)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = f"hello from {self.headers['Host']} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


class _Echo(socketserver.BaseRequestHandler):
    served: Served
    lock = threading.Lock()

    def handle(self) -> None:
        with self.lock:
            self.served.open_connections += 1
            self.served.connections += 1
        try:
            with contextlib.suppress(OSError):
                while data := self.request.recv(65536):
                    self.request.sendall(data)
        finally:
            with self.lock:
                self.served.open_connections -= 1


class _Quiet(http.server.SimpleHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        self.served.paths.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        return None


@contextlib.contextmanager
def _serving(server: socketserver.TCPServer, served: Served) -> Iterator[Served]:
    served.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _server(handler: type[socketserver.BaseRequestHandler]) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def web_server() -> Iterator[Served]:
    served = Served(0)
    handler = type("Web", (_Web,), {"served": served})
    with _serving(_server(handler), served) as running:
        yield running


@contextlib.contextmanager
def echo_server() -> Iterator[Served]:
    served = Served(0)
    handler = type("Echo", (_Echo,), {"served": served})
    with _serving(_server(handler), served) as running:
        yield running


@contextlib.contextmanager
def wheel_index(folder: Path, name: str, value: str) -> Iterator[Served]:
    """A simple index (PEP 503) serving one handmade wheel whose module holds VALUE."""
    write_wheel(folder, name, {f"{name}.py": f"VALUE = {value!r}\n"})
    wheel = f"{name}-1.0-py3-none-any.whl"
    project = folder / "simple" / name
    project.mkdir(parents=True)
    (project / "index.html").write_text(f'<a href="../../{wheel}">{wheel}</a>\n')
    (folder / "simple" / "index.html").write_text(f'<a href="{name}/">{name}</a>\n')
    served = Served(0)
    handler = type("Index", (_Quiet,), {"served": served})
    server = _server(functools.partial(handler, directory=str(folder)))  # type: ignore[arg-type]
    with _serving(server, served) as running:
        yield running
