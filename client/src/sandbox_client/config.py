"""Where the service is, how to authenticate, and how long to wait: from arguments, else from
SANDBOX_URL and SANDBOX_API_TOKEN."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
# Time a call may take beyond the work it asks for: connecting, waiting for room at the
# server (SANDBOX_CAPACITY_WAIT_S, 10 s by default), moving the request and the answer.
DEFAULT_REQUEST_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
# The longest an execution may run when the call does not say (the server's default maximum,
# SANDBOX_MAX_TIMEOUT_S), and the longest a package install may take (SANDBOX_PIP_TIMEOUT_S).
DEFAULT_EXECUTION_WAIT_S = 300.0
PACKAGE_INSTALL_WAIT_S = 300.0
# 429 answers are retried after their Retry-After, this many times, each wait capped.
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_RETRY_WAIT_S = 30.0

# Called before each retry with the wait in seconds and the server's reason.
RetryHook = Callable[[float, str], None]


@dataclass(frozen=True)
class ConnectionConfig:
    url: str = DEFAULT_URL
    api_token: str | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT_S
    # A transport of one's own (httpx.MockTransport in tests); None: httpx's default. The
    # sync client's background commands run on the async side: give one that serves both
    # (as MockTransport does), or they use httpx's default.
    transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None
    on_retry: RetryHook | None = None

    @classmethod
    def resolve(
        cls,
        url: str | None = None,
        api_token: str | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        on_retry: RetryHook | None = None,
    ) -> ConnectionConfig:
        """Arguments first, then the environment, then the defaults."""
        return cls(
            url=(url or os.environ.get("SANDBOX_URL") or DEFAULT_URL).rstrip("/"),
            api_token=api_token or os.environ.get("SANDBOX_API_TOKEN") or None,
            request_timeout=(DEFAULT_REQUEST_TIMEOUT_S if request_timeout is None
                             else request_timeout),
            max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
            transport=transport,
            on_retry=on_retry,
        )

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "sandbox-client/0.1"}
        if self.api_token:
            headers["Authorization"] = f"Bearer {self.api_token}"
        return headers

    def timeout(self, work_s: float | None = 0.0) -> httpx.Timeout:
        """httpx's limits for a call that asks for `work_s` seconds of work (an execution,
        an install) on top of the exchange itself; None: no read limit (following a script
        that may stay silent as long as it runs)."""
        read = None if work_s is None else self.request_timeout + work_s
        return httpx.Timeout(self.request_timeout, connect=CONNECT_TIMEOUT_S, read=read)


def execution_wait(timeout: float | None, packages: object = None) -> float:
    """The work a call that runs code asks for: its own time limit (or the server's longest)
    and, with packages, their install."""
    wait = DEFAULT_EXECUTION_WAIT_S if timeout is None else timeout
    return wait + (PACKAGE_INSTALL_WAIT_S if packages else 0.0)


def connection(
    url: str | None = None, api_token: str | None = None, config: ConnectionConfig | None = None,
) -> ConnectionConfig:
    """`config` if given (with `url` and `api_token` over it), else from the environment."""
    if config is None:
        return ConnectionConfig.resolve(url=url, api_token=api_token)
    return dataclasses.replace(config, url=(url or config.url).rstrip("/"),
                               api_token=api_token or config.api_token)
