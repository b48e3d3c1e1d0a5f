from __future__ import annotations

from starlette.testclient import TestClient


def test_an_unknown_route_is_a_404_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/nowhere")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no such route: /nowhere"}}


def test_a_wrong_method_is_a_405_that_names_the_allowed_one(client: TestClient) -> None:
    response = client.get("/execute?language=python")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"
