"""Folders and files that only the server's user may read, whatever the umask.

The state folder holds what sessions were given (env values, often secrets), their scripts,
their output, and checkpoints (a sandbox's whole memory). Created with the umask, they would
be 0755/0644 on a bare host: readable by every local user. Each start sets the modes again, so
that a folder made by an older version, or by hand, is tightened too.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: Path) -> Path:
    """Make the folder if it is missing (parents too) and set it to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    _set_mode(path, FOLDER_MODE)
    return path


def private_files(*paths: Path) -> None:
    """Set each file that exists to 0600."""
    for path in paths:
        if path.exists():
            _set_mode(path, FILE_MODE)


def private_tree_files(folder: Path) -> int:
    """Set every file directly in each subfolder of `folder` to 0600 (checkpoint images:
    one subfolder per sandbox); return how many files were seen."""
    seen = 0
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.is_symlink():
            _set_mode(sub, FOLDER_MODE)
            for entry in sub.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    _set_mode(entry, FILE_MODE)
                    seen += 1
    return seen


def create_private_file(path: Path) -> None:
    """Create an empty file with mode 0600 unless it exists; its mode is set either way."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE))
    _set_mode(path, FILE_MODE)


def _set_mode(path: Path, mode: int) -> None:
    # Some mounted buckets refuse chmod: the server can still work, an operator must know.
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError as error:
        log.warning("state.mode_not_set", path=str(path), mode=oct(mode), error=str(error))
