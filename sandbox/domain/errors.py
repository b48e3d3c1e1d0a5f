"""Errors the use cases raise. Each carries a stable code; entrypoints map codes to statuses."""


class SandboxError(Exception):
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(SandboxError):
    code = "invalid_request"


class PayloadTooLarge(SandboxError):
    code = "payload_too_large"


class FileNotFoundInSandbox(SandboxError):
    code = "file_not_found"


class SandboxNotFound(SandboxError):
    code = "not_found"


class ContextNotFound(SandboxError):
    code = "context_not_found"


class TemplateNotFound(SandboxError):
    code = "not_found"


class InvalidState(SandboxError):
    code = "invalid_state"


class CheckpointMismatch(SandboxError):
    code = "checkpoint_mismatch"


class PackageResolutionFailed(SandboxError):
    code = "package_resolution_failed"


class AtCapacity(SandboxError):
    code = "at_capacity"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RuntimeFailure(SandboxError):
    """The runtime (runsc) itself failed; not the script. Its message (the runtime's own
    words, host paths and all) is for the log; `public_message`, when given, is what a client
    is told instead of the general sentence."""

    code = "runtime_failure"

    def __init__(self, message: str, public_message: str | None = None) -> None:
        super().__init__(message)
        self.public_message = public_message


class LeaseLost(SandboxError):
    """A fenced write found that its lease is no longer the sandbox's live lease: another
    instance owns the sandbox now, or the lease expired. Nothing was written."""

    code = "lease_lost"


class StoreUnavailable(SandboxError):
    """The shared store (the database) cannot be reached now; a retry may succeed."""

    code = "store_unavailable"
    retry_after_s = 1


class Unavailable(SandboxError):
    """The call cannot be served by this instance now (a handoff took too long, the instance
    is stopping); a retry, maybe on another instance, may succeed."""

    code = "unavailable"
    retry_after_s = 2
