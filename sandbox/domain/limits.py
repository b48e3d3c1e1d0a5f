"""Per-request limits: defaults from settings, capped by configured maxima."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sandbox.domain.errors import InvalidRequest
from sandbox.domain.model import Limits


@dataclass(frozen=True)
class LimitPolicy:
    defaults: Limits
    max_timeout_s: float
    max_memory_mb: int

    def resolve(self, timeout_s: float | None = None, memory_mb: int | None = None) -> Limits:
        limits = self.defaults
        if timeout_s is not None:
            if not (math.isfinite(timeout_s) and 0 < timeout_s <= self.max_timeout_s):
                raise InvalidRequest(
                    f"timeout must be more than 0 and at most {self.max_timeout_s:g} seconds"
                )
            limits = dataclasses.replace(limits, timeout_s=timeout_s)
        if memory_mb is not None:
            if not 16 <= memory_mb <= self.max_memory_mb:
                raise InvalidRequest(f"memory_mb must be between 16 and {self.max_memory_mb}")
            limits = dataclasses.replace(limits, memory_mb=memory_mb)
        return limits
