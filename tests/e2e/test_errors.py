from __future__ import annotations

from pathlib import Path

from dependency_injector import providers

from e2e.support import fake_settings, local_client
from sandbox.adapters.memory_store import InMemorySandboxStore
from sandbox.containers import Container
from sandbox.domain.errors import SandboxError, StoreUnavailable
from sandbox.domain.model import Sandbox, SandboxState
from sandbox.entrypoints.app import create_app
from sandbox.entrypoints.errors import STATUS_BY_CODE


def every_error_class(base: type[SandboxError] = SandboxError) -> list[type[SandboxError]]:
    return [
        kind
        for subclass in base.__subclasses__()
        for kind in (subclass, *every_error_class(subclass))
    ]


def test_every_domain_error_code_has_a_status() -> None:
    unmapped = {kind.code for kind in every_error_class()} - STATUS_BY_CODE.keys()

    assert unmapped == set()


class StoreThatGoesAway(InMemorySandboxStore):
    unreachable = False

    async def list(self, state: SandboxState | None = None) -> list[Sandbox]:
        if self.unreachable:
            raise StoreUnavailable("the PostgreSQL database sandbox on db is unavailable")
        return await super().list(state)


def test_a_store_that_cannot_be_reached_is_a_503_with_retry_after(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    container = Container(settings=settings)
    store = StoreThatGoesAway()
    container.store.override(providers.Object(store))

    with local_client(create_app(settings, container)) as client:
        store.unreachable = True
        response = client.get("/list")
        store.unreachable = False

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "store_unavailable"
