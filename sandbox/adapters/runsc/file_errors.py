"""What an agent's refusal of a file call means to the caller."""

from __future__ import annotations

import errno

from sandbox.adapters.runsc.agent_channel import AgentError
from sandbox.adapters.runsc.inside import agent as layout
from sandbox.domain.errors import (
    FileNotFoundInSandbox,
    InvalidRequest,
    PayloadTooLarge,
    SandboxError,
)


def file_error(error: AgentError, path: str, limit_bytes: int = 0) -> SandboxError:
    """The domain error for a file call the agent refused; its own words are not passed on
    (they come from inside the sandbox), only what its code means."""
    code = error.code
    if code == errno.ENOENT:
        return FileNotFoundInSandbox(f"no such file or directory in the sandbox: {path}")
    if code == errno.EISDIR:
        return InvalidRequest(f"{path} is a directory")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return InvalidRequest(f"a parent of {path} is not a directory (or a file is in the way)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InvalidRequest(f"the sandbox user may not access {path}")
    if code == errno.EFBIG:
        limit = f" of {limit_bytes} bytes" if limit_bytes else ""
        return PayloadTooLarge(f"{path} is larger than the limit{limit}")
    if code in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
        return PayloadTooLarge(f"the sandbox has no room left for {path}")
    if code == layout.NOT_REGULAR:
        return InvalidRequest(f"{path} is not a regular file")
    if code == layout.TOO_MANY:
        return PayloadTooLarge(f"{path} holds too many entries to list")
    if code in (errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL):
        return InvalidRequest(f"{path} is not a usable path in the sandbox")
    return InvalidRequest(f"file operation on {path} failed (error {code})")
