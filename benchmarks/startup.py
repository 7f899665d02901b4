"""Start-up time of gpu-shopper commands as whole processes, against `python -c "import click"`.

Goal: ratio <= 1.5 for each command. Run: .venv/bin/python benchmarks/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import gpu_shopper_cmd, time_process  # noqa: E402

GOAL = 1.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {"GPU_SHOPPER_HOME": home}
        for name in list(os.environ):
            if name.startswith(("VASTAI_", "VAST_API", "TENSORDOCK_")):
                env[name] = ""
        base = time_process([sys.executable, "-c", "import click"], args.runs, env)
        cmd = gpu_shopper_cmd()
        cases = [["--help"], ["config", "path"]]
        from gpushopper.cli import COMMANDS

        if "sessions" in COMMANDS:
            cases.append(["sessions", "list", "--json"])
        print(f"runs per command: {args.runs} (median wall time)")
        print(f"{'command':38} {'median ms':>10} {'ratio':>7}  goal <= {GOAL}")
        baseline = 'python -c "import click"'
        print(f"{baseline:38} {base * 1000:10.1f} {1.0:7.2f}")
        worst = 0.0
        for case in cases:
            median = time_process(cmd + case, args.runs, env)
            ratio = median / base
            worst = max(worst, ratio)
            label = "gpu-shopper " + " ".join(case)
            print(
                f"{label:38} {median * 1000:10.1f} {ratio:7.2f}  {'ok' if ratio <= GOAL else 'OVER'}"
            )
        print(f"worst ratio: {worst:.2f} ({'meets' if worst <= GOAL else 'misses'} the goal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
