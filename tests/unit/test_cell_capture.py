"""A cell's answer: output capped per stream, results within their cap, the error said last."""

from __future__ import annotations

import pytest

from sandbox.domain.cell_capture import CellCapture, CellListener
from sandbox.domain.cells import CellError, CellLimits, CellOutcome, CellResult
from sandbox.domain.model import Stream

pytestmark = pytest.mark.anyio

LIMITS = CellLimits(timeout_s=5, output_bytes=10, result_bytes=100)
FIGURE = CellResult({"text/plain": "<Figure>", "image/png": "A" * 60, "text/html": "h" * 20})


class Heard(CellListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    async def started(self, sandbox_id: str, context_id: str) -> None:
        self.events.append(("start", (sandbox_id, context_id)))

    async def output(self, stream: Stream, text: str) -> None:
        self.events.append((stream.value, text))

    async def result(self, result: CellResult) -> None:
        self.events.append(("result", result.data))

    async def error(self, error: CellError) -> None:
        self.events.append(("error", error.name))


async def test_output_past_the_cap_is_cut_and_flagged_per_stream() -> None:
    capture = CellCapture("s", "c", LIMITS)

    await capture.output(Stream.STDOUT, b"0123456789abc")
    await capture.output(Stream.STDERR, b"short")
    run = await capture.finish(CellOutcome(1))

    assert (run.stdout.text, run.stdout.truncated) == ("0123456789", True)
    assert (run.stderr.text, run.stderr.truncated) == ("short", False)


async def test_results_that_fit_are_kept_whole_and_in_order() -> None:
    capture = CellCapture("s", "c", LIMITS)

    await capture.result(CellResult({"text/plain": "1"}))
    await capture.result(CellResult({"text/plain": "2"}, is_main_result=True))
    run = await capture.finish(CellOutcome(1))

    assert [(result.data, result.is_main_result) for result in run.results] == [
        ({"text/plain": "1"}, False), ({"text/plain": "2"}, True)]
    assert run.results_truncated is False


async def test_a_result_over_what_is_left_loses_its_largest_representations_first() -> None:
    capture = CellCapture("s", "c", LIMITS)
    await capture.result(CellResult({"text/plain": "x" * 30}))

    await capture.result(FIGURE)  # 88 bytes, 70 left: the PNG goes, the HTML stays
    run = await capture.finish(CellOutcome(1))

    assert run.results[1].data == {"text/plain": "<Figure>", "text/html": "h" * 20}
    assert (run.results[0].truncated, run.results[1].truncated) == (False, True)
    assert run.results_truncated is True


async def test_text_is_cut_when_even_alone_it_does_not_fit_and_then_results_are_dropped() -> None:
    capture = CellCapture("s", "c", LIMITS)

    await capture.result(CellResult({"text/plain": "é" * 60}))  # 120 bytes
    await capture.result(CellResult({"text/plain": "more"}))
    run = await capture.finish(CellOutcome(1))

    assert [result.data for result in run.results] == [{"text/plain": "é" * 50}]
    assert run.results[0].truncated is True
    assert run.results_truncated is True


async def test_the_kernels_own_word_that_it_left_results_out_is_kept() -> None:
    run = await CellCapture("s", "c", LIMITS).finish(CellOutcome(1, results_truncated=True))

    assert run.results_truncated is True


async def test_the_cells_own_exception_is_its_error_told_last() -> None:
    heard = Heard()
    capture = CellCapture("s", "c", LIMITS, heard)

    await capture.started()
    await capture.error(CellError("ValueError", "bad", "Traceback"))
    await capture.result(CellResult({"text/plain": "after"}))
    run = await capture.finish(CellOutcome(4))

    assert run.error == CellError("ValueError", "bad", "Traceback")
    assert heard.events == [("start", ("s", "c")), ("result", {"text/plain": "after"}),
                            ("error", "ValueError")]


async def test_a_timed_out_cell_ends_with_a_timeout_error_keeping_the_traceback() -> None:
    capture = CellCapture("s", "c", LIMITS)

    await capture.error(CellError("KeyboardInterrupt", "", "Trace of the loop"))
    run = await capture.finish(CellOutcome(2, timed_out=True))

    assert run.error is not None
    assert (run.error.name, run.error.traceback) == ("TimeoutError", "Trace of the loop")
    assert run.error.value == "the cell ran past its timeout of 5 s and was interrupted"


async def test_a_timeout_that_needed_a_restart_says_the_variables_are_gone() -> None:
    run = await CellCapture("s", "c", LIMITS).finish(CellOutcome(None, timed_out=True,
                                                            restarted=True))

    assert run.error is not None
    assert "did not stop" in run.error.value and "variables" in run.error.value


async def test_an_interpreter_that_ended_is_told_as_context_died() -> None:
    run = await CellCapture("s", "c", LIMITS).finish(CellOutcome(None, restarted=True,
                                                            ended="exited with code 3"))

    assert run.error is not None
    assert run.error.name == "ContextDied"
    assert run.error.value.startswith("the context's interpreter exited with code 3; ")


async def test_the_answer_has_the_documented_shape() -> None:
    capture = CellCapture("s", "abc", LIMITS)
    await capture.output(Stream.STDOUT, b"hi\n")
    await capture.result(CellResult({"text/plain": "2"}, is_main_result=True))

    answer = (await capture.finish(CellOutcome(3, duration_ms=12))).to_dict()

    assert answer == {
        "context_id": "abc", "execution_count": 3, "timed_out": False, "restarted": False,
        "stdout_truncated": False, "stderr_truncated": False, "results_truncated": False,
        "duration_ms": 12, "stdout": "hi\n", "stderr": "", "error": None,
        "results": [{"text/plain": "2", "is_main_result": True, "truncated": False}],
    }
