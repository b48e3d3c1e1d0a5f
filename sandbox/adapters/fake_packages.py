"""An installer for unit tests and the fake runtime: it installs nothing."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from packaging.requirements import Requirement

from sandbox.domain.errors import PackageResolutionFailed
from sandbox.domain.metrics import Metrics, NoMetrics
from sandbox.domain.packages import PackagePolicy, RequirementSet, ResolvedSet, normalise_name
from sandbox.domain.ports import PackageInstaller

DEFAULT_VERSION = "1.0"


class FakePackageInstaller(PackageInstaller):
    """Resolves as pip would, in miniature: each name to the version its `==` names (else
    1.0), plus the names `dependencies` says it needs; fails for the names it is told are
    unavailable, refuses what `policy` does not allow, and hands out a made-up folder per
    resolved set."""

    def __init__(
        self,
        unavailable: Collection[str] = (),
        metrics: Metrics | None = None,
        dependencies: Mapping[str, Collection[str]] | None = None,
        policy: PackagePolicy | None = None,
    ) -> None:
        self.unavailable = frozenset(normalise_name(name) for name in unavailable)
        self.dependencies = {normalise_name(name): [normalise_name(needed) for needed in needs]
                             for name, needs in (dependencies or {}).items()}
        self.policy = policy or PackagePolicy()
        self.installed: list[RequirementSet] = []
        # Sets installed from their pins (layer_of), as a restore elsewhere asks for them.
        self.installed_pins: list[tuple[str, ...]] = []
        self._pins: dict[str, tuple[str, ...]] = {}
        self._metrics = metrics or NoMetrics()

    async def layer_for(self, requirements: RequirementSet) -> str:
        try:
            resolved = self.resolve(requirements)
            self.policy.check_resolved(resolved)
        except PackageResolutionFailed:
            self._metrics.package_layer_requested("failed")
            raise
        self._metrics.package_layer_requested("hit" if requirements in self.installed
                                              else "built")
        self.installed.append(requirements)
        return self._folder(resolved)

    def _folder(self, resolved: ResolvedSet) -> str:
        folder = f"{self.root}/{resolved.key('fake', 'fake', 'fake')}"
        self._pins[folder] = resolved.pins
        return folder

    # The folder an installer on another instance would give: tests set another root.
    root = "/fake/packages"

    async def pins_of(self, layer: str) -> tuple[str, ...] | None:
        return self._pins.get(layer)

    async def layer_of(self, pins: tuple[str, ...]) -> str:
        resolved = ResolvedSet(tuple(sorted(pins)))
        self.policy.check_resolved(resolved)
        self.installed_pins.append(resolved.pins)
        return self._folder(resolved)

    def resolve(self, requirements: RequirementSet) -> ResolvedSet:
        versions: dict[str, str] = {}
        for item in requirements.requirements:
            requirement = Requirement(item)
            name = normalise_name(requirement.name)
            if name in self.unavailable:
                raise PackageResolutionFailed(
                    f"ERROR: No matching distribution found for {item}"
                )
            pinned = [spec.version for spec in requirement.specifier
                      if spec.operator == "==" and not spec.version.endswith("*")]
            versions[name] = pinned[0] if pinned else DEFAULT_VERSION
        needed = list(versions)
        while needed:
            for dependency in self.dependencies.get(needed.pop(), ()):
                if dependency not in versions:
                    versions[dependency] = DEFAULT_VERSION
                    needed.append(dependency)
        return ResolvedSet.of(versions.items())

    async def readiness(self) -> list[str]:
        return []
