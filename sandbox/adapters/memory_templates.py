"""In-memory template records and images, for unit tests: an image's state is kept in
memory, its content in a folder under `root`, where the fake runtime writes it."""

from __future__ import annotations

import shutil
from pathlib import Path

from sandbox.domain.errors import InvalidState, RuntimeFailure
from sandbox.domain.model import Template
from sandbox.domain.ports import TemplateImages, TemplateStore


class InMemoryTemplateStore(TemplateStore):
    def __init__(self) -> None:
        self.records: dict[str, Template] = {}

    async def add(self, template: Template) -> None:
        if template.template_id in self.records:
            raise InvalidState(f"template {template.template_id} exists already")
        self.records[template.template_id] = template

    async def get(self, template_id: str) -> Template | None:
        return self.records.get(template_id)

    async def remove(self, template_id: str) -> None:
        self.records.pop(template_id, None)

    async def list(self) -> list[Template]:
        return sorted(self.records.values(), key=lambda template: template.created_at)


class InMemoryTemplateImages(TemplateImages):
    """Keys and their state: `prepared` until published, then `published`."""

    def __init__(self, root: Path) -> None:
        self.images: dict[str, str] = {}
        self._root = root

    async def prepare(self, key: str) -> str:
        self.images[key] = "prepared"
        return self._name(key)

    async def publish(self, key: str) -> None:
        if key not in self.images:
            raise RuntimeFailure(f"no image {key} was prepared")
        self.images[key] = "published"

    async def local(self, key: str) -> str:
        if key not in self.images:
            raise RuntimeFailure(f"there is no image {key}")
        return self._name(key)

    async def remove(self, key: str) -> None:
        self.images.pop(key, None)
        shutil.rmtree(self._name(key), ignore_errors=True)

    async def keys(self) -> set[str]:
        return set(self.images)

    def _name(self, key: str) -> str:
        return str(self._root / f"memory-image-{key}")
