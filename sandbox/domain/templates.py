"""Where templates are kept: the two ports the use cases and the warm pools reach them by."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.domain.ports import TemplateImages, TemplateStore


@dataclass(frozen=True)
class Templates:
    """Their records, and their images."""

    store: TemplateStore
    images: TemplateImages
