from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from e2e.support import StartService, create_session

BINARY = bytes(range(256)) * 4


@pytest.fixture
def sandbox_id(client: TestClient) -> str:
    return create_session(client)


def test_a_file_round_trips_byte_for_byte(client: TestClient, sandbox_id: str) -> None:
    put = client.put(f"/sandboxes/{sandbox_id}/files/data/blob.bin", content=BINARY)
    get = client.get(f"/sandboxes/{sandbox_id}/files/data/blob.bin")

    assert put.status_code == 201
    assert put.json() == {"path": "/workspace/data/blob.bin", "size": len(BINARY)}
    assert get.status_code == 200
    assert get.headers["Content-Type"] == "application/octet-stream"
    assert get.content == BINARY


def test_relative_and_absolute_paths_name_the_same_file(
    client: TestClient, sandbox_id: str
) -> None:
    client.put(f"/sandboxes/{sandbox_id}/files/notes.txt", content=b"one")

    absolute = client.get(f"/sandboxes/{sandbox_id}/files//workspace/notes.txt")
    dotted = client.get(f"/sandboxes/{sandbox_id}/files/sub/..%2Fnotes.txt")

    assert absolute.content == dotted.content == b"one"


def test_an_empty_file_can_be_written(client: TestClient, sandbox_id: str) -> None:
    put = client.put(f"/sandboxes/{sandbox_id}/files/empty", content=b"")

    assert put.status_code == 201
    assert client.get(f"/sandboxes/{sandbox_id}/files/empty").content == b""


def test_listing_a_folder_names_its_entries(client: TestClient, sandbox_id: str) -> None:
    client.put(f"/sandboxes/{sandbox_id}/files/a.txt", content=b"aaa")
    client.put(f"/sandboxes/{sandbox_id}/files/b.bin", content=BINARY)
    client.put(f"/sandboxes/{sandbox_id}/files//tmp/elsewhere", content=b"x")

    default = client.get(f"/sandboxes/{sandbox_id}/files")
    tmp = client.get(f"/sandboxes/{sandbox_id}/files?path=/tmp")

    assert default.status_code == 200
    assert default.json()["path"] == "/workspace"
    assert [(entry["name"], entry["kind"], entry["size"]) for entry in default.json()["entries"]
            ] == [("a.txt", "file", 3), ("b.bin", "file", len(BINARY))]
    assert set(default.json()["entries"][0]) == {"name", "kind", "size", "modified_at"}
    assert [entry["name"] for entry in tmp.json()["entries"]] == ["elsewhere"]


def test_a_missing_file_is_a_404_file_not_found(client: TestClient, sandbox_id: str) -> None:
    response = client.get(f"/sandboxes/{sandbox_id}/files/nothing-here")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"


@pytest.mark.parametrize("path", ["", "a%00b", "x" * 4097])
def test_a_bad_path_is_a_400(client: TestClient, sandbox_id: str, path: str) -> None:
    put = client.put(f"/sandboxes/{sandbox_id}/files/{path}", content=b"x")
    get = client.get(f"/sandboxes/{sandbox_id}/files/{path}")

    assert (put.status_code, get.status_code) == (400, 400)


@pytest.mark.parametrize("query", ["path=", "path=a%00b", "recursive=true"])
def test_a_bad_listing_query_is_a_400(client: TestClient, sandbox_id: str, query: str) -> None:
    response = client.get(f"/sandboxes/{sandbox_id}/files?{query}")

    assert response.status_code == 400


def test_an_upload_over_the_file_limit_is_a_413(start_service: StartService) -> None:
    client = start_service(max_file_bytes=100).client
    sandbox_id = create_session(client)

    response = client.put(f"/sandboxes/{sandbox_id}/files/big", content=b"x" * 101)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_files_of_an_unknown_sandbox_are_a_404(client: TestClient) -> None:
    unknown = "c" * 24

    responses = [
        client.put(f"/sandboxes/{unknown}/files/a", content=b"x"),
        client.get(f"/sandboxes/{unknown}/files/a"),
        client.get(f"/sandboxes/{unknown}/files"),
    ]

    assert [response.status_code for response in responses] == [404, 404, 404]
    assert {response.json()["error"]["code"] for response in responses} == {"not_found"}


def test_files_of_a_suspended_sandbox_are_a_409(client: TestClient, sandbox_id: str) -> None:
    client.post(f"/sandboxes/{sandbox_id}/suspend")

    responses = [
        client.put(f"/sandboxes/{sandbox_id}/files/a", content=b"x"),
        client.get(f"/sandboxes/{sandbox_id}/files/a"),
        client.get(f"/sandboxes/{sandbox_id}/files"),
    ]

    assert [response.status_code for response in responses] == [409, 409, 409]


def test_files_take_put_and_get_only(client: TestClient, sandbox_id: str) -> None:
    response = client.post(f"/sandboxes/{sandbox_id}/files/a", content=b"x")

    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "PUT"}
