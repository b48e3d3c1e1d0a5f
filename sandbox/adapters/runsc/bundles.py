"""OCI bundles on disk, one folder per sandbox: its config, its input (scripts, read-only
inside), its memory limit and runsc's log of it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from sandbox.adapters.private import create_private_file
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

    def fresh_log_file(self, sandbox_id: str) -> Path:
        """An empty runsc log, private: runsc would create it readable by everyone."""
        log_file = self.log_file(sandbox_id)
        log_file.unlink(missing_ok=True)
        create_private_file(log_file)
        return log_file

    def record_platform(self, sandbox_id: str, platform: str) -> None:
        """The platform the sandbox runs on, kept so that a server started after a crash
        checkpoints it for a restore on the same platform."""
        _write_private(self.path(sandbox_id) / "platform", platform)

    def platform(self, sandbox_id: str) -> str:
        """The recorded platform, or "" when none was (a bundle older than the record)."""
        try:
            return (self.path(sandbox_id) / "platform").read_text().strip()
        except OSError:
            return ""

    def egress_dir(self, sandbox_id: str) -> Path:
        """Where the sandbox's egress proxy puts its socket (mounted at oci.EGRESS_DIR)."""
        return self.path(sandbox_id) / "egress"

    def write(
        self, spec: SandboxSpec, program: Program, cgroups_path: str, agent_dir: Path | None = None
    ) -> Path:
        bundle = self.path(spec.sandbox_id)
        input_dir = bundle / "input"
        # runsc reads the bundle as root, so it is the server's user's alone (its config
        # holds the session's env values). Inside, the sandbox's user reads its scripts
        # through the read-only input mount, which shows the host's modes: 0755 and 0644.
        bundle.mkdir(mode=0o700)
        bundle.chmod(0o700)
        input_dir.mkdir(mode=0o755)
        input_dir.chmod(0o755)
        if program.language is not None:
            self.write_script(spec.sandbox_id, program)
        egress_dir = None
        if spec.network_allow and agent_dir is not None:
            egress_dir = self.egress_dir(spec.sandbox_id)
            egress_dir.mkdir(mode=0o700)
            os.chown(egress_dir, oci.RELAY_UID, oci.RELAY_UID)
        config = oci.build_config(spec, program, self.rootfs, input_dir, cgroups_path,
                                  agent_dir, egress_dir)
        _write_private(bundle / "config.json", json.dumps(config))
        memory_bytes = spec.limits.memory_mb * 1024 * 1024
        _write_private(bundle / "limits.json", json.dumps({"memory_bytes": memory_bytes}))
        return bundle

    def write_script(self, sandbox_id: str, program: Program) -> None:
        """The program's script where its sandbox finds it (read-only inside; a running
        sandbox sees it at once)."""
        assert program.language is not None
        script = self.path(sandbox_id) / "input" / oci.script_name(program.language)
        script.write_bytes(program.source)
        script.chmod(0o644)

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


def _write_private(path: Path, text: str) -> None:
    create_private_file(path)
    path.write_text(text)
