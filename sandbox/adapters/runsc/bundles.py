"""OCI bundles on disk, one folder per sandbox: its config, its input (scripts, read-only
inside), its memory limit and runsc's log of it."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Any

from sandbox.adapters.runsc import oci
from sandbox.adapters.runsc.cli import first_error
from sandbox.domain.errors import RuntimeFailure
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

    def write(self, spec: SandboxSpec, program: Program, cgroups_path: str) -> Path:
        bundle = self.path(spec.sandbox_id)
        input_dir = bundle / "input"
        bundle.mkdir(mode=0o711)
        input_dir.mkdir(mode=0o755)
        if program.language is not None:
            script = input_dir / oci.script_name(program.language)
            script.write_bytes(program.source)
            script.chmod(0o644)
        config = oci.build_config(spec, program, self.rootfs, input_dir, cgroups_path)
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

    def exec_files(self, sandbox_id: str, program: Program) -> list[Path]:
        """The files of one exec: its OCI process (the init's user, rlimits and capabilities,
        with the program's argv and env), the file runsc writes its pid to, and its script,
        in the read-only input folder. The caller removes them afterwards."""
        process = self._init_process(sandbox_id)
        made = self._exec_paths(sandbox_id)
        if program.language is not None:
            script = self.path(sandbox_id) / "input" / \
                f"{made[0].stem}-{oci.script_name(program.language)}"
            script.write_bytes(program.source)
            script.chmod(0o644)
            process["args"] = [oci.program_argv(program)[0], f"{oci.INPUT_DIR}/{script.name}"]
            made.append(script)
        else:
            process["args"] = list(program.argv)
        process["env"] = [*process["env"], *(f"{k}={v}" for k, v in program.env)]
        made[0].write_text(json.dumps(process))
        return made

    def helper_files(self, sandbox_id: str, argv: list[str], env: list[str]) -> list[Path]:
        """The files of a helper of the service's own (the file calls): the init's user,
        rlimits and capabilities, but its own argv and environment, and `/` as its working
        folder, so that nothing the sandbox's code or its session set (PYTHONPATH, a folder
        full of modules) reaches it. The caller removes them afterwards."""
        process = self._init_process(sandbox_id)
        made = self._exec_paths(sandbox_id)
        process.update(args=argv, env=env, cwd="/")
        made[0].write_text(json.dumps(process))
        return made

    def _init_process(self, sandbox_id: str) -> dict[str, Any]:
        try:
            config = json.loads((self.path(sandbox_id) / "config.json").read_text())
            process: dict[str, Any] = config["process"]
        except (OSError, ValueError, KeyError):
            raise RuntimeFailure(f"sandbox {sandbox_id} has no bundle on this host") from None
        return process

    def _exec_paths(self, sandbox_id: str) -> list[Path]:
        """Where one exec's OCI process and pid go, under a name no other exec has."""
        token = secrets.token_hex(8)
        bundle = self.path(sandbox_id)
        return [bundle / f"exec-{token}.json", bundle / f"exec-{token}.pid"]
