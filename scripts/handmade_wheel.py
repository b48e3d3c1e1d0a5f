"""Real wheels made by hand (a zip of the package, METADATA, WHEEL and RECORD), so that
the package tests and the benchmark need no index and run no build."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def write_wheel(folder: Path, name: str, files: dict[str, str], requires: tuple[str, ...] = (),
                version: str = "1.0", compressed: bool = False) -> None:
    """A real wheel, made by hand: a zip of the package, METADATA, WHEEL and RECORD.
    `compressed` deflates its files (a few KB can then unpack to many MB)."""
    info = f"{name}-{version}.dist-info"
    metadata = "".join(
        [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
         *(f"Requires-Dist: {requirement}\n" for requirement in requires)]
    )
    contents = {
        **files,
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: handmade\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = [f"{path},sha256={_digest(text)},{len(text.encode())}"
              for path, text in contents.items()]
    contents[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w", method) as wheel:
        for path, text in contents.items():
            wheel.writestr(path, text)


def _digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
