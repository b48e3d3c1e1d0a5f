"""The shared state of one instance on its own (the embedded default): records, leases and
handoff requests in the SQLite database of the state folder, signals within the process,
checkpoint images in SANDBOX_CHECKPOINT_DIR. For tools and tests that build the use cases
without the container (which picks the same adapters)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sandbox.adapters.folder_image_store import FolderImageStore
from sandbox.adapters.memory_signals import InMemorySignals
from sandbox.adapters.sqlite_db import SqliteDatabase
from sandbox.adapters.sqlite_handoffs import SqliteHandoffRequests
from sandbox.adapters.sqlite_leases import SqliteLeaseStore
from sandbox.adapters.sqlite_store import SqliteSandboxStore
from sandbox.domain.lifecycle.sandboxes import SharedState
from sandbox.settings import Settings


@dataclass(frozen=True)
class Embedded:
    store: SqliteSandboxStore
    shared: SharedState


def image_store(settings: Settings) -> FolderImageStore:
    """Images in SANDBOX_CHECKPOINT_DIR, fetched into this instance's own folder."""
    return FolderImageStore(settings.checkpoints, settings.state_dir / "image-copies")


@contextlib.asynccontextmanager
async def embedded_state(settings: Settings) -> AsyncIterator[Embedded]:
    database = SqliteDatabase(settings.state_dir / "sandboxes.db")
    try:
        images = image_store(settings)
        await images.start()
        yield Embedded(SqliteSandboxStore(database), SharedState(
            images=images, leases=SqliteLeaseStore(database),
            handoffs=SqliteHandoffRequests(database), signals=InMemorySignals(),
            instance_id=settings.owner_id(),
        ))
    finally:
        database.close()
