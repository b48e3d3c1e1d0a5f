"""Python client of the gVisor sandbox service.

    from sandbox_client import Sandbox, run

    print(run("print(6 * 7)").stdout)
    with Sandbox.create(packages=["tablib"]) as sb:
        sb.files.write("data.csv", "a,b\\n1,2\\n")
        print(sb.commands.run("wc -l data.csv").stdout)

The service is found at SANDBOX_URL (default http://127.0.0.1:8080), with the token in
SANDBOX_API_TOKEN when it asks for one.
"""

from sandbox_client._background import AsyncCommandHandle, CommandHandle
from sandbox_client.async_sandbox import AsyncCommands, AsyncContext, AsyncFiles, AsyncSandbox
from sandbox_client.config import ConnectionConfig
from sandbox_client.errors import (
    CapacityExceeded,
    CheckpointMismatch,
    ConnectionFailed,
    FileNotFound,
    Forbidden,
    InvalidRequest,
    InvalidState,
    NotFound,
    PackageInstallFailed,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    RuntimeFailure,
    SandboxError,
    SandboxNotFound,
    ServerError,
    Unauthorized,
)
from sandbox_client.models import (
    CommandResult,
    ContextInfo,
    Execution,
    ExecutionError,
    FileEntry,
    Limits,
    Logs,
    Output,
    Result,
    SandboxInfo,
    Template,
    WriteInfo,
)
from sandbox_client.oneshot import arun, run
from sandbox_client.sandbox import Commands, Context, Files, Sandbox

__version__ = "0.1.0"

__all__ = [
    "AsyncCommandHandle", "AsyncCommands", "AsyncContext", "AsyncFiles", "AsyncSandbox",
    "CapacityExceeded", "CheckpointMismatch", "CommandHandle", "CommandResult", "Commands",
    "ConnectionConfig", "ConnectionFailed", "Context", "ContextInfo", "Execution",
    "ExecutionError", "FileEntry", "FileNotFound", "Files", "Forbidden", "InvalidRequest",
    "InvalidState", "Limits", "Logs", "NotFound", "Output", "PackageInstallFailed",
    "PayloadTooLarge", "ProtocolError", "RequestTimeout", "Result", "RuntimeFailure",
    "Sandbox", "SandboxError", "SandboxInfo", "SandboxNotFound", "ServerError", "Template",
    "Unauthorized", "WriteInfo", "arun", "run",
]
