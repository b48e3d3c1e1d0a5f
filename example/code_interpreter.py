"""A code-interpreter session: cells run one after the other in a persistent Python context
of a sandbox, as an agent or a notebook would send them. The cells build a DataFrame (which
comes back as an HTML table) and plot it (the figure comes back as a PNG, saved here).
Variables outlive a suspend and resume of the sandbox.

    SANDBOX_URL=http://127.0.0.1:8080 python example/code_interpreter.py [OUT_DIR]

Needs the server's code contexts (POST /sandboxes/{id}/contexts).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sandbox_client import Execution, Sandbox

CELLS = [
    # 1: data, made here (the sandbox has no network)
    "import numpy as np\n"
    "import pandas as pd\n"
    "rng = np.random.default_rng(7)\n"
    "days = pd.date_range('2024-01-01', periods=90, freq='D')\n"
    "sales = pd.DataFrame({'day': days,\n"
    "                      'north': rng.normal(100, 15, 90).round(1),\n"
    "                      'south': rng.normal(80, 25, 90).round(1)})\n"
    "print(len(sales), 'rows')",
    # 2: the value of the last expression comes back as a result (text and HTML)
    "monthly = sales.set_index('day').resample('MS').sum()\n"
    "monthly",
    # 3: a figure left open at the end of the cell comes back as a PNG
    "import matplotlib.pyplot as plt\n"
    "ax = monthly.plot(kind='bar', title='Sales per month')\n"
    "ax.set_xticklabels([d.strftime('%b') for d in monthly.index], rotation=0)\n"
    "plt.tight_layout()",
    # 4: variables and imports are still there
    "best = monthly.sum().idxmax()\n"
    "f'best region: {best}'",
]
AFTER_RESUME = "f'{len(sales)} rows still here, best is still {best}'"


def show(number: int, execution: Execution, out: Path) -> None:
    for line in execution.logs.stdout:
        print(f"[{number}] stdout: {line}", end="")
    for index, result in enumerate(execution.results):
        if result.png is not None:
            path = out / f"cell-{number}-{index}.png"
            path.write_bytes(result.png_bytes() or b"")
            print(f"[{number}] figure saved to {path}")
        elif result.html is not None:
            print(f"[{number}] an HTML table ({len(result.html)} characters); as text:")
            print(result.text)
        elif result.text is not None:
            print(f"[{number}] {result.text}")
    if execution.error is not None:
        print(f"[{number}] {execution.error.name}: {execution.error.value}")


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with Sandbox.create(memory_mb=1024) as sandbox:
        context = sandbox.create_context("python")
        for number, cell in enumerate(CELLS, start=1):
            execution = context.run(cell, timeout=120)
            show(number, execution, out)
            if execution.error is not None:
                return 1
        sandbox.suspend()
        sandbox.resume()
        show(len(CELLS) + 1, context.run(AFTER_RESUME), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "plots")))
