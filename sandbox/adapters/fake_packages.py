"""An installer for unit tests and the fake runtime: it installs nothing."""

from __future__ import annotations

from collections.abc import Collection

from sandbox.domain.errors import PackageResolutionFailed
from sandbox.domain.metrics import Metrics, NoMetrics
from sandbox.domain.packages import RequirementSet, normalise_name
from sandbox.domain.ports import PackageInstaller


class FakePackageInstaller(PackageInstaller):
    """Hands out a made-up folder per requirement set, the same for the same set, and fails
    as pip would for the names it is told are unavailable."""

    def __init__(
        self, unavailable: Collection[str] = (), metrics: Metrics | None = None
    ) -> None:
        self.unavailable = frozenset(normalise_name(name) for name in unavailable)
        self.installed: list[RequirementSet] = []
        self._metrics = metrics or NoMetrics()

    async def layer_for(self, requirements: RequirementSet) -> str:
        for name, requirement in zip(requirements.names, requirements.requirements, strict=True):
            if name in self.unavailable:
                self._metrics.package_layer_requested("failed")
                raise PackageResolutionFailed(
                    f"ERROR: No matching distribution found for {requirement}"
                )
        self._metrics.package_layer_requested("hit" if requirements in self.installed
                                              else "built")
        self.installed.append(requirements)
        return f"/fake/packages/{requirements.key('fake', 'fake', 'fake')}"

    async def readiness(self) -> list[str]:
        return []
