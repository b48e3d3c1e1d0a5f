"""Code contexts (persistent interpreters in a sandbox) and the cells run in them.

A cell's results are MIME bundles as Jupyter makes them: MIME type -> text, images in base64,
`application/json` as a JSON value; `text/plain` is always there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.domain.model import CapturedOutput, Language, iso_time

# The MIME types a result may carry: what Jupyter front ends show, without scripts.
TEXT_TYPES = frozenset({"text/plain", "text/html", "text/markdown", "text/latex",
                        "image/svg+xml"})
BASE64_TYPES = frozenset({"image/png", "image/jpeg"})
JSON_TYPE = "application/json"
MIME_TYPES = TEXT_TYPES | BASE64_TYPES | {JSON_TYPE}


@dataclass(frozen=True)
class CodeContext:
    context_id: str
    language: Language
    created_at: float

    def to_dict(self) -> dict[str, object]:
        return {"context_id": self.context_id, "language": self.language.value,
                "created_at": iso_time(self.created_at)}


@dataclass(frozen=True)
class CellLimits:
    timeout_s: float
    output_bytes: int  # per stream
    result_bytes: int  # the cell's results in all


@dataclass(frozen=True)
class CellResult:
    data: Mapping[str, object]
    is_main_result: bool = False  # the value of the cell's last expression
    truncated: bool = False  # representations left out, or its text cut, to fit the cap

    def size(self) -> int:
        return _size(self.data)

    def within(self, room: int) -> CellResult | None:
        """The result as it fits in `room` bytes: its largest representations left out first,
        then its text cut; None when not even that fits."""
        if self.size() <= room:
            return self
        kept = dict(self.data)
        for mime in sorted(self.data, key=lambda name: -_size({name: self.data[name]})):
            if mime != "text/plain" and _size(kept) > room:
                del kept[mime]
        text = str(kept.get("text/plain", "")).encode()
        if len(text) > room:
            if room <= 0:
                return None
            kept["text/plain"] = text[:room].decode("utf-8", "ignore")
        return CellResult(kept, self.is_main_result, truncated=True)

    def to_dict(self) -> dict[str, object]:
        return {**self.data, "is_main_result": self.is_main_result,
                "truncated": self.truncated}


@dataclass(frozen=True)
class CellError:
    """The exception a cell ended with, as the interpreter showed it."""

    name: str
    value: str
    traceback: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "traceback": self.traceback}


@dataclass(frozen=True)
class CellOutcome:
    """How a cell ended, as the runtime saw it."""

    execution_count: int | None
    timed_out: bool = False
    # The interpreter was started afresh (it did not stop when interrupted, or it ended):
    # the context's variables are gone.
    restarted: bool = False
    # Why the interpreter ended while the cell ran, or before it (then the cell did not run).
    ended: str | None = None
    # The interpreter left results out to keep within the cap.
    results_truncated: bool = False
    duration_ms: int = 0


@dataclass(frozen=True)
class CellRun:
    """The answer to a cell."""

    context_id: str
    outcome: CellOutcome
    results: tuple[CellResult, ...]
    stdout: CapturedOutput
    stderr: CapturedOutput
    error: CellError | None
    results_truncated: bool

    def summary(self) -> dict[str, object]:
        """The answer without its output, results and error (the `end` event of a stream)."""
        return {
            "context_id": self.context_id,
            "execution_count": self.outcome.execution_count,
            "timed_out": self.outcome.timed_out,
            "restarted": self.outcome.restarted,
            "stdout_truncated": self.stdout.truncated,
            "stderr_truncated": self.stderr.truncated,
            "results_truncated": self.results_truncated,
            "duration_ms": self.outcome.duration_ms,
        }

    def to_dict(self) -> dict[str, object]:
        return {
            **self.summary(),
            "results": [result.to_dict() for result in self.results],
            "stdout": self.stdout.text,
            "stderr": self.stderr.text,
            "error": self.error.to_dict() if self.error else None,
        }


def _size(data: Mapping[str, object]) -> int:
    return sum(len(value.encode()) if isinstance(value, str) else len(json.dumps(value))
               for value in data.values())
