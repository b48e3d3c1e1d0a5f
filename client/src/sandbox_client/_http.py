"""Calls to the service, sync and async: one request each, errors raised as exceptions, 429
answers retried after their Retry-After (a bounded number of times)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from sandbox_client.config import ConnectionConfig
from sandbox_client.errors import (
    CapacityExceeded,
    ConnectionFailed,
    ProtocolError,
    RequestTimeout,
    SandboxError,
    error_from_response,
)

log = logging.getLogger("sandbox_client")

# A request body made afresh for each attempt (an upload read from a file).
SyncBody = Callable[[], Iterator[bytes]]
AsyncBody = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True)
class Call:
    """One request, as both clients send it."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] | None = None
    timeout: httpx.Timeout | None = None  # None: the configuration's plain limit


def retry_wait(config: ConnectionConfig, error: SandboxError, attempt: int) -> float | None:
    """Seconds to wait before trying again, or None to give up."""
    if not isinstance(error, CapacityExceeded) or attempt >= config.max_retries:
        return None
    wait = min(error.retry_after if error.retry_after is not None else 1.0,
               config.max_retry_wait)
    log.info("sandbox_client.retry wait_s=%s attempt=%s reason=%s", wait, attempt + 1,
             error.message)
    if config.on_retry is not None:
        config.on_retry(wait, error.message)
    return wait


@contextlib.contextmanager
def translated_errors(url: str) -> Iterator[None]:
    """httpx's own failures as this client's exceptions."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise RequestTimeout(f"no answer from {url} in time ({type(error).__name__})") from error
    except httpx.TransportError as error:
        raise ConnectionFailed(f"cannot reach the service at {url}: {error}") from error


def json_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as error:
        raise ProtocolError(f"the answer is not JSON: {response.text[:200]!r}") from error
    if not isinstance(body, dict):
        raise ProtocolError(f"the answer is not a JSON object: {response.text[:200]!r}")
    return body


class SyncHTTP:
    """A pool of connections, opened on first use and again after close(): a sandbox kept
    past its `with` block can still be called."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._opened: httpx.Client | None = None

    @property
    def _client(self) -> httpx.Client:
        if self._opened is None:
            config = self.config
            transport = (config.transport if isinstance(config.transport, httpx.BaseTransport)
                         else None)
            self._opened = httpx.Client(base_url=config.url, headers=config.headers(),
                                        timeout=config.timeout(), transport=transport)
        return self._opened

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def send(self, call: Call, body: SyncBody | None = None) -> httpx.Response:
        """The answer, read whole."""
        with self.stream(call, body) as response, translated_errors(self.config.url):
            response.read()
        return response

    def json(self, call: Call, body: SyncBody | None = None) -> dict[str, Any]:
        return json_of(self.send(call, body))

    @contextlib.contextmanager
    def stream(self, call: Call, body: SyncBody | None = None) -> Iterator[httpx.Response]:
        """A successful answer whose body is still to be read; closed on the way out."""
        response = self._open(call, body)
        try:
            yield response
        finally:
            response.close()

    def _open(self, call: Call, body: SyncBody | None) -> httpx.Response:
        attempt = 0
        while True:
            request = self._client.build_request(
                call.method, call.path, params=call.params, json=call.json,
                content=body() if body is not None else call.content, headers=call.headers,
                timeout=call.timeout or self.config.timeout(),
            )
            with translated_errors(self.config.url):
                response = self._client.send(request, stream=True)
                if response.status_code < 400:
                    return response
                try:
                    response.read()
                finally:
                    response.close()
            error = error_from_response(response)
            wait = retry_wait(self.config, error, attempt)
            if wait is None:
                raise error
            time.sleep(wait)
            attempt += 1


class AsyncHTTP:
    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._opened: httpx.AsyncClient | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._opened is None:
            config = self.config
            transport = (config.transport
                         if isinstance(config.transport, httpx.AsyncBaseTransport) else None)
            self._opened = httpx.AsyncClient(base_url=config.url, headers=config.headers(),
                                             timeout=config.timeout(), transport=transport)
        return self._opened

    async def close(self) -> None:
        if self._opened is not None:
            await self._opened.aclose()
            self._opened = None

    async def send(self, call: Call, body: AsyncBody | None = None) -> httpx.Response:
        async with self.stream(call, body) as response:
            with translated_errors(self.config.url):
                await response.aread()
        return response

    async def json(self, call: Call, body: AsyncBody | None = None) -> dict[str, Any]:
        return json_of(await self.send(call, body))

    @contextlib.asynccontextmanager
    async def stream(
        self, call: Call, body: AsyncBody | None = None
    ) -> AsyncIterator[httpx.Response]:
        response = await self._open(call, body)
        try:
            yield response
        finally:
            await response.aclose()

    async def _open(self, call: Call, body: AsyncBody | None) -> httpx.Response:
        attempt = 0
        while True:
            request = self._client.build_request(
                call.method, call.path, params=call.params, json=call.json,
                content=body() if body is not None else call.content, headers=call.headers,
                timeout=call.timeout or self.config.timeout(),
            )
            with translated_errors(self.config.url):
                response = await self._client.send(request, stream=True)
                if response.status_code < 400:
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            error = error_from_response(response)
            wait = retry_wait(self.config, error, attempt)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1
