"""Why a sandbox is in its state: a stable code for programs and a sentence for people.

Records go to clients, so a reason holds nothing but the code's own sentence and numbers the
service chose (an exit code, a limit): never a runtime's or the host's words, which go to the
log, bound to the sandbox's id. The facts are typed as numbers so that no text can slip in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ReasonCode(enum.StrEnum):
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    OUT_OF_MEMORY = "out_of_memory"
    SUSPENDED = "suspended"
    IDLE_SUSPENDED = "idle_suspended"
    SERVER_STOPPED = "server_stopped"
    SERVER_RESTARTED = "server_restarted"
    RESTORED = "restored"
    HANDED_OFF = "handed_off"
    LOST = "lost"
    VANISHED = "vanished"
    CREATE_FAILED = "create_failed"
    CREATE_INTERRUPTED = "create_interrupted"
    SUSPEND_FAILED = "suspend_failed"
    RESTORE_FAILED = "restore_failed"
    OUTPUT_FAILED = "output_failed"
    SUPERVISION_FAILED = "supervision_failed"
    AGENT_FAILED = "agent_failed"
    # A deleted sandbox has no record left; these two name why in the log.
    DELETED = "deleted"
    EXPIRED = "expired"


_SENTENCES = {
    ReasonCode.EXITED: "exited with code {exit_code:g}",
    ReasonCode.TIMED_OUT: "timed out after {seconds:g} s",
    ReasonCode.OUT_OF_MEMORY: "killed: out of memory",
    ReasonCode.SUSPENDED: "suspended on request",
    ReasonCode.IDLE_SUSPENDED: "suspended after {seconds:g} s idle",
    ReasonCode.SERVER_STOPPED: "suspended when the server stopped",
    ReasonCode.SERVER_RESTARTED: "the server restarted while it ran",
    ReasonCode.RESTORED: "restored",
    ReasonCode.HANDED_OFF: "suspended to move to the server instance that a call for it "
                           "reached; the next call restores it",
    ReasonCode.LOST: "ended: the server running it stopped, and it was not saved",
    ReasonCode.VANISHED: "it ended without an exit code (the runtime lost it)",
    ReasonCode.CREATE_FAILED: "the sandbox runtime failed to start it",
    ReasonCode.CREATE_INTERRUPTED: "creation was interrupted",
    ReasonCode.SUSPEND_FAILED: "the suspend failed and ended the sandbox",
    ReasonCode.RESTORE_FAILED: "the restore failed: the checkpoint is unusable or the "
                               "runtime failed",
    ReasonCode.OUTPUT_FAILED: "its output could not be stored (the server's disk may be "
                              "full), so it was ended",
    ReasonCode.SUPERVISION_FAILED: "the server lost track of it (the runtime failed), so it "
                                   "was ended",
    ReasonCode.AGENT_FAILED: "its agent stopped answering or broke the protocol, so it was "
                             "ended",
    ReasonCode.DELETED: "deleted on request",
    ReasonCode.EXPIRED: "kept past its retention of {seconds:g} s",
}


@dataclass(frozen=True)
class Reason:
    code: ReasonCode
    text: str

    @classmethod
    def of(cls, code: ReasonCode, **facts: float) -> Reason:
        return cls(code, _SENTENCES[code].format(**facts))
