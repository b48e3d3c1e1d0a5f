"""Code contexts through a real server (`python -m sandbox` on real gVisor): a streamed cell
sends its figure as it is made, and a client that leaves mid-cell gets the cell interrupted,
the context kept."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration.pngs import png_pixels
from integration.server import destroy_leftovers, eventually, ok, serving
from sandbox.settings import Settings

pytestmark = pytest.mark.runsc


@pytest.fixture(autouse=True)
def cleaned_up(settings: Settings) -> Iterator[None]:
    yield
    destroy_leftovers(settings)


def context_in(client: httpx.Client) -> tuple[str, str]:
    sandbox_id = ok(client.post("/sandboxes", json={}), 201)["sandbox_id"]
    context = ok(client.post(f"/sandboxes/{sandbox_id}/contexts", json={"language": "python"}),
                 201)
    return sandbox_id, context["context_id"]


def run(client: httpx.Client, base: str, code: str) -> dict[str, Any]:
    return ok(client.post(f"{base}/run", json={"code": code}))


def test_a_streamed_cell_sends_output_a_figure_and_its_end(
    settings: Settings, tmp_path: Path
) -> None:
    with serving(settings, tmp_path / "server.log") as server:
        sandbox_id, context_id = context_in(server.client)
        base = f"/sandboxes/{sandbox_id}/contexts/{context_id}"
        with server.client.stream(
            "POST", f"{base}/run", params={"stream": "true"},
            json={"code": "import matplotlib.pyplot as plt\nprint('plotting')\n"
                          "plt.plot([1, 2, 3])\nplt.show()\nprint('done')"},
        ) as response:
            events = [json.loads(line) for line in response.iter_lines()]
        listed = ok(server.client.get(f"/sandboxes/{sandbox_id}/contexts"))
        ok(server.client.delete(f"/sandboxes/{sandbox_id}"))

    assert [event["type"] for event in events] == ["start", "stdout", "result", "stdout",
                                                   "end"]
    assert (events[1]["data"], events[3]["data"]) == ("plotting\n", "done\n")
    width, height = png_pixels(base64.b64decode(events[2]["image/png"]))
    assert width > 100 and height > 100
    assert events[-1]["execution_count"] == 1
    assert [context["context_id"] for context in listed["contexts"]] == [context_id]


def test_a_client_that_leaves_mid_cell_gets_the_cell_interrupted_and_the_context_kept(
    settings: Settings, tmp_path: Path
) -> None:
    with serving(settings, tmp_path / "server.log") as server:
        client = server.client
        sandbox_id, context_id = context_in(client)
        base = f"/sandboxes/{sandbox_id}/contexts/{context_id}"
        run(client, base, "kept = 'still here'")
        with client.stream("POST", f"{base}/run", params={"stream": "true"},
                           json={"code": "while True: pass"}) as response:
            first = next(response.iter_lines())  # the cell runs; then the client goes

        def answered() -> dict[str, Any] | None:
            response = client.post(f"{base}/run", json={"code": "kept"})
            return response.json() if response.status_code == 200 else None

        after = eventually(answered, within_s=60, what="the context taking cells again")
        ok(client.delete(f"/sandboxes/{sandbox_id}"))

    assert json.loads(first)["type"] == "start"
    assert after["results"][0]["text/plain"] == "'still here'"
