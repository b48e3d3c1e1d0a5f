from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from sandbox.logs import configure_logging


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    structlog_config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()
    root.handlers, root.level = handlers, level


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_lines_carry_the_event_level_time_and_bound_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info")
    structlog.contextvars.bind_contextvars(request_id="r1", sandbox_id="s1")

    structlog.get_logger("sandbox.test").info("sandbox.suspended", ms=12)

    [line] = json_lines(capsys)
    assert line["event"] == "sandbox.suspended"
    assert (line["level"], line["ms"]) == ("info", 12)
    assert (line["request_id"], line["sandbox_id"]) == ("r1", "s1")
    assert isinstance(line["timestamp"], str)
    assert datetime.datetime.fromisoformat(line["timestamp"]).tzinfo is not None


def test_uvicorns_stdlib_loggers_go_through_the_same_processors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info")
    structlog.contextvars.bind_contextvars(request_id="r2")

    logging.getLogger("uvicorn.error").warning("Started server process [%d]", 42)

    [line] = json_lines(capsys)
    assert line["event"] == "Started server process [42]"
    assert (line["level"], line["logger"], line["request_id"]) == ("warning", "uvicorn.error", "r2")


def test_exceptions_are_rendered_into_the_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")

    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        structlog.get_logger().exception("http.unexpected_error")

    [line] = json_lines(capsys)
    assert "ZeroDivisionError: boom" in str(line["exception"])


def test_lines_below_the_level_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "warning")

    structlog.get_logger().info("quiet.structlog")
    logging.getLogger("uvicorn").info("quiet stdlib")
    structlog.get_logger().warning("loud")

    assert [line["event"] for line in json_lines(capsys)] == ["loud"]


def test_console_format_is_readable_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "debug")

    structlog.get_logger().debug("server.starting", port=8080)

    output = capsys.readouterr().out
    assert "server.starting" in output
    assert "port=8080" in output
    assert not output.startswith("{")


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="verbose"):
        configure_logging("json", "verbose")
