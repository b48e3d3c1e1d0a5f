"""The strict decoding of what a code context's kernel sends (it runs the tenant's cells)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sandbox.adapters.runsc import kernel_frames as frames
from sandbox.adapters.runsc.inside import kernel_layout as layout
from sandbox.adapters.runsc.kernel_frames import FrameReader, KernelViolation
from sandbox.domain import cells
from sandbox.domain.cells import CellError

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()


def frame(kind: int, cell: int, payload: bytes) -> bytes:
    body = layout.HEAD.pack(kind, cell) + payload
    return layout.LENGTH.pack(len(body)) + body


def result(data: Any, main: Any = False, truncated: Any = False, **extra: Any) -> bytes:
    return json.dumps({"data": data, "main": main, "truncated": truncated, **extra}).encode()


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    stream = frame(layout.STDOUT, 7, b"hello") + frame(layout.END, 7, b"{}")
    reader = FrameReader()

    found = [item for byte in range(len(stream))
             for item in reader.feed(stream[byte:byte + 1], 1000)]

    assert [(item.kind, item.cell, item.payload) for item in found] == [
        (layout.STDOUT, 7, b"hello"), (layout.END, 7, b"{}")]
    assert reader.holding == 0


def test_a_frame_announced_over_the_limit_is_refused_before_its_body_arrives() -> None:
    reader = FrameReader()

    with pytest.raises(KernelViolation, match="a frame of 100001 bytes"):
        reader.feed(layout.LENGTH.pack(100_001), 100_000)


@pytest.mark.parametrize("header", [layout.LENGTH.pack(0), layout.LENGTH.pack(8)])
def test_a_frame_too_short_for_its_head_is_refused(header: bytes) -> None:
    with pytest.raises(KernelViolation):
        FrameReader().feed(header + b"\0" * 8, 1000)


@pytest.mark.parametrize("kind", [0, layout.END + 1, 255])
def test_a_frame_of_unknown_kind_is_refused(kind: int) -> None:
    with pytest.raises(KernelViolation, match="unknown kind"):
        FrameReader().feed(frame(kind, 1, b""), 1000)


def test_a_result_becomes_the_bundle_it_carries() -> None:
    decoded = frames.result(result({"text/plain": "<Figure>", "image/png": PNG,
                                    "application/json": {"a": [1, 2.5, None]}}, main=True))

    assert decoded.data == {"text/plain": "<Figure>", "image/png": PNG,
                            "application/json": {"a": [1, 2.5, None]}}
    assert (decoded.is_main_result, decoded.truncated) == (True, False)


BAD_RESULTS = [
    (result({"text/plain": "x", "application/javascript": "alert(1)"}), "MIME"),
    (result({"text/html": "<b>no plain text</b>"}), "text/plain"),
    (result({"text/plain": 42}), "text/plain"),
    (result({"text/plain": "x", "image/png": "not base64!"}), "base64"),
    (result({"text/plain": "x", "image/png": PNG[:-1]}), "base64"),
    (result({"text/plain": "x", "image/jpeg": 7}), "not text"),
    (result({"text/plain": "x"}, main="yes"), "true or false"),
    (result({"text/plain": "x"}, extra=1), "shape"),
    (b'{"data": {"text/plain": "x"}, "main": false}', "shape"),
    (b'{"data": {"text/plain": "x"}, "main": false, "truncated": false, "main": true}',
     "not JSON"),
    (b'{"data": {"text/plain": "x", "application/json": NaN}, "main": false, '
     b'"truncated": false}', "not JSON"),
    (b'{"data": {"text/plain": "\\ud800"}, "main": false, "truncated": false}', "valid text"),
    (b'{"data": {"text/plain": "x", "application/json": {"\\udfff": 1}}, "main": false, '
     b'"truncated": false}', "valid text"),
    (b"\xff\xfe not utf-8", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (b"[]", "shape"),
]


@pytest.mark.parametrize(("payload", "says"), BAD_RESULTS)
def test_a_result_out_of_shape_is_a_violation(payload: bytes, says: str) -> None:
    with pytest.raises(KernelViolation, match=says):
        frames.result(payload)


def test_an_error_becomes_its_name_value_and_traceback() -> None:
    payload = json.dumps({"name": "ValueError", "value": "bad", "traceback": "Trace"}).encode()

    assert frames.error(payload) == CellError("ValueError", "bad", "Trace")


@pytest.mark.parametrize("payload", [
    {"name": "", "value": "v", "traceback": "t"},
    {"name": "N" * 1001, "value": "v", "traceback": "t"},
    {"name": "E", "value": None, "traceback": "t"},
    {"name": "E", "value": "v"},
])
def test_an_error_out_of_shape_is_a_violation(payload: dict[str, Any]) -> None:
    with pytest.raises(KernelViolation):
        frames.error(json.dumps(payload).encode())


@pytest.mark.parametrize("count", [-1, True, 2**31, "3", 1.5])
def test_an_end_must_carry_a_count(count: object) -> None:
    payload = json.dumps({"execution_count": count, "results_truncated": False}).encode()

    with pytest.raises(KernelViolation, match="count"):
        frames.end(payload)


def test_an_end_says_the_count_and_whether_results_were_left_out() -> None:
    payload = json.dumps({"execution_count": 3, "results_truncated": True}).encode()

    assert frames.end(payload) == frames.CellEnd(3, True)


def test_the_kernel_offers_exactly_the_mime_types_the_service_takes() -> None:
    assert set(layout.TEXT_TYPES) == cells.TEXT_TYPES
    assert set(layout.BASE64_TYPES) == cells.BASE64_TYPES
    assert layout.JSON_TYPE == cells.JSON_TYPE
