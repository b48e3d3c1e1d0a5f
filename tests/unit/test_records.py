from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.adapters import records
from sandbox.domain.model import Language, Limits, Sandbox, SandboxKind, SandboxState
from sandbox.domain.reasons import ReasonCode

texts = st.text()
numbers = st.floats(allow_nan=False, allow_infinity=False)
pairs = st.lists(st.tuples(texts, texts), max_size=4).map(tuple)

limits = st.builds(
    Limits, timeout_s=numbers, memory_mb=st.integers(), cpus=numbers, pids=st.integers(),
    open_files=st.integers(), file_size_mb=st.integers(), tmp_mb=st.integers(),
    output_bytes=st.integers(),
)

# Any values will do: records keep whatever limits they are given.
LIMITS = Limits(timeout_s=30, memory_mb=512, cpus=1, pids=256, open_files=1024, file_size_mb=256,
                tmp_mb=256, output_bytes=1024)

sandboxes = st.builds(
    Sandbox,
    sandbox_id=texts, kind=st.sampled_from(SandboxKind), state=st.sampled_from(SandboxState),
    language=st.none() | st.sampled_from(Language), limits=limits, created_at=numbers,
    updated_at=numbers, exit_code=st.none() | st.integers(), reason=texts,
    reason_code=st.none() | st.sampled_from(ReasonCode), env=pairs,
    package_dirs=st.lists(texts, max_size=3).map(tuple),
    idle_timeout_s=st.none() | numbers, last_activity_at=numbers, run_seconds=numbers,
    running_since=st.none() | numbers, checkpoint=st.none() | texts,
    checkpoint_identity=pairs,
)


@settings(max_examples=50)
@given(sandboxes)
def test_every_record_loads_back_as_it_was_dumped(sandbox: Sandbox) -> None:
    assert records.load(records.dump(sandbox)) == sandbox


def test_a_dumped_record_is_a_json_object_with_every_field() -> None:
    sandbox = Sandbox(sandbox_id="a" * 24, kind=SandboxKind.SCRIPT, state=SandboxState.EXITED,
                      language=Language.PYTHON, limits=LIMITS, created_at=1.5, updated_at=2.5,
                      exit_code=0, env=(("K", "V"),))

    dumped = json.loads(records.dump(sandbox))

    assert set(dumped) == {field.name for field in dataclasses.fields(Sandbox)}
    assert (dumped["kind"], dumped["state"], dumped["language"]) == ("script", "exited", "python")
    assert dumped["env"] == [["K", "V"]]


def test_a_field_the_record_does_not_know_is_ignored_on_load() -> None:
    """A record written by a later version still loads."""
    sandbox = Sandbox(sandbox_id="b" * 24, kind=SandboxKind.SESSION, state=SandboxState.RUNNING,
                      language=None, limits=LIMITS, created_at=1.0, updated_at=1.0)
    dumped = json.loads(records.dump(sandbox))

    loaded = records.load(json.dumps({**dumped, "added_later": {"x": 1}}))

    assert loaded == sandbox


def test_a_record_written_before_reason_codes_loads_without_one() -> None:
    sandbox = Sandbox(sandbox_id="c" * 24, kind=SandboxKind.SCRIPT, state=SandboxState.EXITED,
                      language=Language.BASH, limits=LIMITS, created_at=1.0, updated_at=1.0,
                      reason="exited with code 0")
    dumped = json.loads(records.dump(sandbox))
    del dumped["reason_code"]

    loaded = records.load(json.dumps(dumped))

    assert (loaded.reason, loaded.reason_code) == ("exited with code 0", None)
