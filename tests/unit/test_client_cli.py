"""sbx against a made-up service, for what the server does not route yet (code contexts,
snapshot, fork, templates; issue 11) and for what is easier to see in-process. The commands
that the server routes today are tested against it in tests/e2e/test_cli.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from client_support import SANDBOX_ID, FakeApi, ndjson, record

from sandbox_client.cli.code import language_of
from sandbox_client.cli.main import cli
from sandbox_client.cli.transfer import parse

BASE = f"/sandboxes/{SANDBOX_ID}"
CONTEXT = f"{BASE}/contexts/c1"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(30))


def cell(**fields: object) -> dict[str, object]:
    return {"execution_count": 1, "results": [], "stdout": "", "stderr": "", "error": None,
            **fields}


def sbx(api: FakeApi, *args: str, stdin: str = "") -> tuple[int, str, str]:
    runner = CliRunner()
    done = runner.invoke(cli, list(args), input=stdin, obj=api.config())
    return done.exit_code, done.stdout, done.stderr


def test_repl_runs_each_complete_statement_as_a_cell_and_saves_figures(tmp_path: Path) -> None:
    figure = {"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"}
    api = (FakeApi()
           .on("GET", BASE, json=record())
           .on("POST", f"{BASE}/contexts", status_code=201, json={"context_id": "c1"})
           .on("POST", f"{CONTEXT}/run", content=ndjson({"type": "end"}))
           .on("POST", f"{CONTEXT}/run", content=ndjson(
               {"type": "stdout", "data": "0\n1\n"}, {"type": "end", "execution_count": 2}))
           .on("POST", f"{CONTEXT}/run", content=ndjson(
               {"type": "result", **figure}, {"type": "end", "execution_count": 3}))
           .on("POST", f"{CONTEXT}/run", content=ndjson(
               {"type": "result", "text/plain": "41", "is_main_result": True},
               {"type": "error", "name": "ZeroDivisionError", "value": "division by zero",
                "traceback": "Traceback...\nZeroDivisionError: division by zero"},
               {"type": "end", "execution_count": 4}))
           .on("DELETE", CONTEXT, json={"deleted": True}))
    lines = ["x = 1", "for i in range(2):", "    print(i)", "", "plt.plot([1, 2])",
             "x + 40; 1/0"]

    code, stdout, stderr = sbx(api, "repl", SANDBOX_ID, "--plots", str(tmp_path / "plots"),
                               stdin="\n".join(lines) + "\n")

    runs = [json.loads(request.content)["code"] for request in api.requests
            if request.url.path == f"{CONTEXT}/run"]
    assert code == 0
    assert runs == ["x = 1", "for i in range(2):\n    print(i)\n", "plt.plot([1, 2])",
                    "x + 40; 1/0"]
    assert (tmp_path / "plots" / "cell-3-0.png").read_bytes() == PNG
    assert "0\n1\n" in stdout and "41\n" in stdout
    assert "figure saved to" in stderr and "ZeroDivisionError: division by zero" in stderr
    assert (api.last().method, api.last().url.path) == ("DELETE", CONTEXT)


def test_repl_joins_a_context_it_is_named_and_leaves_it(tmp_path: Path) -> None:
    api = (FakeApi()
           .on("GET", BASE, json=record())
           .on("GET", f"{BASE}/contexts", json={"contexts": [{"context_id": "c1"}]})
           .on("POST", f"{CONTEXT}/run", content=ndjson(
               {"type": "result", "text/plain": "1"}, {"type": "end"})))

    code, stdout, _ = sbx(api, "repl", SANDBOX_ID, "--context", "c1", stdin="x\n")
    missing, _, stderr = sbx(api, "repl", SANDBOX_ID, "--context", "c9", stdin="x\n")

    assert (code, missing) == (0, 2)
    assert "1\n" in stdout
    assert "no context c9" in stderr
    assert all(request.method != "DELETE" for request in api.requests)


def test_snapshot_fork_and_templates() -> None:
    forks = [record(sandbox_id="b" * 24), record(sandbox_id="c" * 24)]
    api = (FakeApi()
           .on("GET", BASE, json=record())
           .on("POST", f"{BASE}/snapshot", status_code=201, json={"template_id": "t1"})
           .on("POST", f"{BASE}/fork", status_code=201, json={"sandboxes": forks})
           .on("GET", "/templates", json={"templates": [
               {"template_id": "t1", "sandbox_id": SANDBOX_ID,
                "created_at": "2026-01-02T03:04:05+00:00"}]})
           .on("DELETE", "/templates/t1", json={"deleted": True}))

    snapshot = sbx(api, "snapshot", SANDBOX_ID)
    fork = sbx(api, "fork", SANDBOX_ID, "-n", "2")
    fork_json = sbx(api, "fork", SANDBOX_ID, "--json")
    table = sbx(api, "template", "ls")
    removed = sbx(api, "template", "rm", "t1")

    assert snapshot == (0, "t1\n", "")
    assert fork[:2] == (0, f"{'b' * 24}\n{'c' * 24}\n")
    assert [item["sandbox_id"] for item in json.loads(fork_json[1])["sandboxes"]] == [
        "b" * 24, "c" * 24]
    assert "t1" in table[1] and SANDBOX_ID in table[1]
    assert removed == (0, "t1 deleted\n", "")


def test_run_and_create_start_from_a_template() -> None:
    api = (FakeApi()
           .on("POST", "/execute", content=ndjson(
               {"type": "start", "sandbox_id": SANDBOX_ID}, {"type": "stdout", "data": "1\n"},
               {"type": "exit", "exit_code": 0}))
           .on("POST", "/sandboxes", status_code=201, json=record()))

    ran = sbx(api, "run", "--template", "t1", "-", "--language", "python", stdin="print(x)")
    created = sbx(api, "create", "--template", "t1", "--packages", "six,tablib")

    assert ran[:2] == (0, "1\n")
    assert api.requests[0].url.params["template"] == "t1"
    assert created[:2] == (0, f"{SANDBOX_ID}\n")
    assert api.sent_json() == {"language": "python", "template": "t1",
                               "packages": ["six", "tablib"]}


@pytest.mark.parametrize(("location", "parsed"), [
    (f"{SANDBOX_ID}:/tmp/x", (SANDBOX_ID, "/tmp/x")),
    (f"{SANDBOX_ID}:notes/a:b.txt", (SANDBOX_ID, "notes/a:b.txt")),
    ("C:notes.txt", None),
    ("./a" + SANDBOX_ID + ":x", None),
    (f"{SANDBOX_ID}:", None),
])
def test_a_sandbox_side_of_cp_is_an_id_a_colon_and_a_path(
    location: str, parsed: tuple[str, str] | None
) -> None:
    found = parse(location)

    assert (None if found is None else (found.sandbox_id, found.path)) == parsed


@pytest.mark.parametrize(("name", "given", "language"), [
    ("job.py", None, "python"), ("JOB.PY", None, "python"), ("x.sh", None, "bash"),
    ("x.bash", None, "bash"), ("x.txt", "bash", "bash"), ("<stdin>", "python", "python"),
])
def test_the_language_comes_from_the_extension_unless_given(
    name: str, given: str | None, language: str
) -> None:
    assert language_of(name, given) == language


def test_env_options_must_be_name_equals_value() -> None:
    api = FakeApi()

    code, _, stderr = sbx(api, "exec", SANDBOX_ID, "-e", "NOEQUALS", "--", "ls")

    assert code == 2 and "NAME=VALUE" in stderr
    assert api.requests == []
