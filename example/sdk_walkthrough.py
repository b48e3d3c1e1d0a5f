"""A walk through the Python SDK (pip install ./client), against SANDBOX_URL.

    SANDBOX_URL=http://127.0.0.1:8080 python example/sdk_walkthrough.py

Each step prints what it did. It makes sandboxes and deletes them all on the way out.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sandbox_client import InvalidState, Sandbox, SandboxNotFound, run


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def one_shot() -> None:
    step("one script in a fresh sandbox: run()")
    result = run("import platform\nprint('Python', platform.python_version())")
    print(f"exit {result.exit_code} in {result.duration_ms} ms: {result.stdout.strip()}")

    step("output as it is printed: on_stdout")
    run("import time\nfor n in range(3):\n    print('tick', n, flush=True)\n"
        "    time.sleep(0.2)\n",
        on_stdout=lambda text: print("  got", repr(text), flush=True))

    step("a script that fails is a result, not an exception")
    failed = run("raise SystemExit('no luck')")
    print(f"exit {failed.exit_code}, stderr {failed.stderr.strip()!r}")


def a_sandbox_that_lives(workdir: Path) -> None:
    step("a sandbox that lives: files, commands, suspend and resume")
    with Sandbox.create(env={"GREETING": "hello"}, idle_timeout=600) as sandbox:
        print("created", sandbox.sandbox_id)
        sandbox.files.write("data.csv", "city,people\nLyon,522\nNantes,320\nLille,236\n")
        table = sandbox.commands.run(
            ["python3", "-c", "import pandas as pd; print(pd.read_csv('data.csv')"
                              ".sort_values('people').to_string(index=False))"])
        print(table.stdout.rstrip())
        shout = sandbox.commands.run("echo $GREETING $NAME from $(pwd)",
                                     env={"NAME": "walkthrough"}, cwd="/tmp")
        print(shout.stdout.strip())

        local = workdir / "numbers.txt"
        local.write_text("\n".join(str(n) for n in range(1, 101)) + "\n")
        sandbox.files.upload(local)
        total = sandbox.commands.run("awk '{ s += $1 } END { print s }' numbers.txt")
        print("sum of the uploaded numbers:", total.stdout.strip())

        print("suspended:", sandbox.suspend().state)
        print("resumed:", sandbox.resume().state)
        print("files survive:", [entry.name for entry in sandbox.files.list()])
        copy = sandbox.files.download("data.csv", workdir / "copy.csv")
        print("downloaded", copy.name, copy.stat().st_size, "bytes")
        background(sandbox)
    print("deleted on the way out of the with block")


def background(sandbox: Sandbox) -> None:
    step("a command in the background, then killed")
    handle = sandbox.commands.run("for n in $(seq 100); do echo $n; sleep 0.2; done",
                                  background=True)
    time.sleep(0.5)
    try:
        sandbox.suspend()
    except InvalidState as busy:
        print("suspend refused while it runs:", busy.message)
    handle.kill()
    done = handle.wait(timeout=30)
    print(f"killed: {done.killed}, it had printed {len(done.stdout.split())} lines")


def detached_script() -> None:
    step("a detached script, followed to its end")
    counter = "import time\nfor n in range(5):\n    print(n, flush=True)\n    time.sleep(0.1)\n"
    with Sandbox.run_detached(counter, timeout=60) as script:
        output = script.logs(follow=True, on_stdout=lambda text: print(text, end=""))
        print(f"it {output.state} with code {output.exit_code}")


def errors() -> None:
    step("errors are exceptions named after the API's codes")
    try:
        Sandbox.connect("0" * 24)
    except SandboxNotFound as missing:
        print(f"{type(missing).__name__} ({missing.status}): {missing.message}")


def main() -> int:
    with tempfile.TemporaryDirectory() as workdir:
        one_shot()
        a_sandbox_that_lives(Path(workdir))
        detached_script()
        errors()
    print("\nwalkthrough done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
