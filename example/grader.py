"""Grade a student's Python file against unittest tests, in a sandbox.

    SANDBOX_URL=http://127.0.0.1:8080 python example/grader.py \
        example/grading/student.py example/grading/test_student.py

The student's file is copied in as student.py (the tests import it under that name), the
tests beside it; they run with a time and memory limit, no network, nothing of this machine
in reach. Prints one line per test and the score; exits 0 when every test passed.

The sandbox protects the machine, not the grade: the student's code runs in the process that
runs the tests, so code written to cheat could report what it likes. Compare the report with
what you expect, or run a hidden set of tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sandbox_client import Sandbox

MARK = "=== grade report ==="
# Runs inside the sandbox: the tests, then one JSON report after a mark on stdout.
RUNNER = f"""
import json, sys, unittest

class Report(unittest.TextTestResult):
    outcomes = []

    def addSuccess(self, test):
        super().addSuccess(test)
        self.outcomes.append((test.id(), "passed", ""))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.outcomes.append((test.id(), "failed", str(err[1])))

    def addError(self, test, err):
        super().addError(test, err)
        self.outcomes.append((test.id(), "error", f"{{err[0].__name__}}: {{err[1]}}"))

suite = unittest.defaultTestLoader.loadTestsFromName(sys.argv[1])
unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Report).run(suite)
print({MARK!r})
print(json.dumps([dict(zip(("test", "outcome", "detail"), o)) for o in Report.outcomes]))
"""


def grade(student: Path, tests: Path, timeout: float) -> list[dict[str, str]]:
    with Sandbox.create(memory_mb=256, timeout=timeout) as sandbox:
        sandbox.files.upload(student, "student.py")
        sandbox.files.upload(tests, tests.name)
        sandbox.files.write("_grade.py", RUNNER)
        done = sandbox.commands.run(["python3", "_grade.py", tests.stem])
    if done.timed_out:
        raise SystemExit(f"the tests did not finish within {timeout:g} s")
    if MARK not in done.stdout:
        raise SystemExit(f"the tests did not run (exit {done.exit_code}):\n{done.stderr}")
    report: list[dict[str, str]] = json.loads(done.stdout.split(MARK, 1)[1])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path, help="the student's file")
    parser.add_argument("tests", type=Path, help="unittest tests that import student")
    parser.add_argument("--timeout", type=float, default=30, help="seconds for all tests")
    args = parser.parse_args()

    report = grade(args.student, args.tests, args.timeout)
    for entry in report:
        line = f"{entry['outcome']:>6}  {entry['test']}"
        print(line + (f"\n        {entry['detail']}" if entry["detail"] else ""))
    passed = sum(entry["outcome"] == "passed" for entry in report)
    print(f"score: {passed}/{len(report)}")
    return 0 if report and passed == len(report) else 1


if __name__ == "__main__":
    sys.exit(main())
