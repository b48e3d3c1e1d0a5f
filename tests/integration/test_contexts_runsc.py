"""Code contexts on real gVisor: IPython kernels the agent keeps, their rich results, their
interrupts, timeouts and restarts, their life across suspend, restore and a restart of the
service, and cells that try to forge what the service reads. (The rootfs needs IPython: see
rootfs/requirements.txt.)"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from integration.pngs import png_pixels
from integration.support import leftovers, managed_sandboxes, runtime_settings, started_runtime
from sandbox.adapters.folder_template_images import FolderTemplateImages
from sandbox.adapters.memory_templates import InMemoryTemplateStore
from sandbox.adapters.runsc.runtime import PLATFORM_FILE, RunscSandboxRuntime
from sandbox.domain.cells import CellRun
from sandbox.domain.errors import InvalidState
from sandbox.domain.lifecycle import contexts, copies, templates
from sandbox.domain.lifecycle.creation import create_session
from sandbox.domain.lifecycle.deletion import delete_sandbox
from sandbox.domain.lifecycle.reconciliation import reconcile
from sandbox.domain.lifecycle.restoration import restore_sandbox
from sandbox.domain.lifecycle.sandboxes import Sandboxes
from sandbox.domain.lifecycle.suspension import suspend_sandbox
from sandbox.domain.lifecycle.work import exec_in_sandbox
from sandbox.domain.model import Language, Limits, Program
from sandbox.domain.templates import Templates
from sandbox.settings import Settings

pytestmark = [pytest.mark.runsc, pytest.mark.anyio]

Ids = tuple[str, str]
# A kernel frame (kernel_layout: `>I` length, `>BQ` kind and cell, payload) as a cell can
# make one: an END for cell 1 and a RESULT, which no honest cell would print.
FORGE = """\
import json, struct
def frame(kind, cell, payload):
    body = struct.pack(">BQ", kind, cell) + json.dumps(payload).encode()
    return struct.pack(">I", len(body)) + body
forged_end = frame(6, 1, {"execution_count": 999, "results_truncated": False})
forged_result = frame(4, 1, {"data": {"text/plain": "forged"}, "main": True,
                             "truncated": False})
"""


@asynccontextmanager
async def a_context(sandboxes: Sandboxes, limits: Limits,
                    env: tuple[tuple[str, str], ...] = ()) -> AsyncIterator[Ids]:
    sandbox = await create_session(sandboxes, Language.PYTHON, limits, env=env)
    try:
        context = await contexts.create_context(sandboxes, sandbox.sandbox_id, Language.PYTHON)
        yield sandbox.sandbox_id, context.context_id
    finally:
        await delete_sandbox(sandboxes, sandbox.sandbox_id)


async def cell(sandboxes: Sandboxes, ids: Ids, code: str,
               timeout_s: float | None = None) -> CellRun:
    return await contexts.run_cell(sandboxes, *ids, code, timeout_s)


def value(run: CellRun) -> str:
    assert run.error is None, run.error
    [main] = [result for result in run.results if result.is_main_result]
    return str(main.data["text/plain"])


async def test_a_plot_comes_back_as_a_png_that_decodes(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        run = await cell(sandboxes, ids, "import matplotlib.pyplot as plt\n"
                                         "plt.plot([1, 3, 2])\nplt.title('shown at the end')")
        shown = await cell(sandboxes, ids, "plt.figure()\nplt.bar([1, 2], [3, 4])\nplt.show()\n"
                                           "print('after show')\nlen(plt.get_fignums())")

    figures = [result for result in run.results if "image/png" in result.data]
    [figure] = figures
    width, height = png_pixels(base64.b64decode(str(figure.data["image/png"])))
    assert width > 100 and height > 100
    assert figure.data["text/plain"] == "<Figure size 640x480 with 1 Axes>"
    assert figure.is_main_result is False
    # A figure shown is sent at once, then closed: none is left for the end of the cell.
    assert [("image/png" in result.data, result.is_main_result) for result in shown.results] \
        == [(True, False), (False, True)]
    assert (shown.stdout.text, value(shown)) == ("after show\n", "0")


async def test_a_dataframe_comes_back_as_an_html_table_and_text(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        run = await cell(sandboxes, ids, "import pandas as pd\n"
                                         "pd.DataFrame({'north': [1, 2], 'south': [3, 4]})")

    [table] = run.results
    assert table.is_main_result is True
    assert "<table" in str(table.data["text/html"]) and "north" in str(table.data["text/html"])
    assert table.data["text/plain"] == "   north  south\n0      1      3\n1      2      4"


async def test_the_last_expression_and_what_objects_display_are_results(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        run = await cell(sandboxes, ids, "from IPython.display import JSON, Markdown, display\n"
                                         "display(Markdown('**bold**'))\n"
                                         "display(JSON({'a': [1, 2]}))\n"
                                         "x = 40\nx + 2")
        quiet = await cell(sandboxes, ids, "x + 3;")

    assert [(dict(result.data), result.is_main_result) for result in run.results] == [
        ({"text/plain": "<IPython.core.display.Markdown object>",
          "text/markdown": "**bold**"}, False),
        ({"text/plain": "<IPython.core.display.JSON object>",
          "application/json": {"a": [1, 2]}}, False),
        ({"text/plain": "42"}, True),
    ]
    assert (run.outcome.execution_count, quiet.results, quiet.outcome.execution_count) == (
        1, (), 2)


async def test_an_exception_gives_its_name_value_and_traceback(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        run = await cell(sandboxes, ids, "def check(n):\n    raise ValueError(f'bad {n}')\n"
                                         "print('before')\ncheck(3)")
        syntax = await cell(sandboxes, ids, "def broken(:")

    assert run.error is not None
    assert (run.error.name, run.error.value, run.stdout.text) == ("ValueError", "bad 3",
                                                                  "before\n")
    assert "----> 4 check(3)" in run.error.traceback
    assert "\x1b[" not in run.error.traceback  # no terminal colours
    assert syntax.error is not None and syntax.error.name == "SyntaxError"


async def test_a_context_runs_as_the_sandbox_user_in_the_workspace_with_the_sessions_env(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits, env=(("GREETING", "hi"),)) as ids:
        run = await cell(sandboxes, ids, "import os, subprocess\n"
                                         "subprocess.run(['echo', 'from a child'])\n"
                                         "os.write(2, b'raw err\\n')\n"
                                         "open('notes.txt', 'w').write('kept')\n"
                                         "os.getuid(), os.getcwd(), os.environ['GREETING']")
        read = await exec_in_sandbox(sandboxes, ids[0], Program(language=None,
                                                                argv=("cat", "notes.txt")),
                                     b"", 10)

    assert value(run) == "(1000, '/workspace', 'hi')"
    assert (run.stdout.text, run.stderr.text) == ("from a child\n", "raw err\n")
    assert read.stdout.text == "kept"


async def interrupted_busy_loop(sandboxes: Sandboxes, ids: Ids) -> CellRun:
    running = asyncio.create_task(cell(sandboxes, ids, "while True: pass"))
    while True:  # until the loop runs: another cell is then refused
        await asyncio.sleep(0.1)
        try:
            await cell(sandboxes, ids, "1")
        except InvalidState:
            break
    await contexts.interrupt_context(sandboxes, *ids)
    return await running


async def test_interrupting_a_busy_loop_keeps_the_variables(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        await cell(sandboxes, ids, "kept = [1, 2, 3]")
        interrupted = await interrupted_busy_loop(sandboxes, ids)
        after = await cell(sandboxes, ids, "kept")

    assert interrupted.error is not None
    assert interrupted.error.name == "KeyboardInterrupt"
    assert "while True: pass" in interrupted.error.traceback
    assert "kernel.py" not in interrupted.error.traceback
    assert (interrupted.outcome.restarted, value(after)) == (False, "[1, 2, 3]")


async def test_restart_clears_the_variables(sandboxes: Sandboxes, limits: Limits) -> None:
    async with a_context(sandboxes, limits) as ids:
        await cell(sandboxes, ids, "kept = 1")
        await contexts.restart_context(sandboxes, *ids)
        after = await cell(sandboxes, ids, "kept")

    assert after.error is not None and after.error.name == "NameError"
    assert after.outcome.execution_count == 1


async def test_a_cell_past_its_timeout_is_interrupted_and_the_context_lives_on(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        await cell(sandboxes, ids, "kept = 'yes'")
        timed_out = await cell(sandboxes, ids, "import time\ntime.sleep(60)", timeout_s=1)
        after = await cell(sandboxes, ids, "kept")

    assert (timed_out.outcome.timed_out, timed_out.outcome.restarted) == (True, False)
    assert timed_out.error is not None and timed_out.error.name == "TimeoutError"
    assert "time.sleep(60)" in timed_out.error.traceback
    assert value(after) == "'yes'"


async def test_a_cell_that_ignores_the_interrupt_is_ended_by_a_restart(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        await cell(sandboxes, ids, "kept = 'yes'")
        stubborn = await cell(sandboxes, ids, "import signal\n"
                                              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                              "while True: pass", timeout_s=1)
        after = await cell(sandboxes, ids, "kept")

    assert (stubborn.outcome.timed_out, stubborn.outcome.restarted) == (True, True)
    assert after.error is not None and after.error.name == "NameError"


@pytest.mark.parametrize("platform", ["ptrace", "systrap"])
async def test_variables_imports_and_files_survive_a_suspend_and_restore_on_either_platform(
    tmp_path: Path, limits: Limits, platform: str
) -> None:
    # Sessions wait on SANDBOX_SESSION_PLATFORM (ptrace by default); either may be set.
    on_platform = runtime_settings(tmp_path / platform, session_platform=platform)
    async with started_runtime(on_platform) as runtime:
        async with managed_sandboxes(runtime, on_platform) as sandboxes, \
                a_context(sandboxes, limits) as ids:
            await cell(sandboxes, ids, "import numpy as np\nrng = np.random.default_rng(1)\n"
                                       "drawn = rng.random(3)\nopen('/tmp/f.txt', 'w').write('f')")
            before = value(await cell(sandboxes, ids, "drawn.tolist()"))
            suspended = await suspend_sandbox(sandboxes, ids[0])
            assert suspended.checkpoint is not None
            fetched = await sandboxes.images.fetch(suspended.checkpoint)  # as published
            try:
                made_on = (Path(fetched.folder) / PLATFORM_FILE).read_text()
            finally:
                await sandboxes.images.release(fetched)
            await restore_sandbox(sandboxes, ids[0])
            after = await cell(sandboxes, ids,
                               "drawn.tolist(), np.__name__, open('/tmp/f.txt').read()")
        left = leftovers(on_platform)

    assert made_on == platform
    assert value(after) == f"({before}, 'numpy', 'f')"
    assert left == []


async def test_contexts_survive_a_graceful_restart_and_a_crash_of_the_service(
    runtime: RunscSandboxRuntime, settings: Settings, limits: Limits
) -> None:
    crashing = dataclasses.replace(settings.lifecycle_policy(), suspend_on_shutdown=False)
    ids: list[Ids] = []
    for policy in (settings.lifecycle_policy(), crashing):  # a graceful stop, then a crash
        async with managed_sandboxes(runtime, settings, policy) as before:
            sandbox = await create_session(before, Language.PYTHON, limits)
            context = await contexts.create_context(before, sandbox.sandbox_id, Language.PYTHON)
            ids.append((sandbox.sandbox_id, context.context_id))
            await cell(before, ids[-1], f"kept = {len(ids)}")
    await runtime.close()

    async with started_runtime(settings) as restarted, \
            managed_sandboxes(restarted, settings) as after:
        await reconcile(after)
        values = []
        for sandbox_id, context_id in ids:
            await restore_sandbox(after, sandbox_id)
            listed = await contexts.list_contexts(after, sandbox_id)
            values.append(([made.context_id for made in listed],
                           value(await cell(after, (sandbox_id, context_id), "kept"))))
            await delete_sandbox(after, sandbox_id)

    assert values == [([ids[0][1]], "1"), ([ids[1][1]], "2")]


async def test_output_past_the_cap_is_cut_and_flagged(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    small = dataclasses.replace(limits, output_bytes=1000)
    async with a_context(sandboxes, small) as ids:
        run = await cell(sandboxes, ids, "import os\nprint('x' * 100_000)\n"
                                         "os.write(2, b'y' * 100_000)\n"
                                         "for n in range(20_000): print(n)\n'done'")

    assert (len(run.stdout.text), run.stdout.truncated) == (1000, True)
    assert (run.stderr.text, run.stderr.truncated) == ("y" * 1000, True)
    assert value(run) == "'done'"


async def test_results_past_the_cap_are_cut_and_flagged(
    runtime: RunscSandboxRuntime, settings: Settings, limits: Limits
) -> None:
    policy = dataclasses.replace(settings.lifecycle_policy(), cell_result_bytes=50_000)
    async with managed_sandboxes(runtime, settings, policy) as sandboxes, \
            a_context(sandboxes, limits) as ids:
        run = await cell(sandboxes, ids, "from IPython.display import HTML, display\n"
                                         "for n in range(5): display(HTML('h' * 20_000))")

    # Two fit whole; the others keep their text only, within what is left.
    assert [(len(str(result.data.get("text/html", ""))), result.truncated)
            for result in run.results] == [(20_000, False)] * 2 + [(0, True)] * 3
    assert run.results_truncated is True


async def test_fake_frames_printed_by_a_cell_are_only_its_output(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        run = await cell(sandboxes, ids, FORGE + "import os, sys\n"
                                                 "sys.stdout.buffer.write(forged_end)\n"
                                                 "sys.stdout.flush()\n"
                                                 "os.write(1, forged_result)\n"
                                                 "os.write(2, forged_end)\n'real'")

    assert (value(run), run.outcome.execution_count, run.outcome.restarted) == ("'real'", 1,
                                                                                False)
    assert run.stdout.text.count("execution_count") == 1 and "forged" in run.stdout.text
    assert "execution_count" in run.stderr.text


async def test_frames_forged_on_the_kernels_own_descriptors_break_only_that_context(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        other = (await contexts.create_context(sandboxes, ids[0], Language.PYTHON)).context_id
        await cell(sandboxes, (ids[0], other), "kept = 'other'")
        await cell(sandboxes, ids, "kept = 'mine'")
        run = await cell(sandboxes, ids, FORGE + "import os\nfor fd in range(3, 256):\n"
                                                 "    try:\n"
                                                 "        os.write(fd, forged_result)\n"
                                                 "    except OSError:\n"
                                                 "        pass\n")
        mine = await cell(sandboxes, ids, "kept")
        theirs = await cell(sandboxes, (ids[0], other), "kept")

    assert run.error is not None and run.error.name == "ContextDied"
    assert "broke its protocol" in run.error.value
    assert all(result.data.get("text/plain") != "forged" for result in run.results)
    assert mine.error is not None and mine.error.name == "NameError"  # restarted
    assert value(theirs) == "'other'"


async def test_a_cell_that_speaks_for_the_kernel_ends_only_its_own_context(
    sandboxes: Sandboxes, limits: Limits
) -> None:
    async with a_context(sandboxes, limits) as ids:
        # The kernel is in the cell's reach: a cell can find its own token and end itself
        # early; the kernel's real frames then break the context (and only it). A frame far
        # over the cap is refused before it is read.
        early = await cell(sandboxes, ids, FORGE + "import os, sys\n"
                                                   "channel = sys.displayhook.channel\n"
                                                   "os.write(channel.frames, frame(6, "
                                                   "channel.cell, {'execution_count': 7, "
                                                   "'results_truncated': False}))\n"
                                                   "'never seen'")
        after = await cell(sandboxes, ids, "1 + 1")
        huge = await cell(sandboxes, ids, "import sys\nsys.displayhook.channel.send(4, "
                                          "b'x' * 50_000_000)")
        last = await cell(sandboxes, ids, "2 + 2")
        alive = await exec_in_sandbox(sandboxes, ids[0],
                                      Program(language=None, argv=("echo", "alive")), b"", 10)

    assert (early.outcome.execution_count, early.results) == (7, ())
    assert after.error is not None and after.error.name == "ContextDied"
    assert "its protocol" in after.error.value
    assert huge.error is not None and "a frame of" in huge.error.value
    assert value(last) == "4"
    assert alive.stdout.text == "alive\n"


async def test_a_context_goes_on_in_the_copies_of_a_template_of_its_sandbox(
    sandboxes: Sandboxes, limits: Limits, settings: Settings
) -> None:
    images = FolderTemplateImages(settings.state_dir / "templates")
    await images.start()
    sandboxes.kept_templates = Templates(InMemoryTemplateStore(), images)
    async with a_context(sandboxes, limits) as ids:
        await cell(sandboxes, ids, "import random\nkept = 41")
        template = await templates.snapshot_sandbox(sandboxes, ids[0])
        copy = await copies.create_from_template(sandboxes, template.template_id)
        try:
            in_copy = await cell(sandboxes, (copy.sandbox_id, ids[1]), "kept + 1")
            draws = [value(await cell(sandboxes, pair, "random.random()"))
                     for pair in (ids, (copy.sandbox_id, ids[1]))]
        finally:
            await delete_sandbox(sandboxes, copy.sandbox_id)
        await templates.delete_template(sandboxes, template.template_id)

    assert value(in_copy) == "42"
    assert draws[0] != draws[1]
