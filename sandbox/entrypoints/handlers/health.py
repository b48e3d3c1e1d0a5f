"""Liveness (the process answers) and readiness (the runtime can run sandboxes now, and
which layers hold its limits on this host)."""

from __future__ import annotations

import structlog
from dependency_injector.wiring import Provide, inject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandbox.containers import Container
from sandbox.domain.ports import PackageInstaller, SandboxRuntime

log = structlog.get_logger(__name__)


async def report_liveness(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@inject
async def report_readiness(
    request: Request,
    runtime: SandboxRuntime = Provide[Container.runtime],
    installer: PackageInstaller = Provide[Container.package_installer],
) -> Response:
    problems = [*await runtime.readiness(), *await installer.readiness()]
    # Which layer holds each limit on this host: an empty list is a limit not held at all.
    limits = runtime.limit_layers()
    warnings = weakened_limits(limits)
    if problems:
        log.warning("runtime.not_ready", problems=problems)
        return JSONResponse({"status": "not_ready", "problems": problems, "limits": limits,
                             "warnings": warnings}, status_code=503)
    return JSONResponse({"status": "ready", "limits": limits, "warnings": warnings})


def weakened_limits(limits: dict[str, list[str]]) -> list[str]:
    """What an operator must know about limits that hold less on this host than they
    should (no usable cgroups); the start-up log says it too (`runsc.limits_weakened`)."""
    warnings = []
    if limits.get("memory") and "cgroup" not in limits["memory"]:
        warnings.append("no usable cgroups: memory limits are held by the server's memory "
                        "watch, which ends a sandbox within about 20 ms of passing its limit "
                        "(it may pass it by what it allocates meanwhile)")
    if not limits.get("cpu"):
        warnings.append("no usable cgroups: no CPU quota holds; a sandbox may use every CPU "
                        "of the host until its wall time ends")
    return warnings
