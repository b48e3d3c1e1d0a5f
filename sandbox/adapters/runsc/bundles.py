"""OCI bundles on disk, one folder per sandbox: its config, its input (scripts, read-only
inside), its memory limit and runsc's log of it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from sandbox.adapters.runsc import oci
from sandbox.adapters.runsc.cli import first_error
from sandbox.domain.ids import ID_PATTERN
from sandbox.domain.model import Program, SandboxSpec

NO_MESSAGE = "no message from runsc"


def checked(sandbox_id: str) -> str:
    """Only a well-formed id becomes a path or an argument."""
    if not ID_PATTERN.match(sandbox_id):
        raise ValueError(f"not a sandbox id: {sandbox_id!r}")
    return sandbox_id


class Bundles:
    def __init__(self, root: Path, rootfs: Path) -> None:
        self.root = root
        self.rootfs = rootfs

    def path(self, sandbox_id: str) -> Path:
        return self.root / checked(sandbox_id)

    def log_file(self, sandbox_id: str) -> Path:
        return self.path(sandbox_id) / "runsc.log"

    def egress_dir(self, sandbox_id: str) -> Path:
        """Where the sandbox's egress proxy puts its socket (mounted at oci.EGRESS_DIR)."""
        return self.path(sandbox_id) / "egress"

    def write(
        self, spec: SandboxSpec, program: Program, cgroups_path: str, agent_dir: Path | None = None
    ) -> Path:
        bundle = self.path(spec.sandbox_id)
        input_dir = bundle / "input"
        bundle.mkdir(mode=0o711)
        input_dir.mkdir(mode=0o755)
        if program.language is not None:
            script = input_dir / oci.script_name(program.language)
            script.write_bytes(program.source)
            script.chmod(0o644)
        egress_dir = None
        if spec.network_allow and agent_dir is not None:
            egress_dir = self.egress_dir(spec.sandbox_id)
            egress_dir.mkdir(mode=0o700)
            os.chown(egress_dir, oci.RELAY_UID, oci.RELAY_UID)
        config = oci.build_config(spec, program, self.rootfs, input_dir, cgroups_path,
                                  agent_dir, egress_dir)
        (bundle / "config.json").write_text(json.dumps(config))
        memory_bytes = spec.limits.memory_mb * 1024 * 1024
        (bundle / "limits.json").write_text(json.dumps({"memory_bytes": memory_bytes}))
        return bundle

    def exists(self, sandbox_id: str) -> bool:
        return (self.path(sandbox_id) / "config.json").exists()

    def remove(self, sandbox_id: str) -> None:
        shutil.rmtree(self.path(sandbox_id), ignore_errors=True)

    def ids(self) -> set[str]:
        return {entry.name for entry in self.root.iterdir()}

    def memory_bytes(self, sandbox_id: str) -> int:
        """The memory limit the sandbox was made with (0 when unknown)."""
        try:
            limits = json.loads((self.path(sandbox_id) / "limits.json").read_text())
            return int(limits["memory_bytes"])
        except (OSError, ValueError, KeyError):
            return 0

    def logged_error(self, sandbox_id: str) -> str:
        try:
            text = self.log_file(sandbox_id).read_text(errors="replace")
        except OSError:
            return NO_MESSAGE
        return first_error(text) or NO_MESSAGE

    def exec_argv(self, sandbox_id: str, program: Program) -> tuple[list[str], Path | None]:
        """The argv of one exec, and its script (written to the read-only input folder, which
        the caller removes afterwards) when it runs one."""
        if program.language is None:
            return list(program.argv), None
        script = self.path(sandbox_id) / "input" / (
            f"exec-{secrets.token_hex(8)}-{oci.script_name(program.language)}"
        )
        script.write_bytes(program.source)
        script.chmod(0o644)
        return [oci.program_argv(program)[0], f"{oci.INPUT_DIR}/{script.name}"], script
