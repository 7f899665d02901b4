"""Inventory speed against the loopback emulators, as whole processes side by side with floor
scripts that do only what this design cannot avoid; prints its figures (not a test).

(a) uncached `inventory --json --refresh --provider vastai --gpu RTX_4090` on markets of
    5,000 and 20,000 offers, against a floor that imports click and requests, POSTs the
    same question (the body our run sent) and json.loads the answer. Goals: ratio <= 1.5
    at both sizes, and 100% of the matches (worked out by brute force from the market).
(b) the same `inventory --json` answered from the cache, against a floor that imports
    click and reads the same answer from a JSON file. Goal: ratio <= 1.5, no HTTP call.
(c) `cleanup-orphans --json` (Vast.ai only, nothing running), against a floor that
    imports click and requests, sends one GET for the instance list and json.loads it.
    Goal: ratio <= 1.5.
(d) fan-out: `inventory --refresh` with both providers, each answering after 300 ms of
    injected latency, against one provider alone. Goal: ratio <= 1.2.

Run: .venv/bin/python benchmarks/inventory.py [--runs N] [--sizes 5000,20000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import SCRUB, gpu_shopper_cmd, time_interleaved  # noqa: E402

from gpushopper.sandbox.tensordock import TensorDockEmulator  # noqa: E402
from gpushopper.sandbox.vastai import VastEmulator  # noqa: E402

LATENCY_S = 0.3
FANOUT_GOAL = 1.2
FLOOR_GOAL = 1.5
QUESTION = ["--provider", "vastai", "--gpu", "RTX_4090"]

FLOOR_SEARCH = """
import json, sys
import click, requests
url, key, body = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
answer = requests.post(url + "/api/v0/bundles/", data=body, timeout=60, headers={
    "Authorization": "Bearer " + key, "Content-Type": "application/json"})
json.loads(answer.content)
"""
FLOOR_CACHED = """
import json, sys
import click
with open(sys.argv[1], "rb") as handle:
    json.loads(handle.read())
"""
FLOOR_LIST = """
import json, sys
import click, requests
answer = requests.get(sys.argv[1] + "/api/v1/instances/", timeout=60,
                      headers={"Authorization": "Bearer " + sys.argv[2]})
json.loads(answer.content)
"""


def median_time(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def tool_env(home: str, vast: VastEmulator, td: TensorDockEmulator) -> dict[str, str]:
    return {
        "GPU_SHOPPER_HOME": home,
        "VASTAI_API_KEY": vast.api_key,
        "VASTAI_API_URL": vast.url,
        "TENSORDOCK_API_TOKEN": td.api_token,
        "TENSORDOCK_API_URL": td.url,
        "GPU_SHOPPER_DEFAULTS_CACHE_TTL": "1h",
        "NO_COLOR": "1",
    }


def run_in_process(argv: list[str]) -> str:
    """Run the CLI in this process through the real error mapping; return its stdout."""
    from gpushopper.cli import cli
    from gpushopper.cli.output import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(cli, argv)
    if code != 0:
        raise SystemExit(f"gpu-shopper {' '.join(argv)} exited {code}: {err.getvalue()[-300:]}")
    return out.getvalue()


def bench_fanout(runs: int, vast: VastEmulator, td: TensorDockEmulator) -> bool:
    vast.latency = td.latency = LATENCY_S
    try:
        both = median_time(lambda: run_in_process(["inventory", "--json", "--refresh"]), runs)
        vast_only = median_time(
            lambda: run_in_process(["inventory", "--json", "--refresh", "--provider", "vastai"]),
            runs,
        )
        td_only = median_time(
            lambda: run_in_process(
                ["inventory", "--json", "--refresh", "--provider", "tensordock"]
            ),
            runs,
        )
    finally:
        vast.latency = td.latency = 0.0
    alone = max(vast_only, td_only)
    ratio = both / alone
    print(f"(d) fan-out, {LATENCY_S * 1000:.0f} ms injected latency per provider, {runs} runs")
    print(f"    vastai alone      {vast_only * 1000:8.1f} ms")
    print(f"    tensordock alone  {td_only * 1000:8.1f} ms")
    print(f"    both providers    {both * 1000:8.1f} ms")
    ok = ratio <= FANOUT_GOAL
    print(
        f"    ratio both / slower alone: {ratio:.2f}  goal <= {FANOUT_GOAL}  {'ok' if ok else 'MISS'}"
    )
    return ok


def process_env(home: str, vast: VastEmulator, td: TensorDockEmulator | None) -> dict[str, str]:
    """As installed: bytecode cached (in a private folder, so the checkout stays clean)
    even where PYTHONDONTWRITEBYTECODE is set; the warm-up run of each command fills it."""
    env = {
        "GPU_SHOPPER_HOME": home,
        "VASTAI_API_KEY": vast.api_key,
        "VASTAI_API_URL": vast.url,
        "GPU_SHOPPER_DEFAULTS_CACHE_TTL": "1h",
        "NO_COLOR": "1",
        "PYTHONPYCACHEPREFIX": str(Path(home) / "pycache"),
        "PYTHONDONTWRITEBYTECODE": "",
    }
    if td is not None:
        env.update(TENSORDOCK_API_TOKEN=td.api_token, TENSORDOCK_API_URL=td.url)
    return env


def truth_ids(vast: VastEmulator) -> set[str]:
    """The RTX 4090 offers that pass the default 0.95 reliability floor and fit 32 GB."""
    return {
        f"vastai:{o['id']}"
        for o in vast.offers.values()
        if o["gpu_name"] == "RTX 4090"
        and o["reliability"] >= 0.95
        and o["disk_space"] >= 32
        and o["rentable"]
        and not o["rented"]
    }


def report(label: str, ours_s: float, floor_s: float, goal: float, extra: str = "") -> bool:
    ratio = ours_s / floor_s
    ok = ratio <= goal
    print(f"    gpu-shopper {ours_s * 1000:7.1f} ms   floor {floor_s * 1000:7.1f} ms   "
          f"ratio {ratio:.2f}  goal <= {goal}  {'ok' if ok else 'MISS'}{extra}")  # fmt: skip
    return ok


def bench_search(runs: int, size: int) -> bool:
    import subprocess

    cmd = gpu_shopper_cmd()
    with tempfile.TemporaryDirectory() as home, VastEmulator() as vast:
        vast.generate_market(size, seed=10)
        env = process_env(home, vast, None)
        full_env = dict(os.environ, **env)
        argv = [*cmd, "inventory", "--json", *QUESTION]
        first = subprocess.run([*argv, "--refresh"], env=full_env, capture_output=True)
        if first.returncode != 0:
            raise SystemExit(f"inventory exited {first.returncode}: {first.stderr.decode()[-300:]}")
        got = {o["id"] for o in json.loads(first.stdout)}
        want = truth_ids(vast)
        [sent] = [r for r in vast.requests if r["path"] == "/api/v0/bundles/"][-1:]
        body = Path(home) / "question.json"
        body.write_text(json.dumps(sent["json"]))
        floor = Path(home) / "floor_search.py"
        floor.write_text(FLOOR_SEARCH)
        answer_path = Path(home) / "answer.json"
        import requests

        answer = requests.post(
            vast.url + "/api/v0/bundles/",
            json=sent["json"],
            headers={"Authorization": f"Bearer {vast.api_key}"},
            timeout=60,
        )
        answer_path.write_bytes(answer.content)
        ours_s, floor_s = time_interleaved(
            [[*argv, "--refresh"], [sys.executable, str(floor), vast.url, vast.api_key, str(body)]],
            runs,
            env,
        )
        found = len(got & want) / len(want) if want else 1.0
        print(f"(a) uncached search, {size:,} offers ({len(want)} match; answer "
              f"{len(answer.content) / 1e3:.0f} kB), median of {runs}")  # fmt: skip
        ok = report("uncached", ours_s, floor_s, FLOOR_GOAL)
        exact = got == want
        print(f"    matches found: {len(got & want)}/{len(want)} = {found:.0%}"
              f"{'' if exact else f' (and {len(got - want)} that should not be)'}  "
              f"{'ok' if exact else 'MISS'}")  # fmt: skip
        if size == max(SIZES):
            ok = bench_cached(runs, home, vast, answer_path) and ok
    return ok and exact


def bench_cached(runs: int, home: str, vast: VastEmulator, answer_path: Path) -> bool:
    cmd = gpu_shopper_cmd()
    env = process_env(home, vast, None)
    floor = Path(home) / "floor_cached.py"
    floor.write_text(FLOOR_CACHED)
    asked = len(vast.requests)
    ours_s, floor_s = time_interleaved(
        [[*cmd, "inventory", "--json", *QUESTION], [sys.executable, str(floor), str(answer_path)]],
        runs,
        env,
    )
    extra = len(vast.requests) - asked
    print(f"(b) cached inventory --json (same question, answered from the cache), median of {runs}")
    return report("cached", ours_s, floor_s, FLOOR_GOAL, f"  ({extra} HTTP calls)") and not extra


def bench_cleanup(runs: int) -> bool:
    cmd = gpu_shopper_cmd()
    with tempfile.TemporaryDirectory() as home, VastEmulator() as vast:
        vast.seed_default_offers()
        env = process_env(home, vast, None)
        floor = Path(home) / "floor_list.py"
        floor.write_text(FLOOR_LIST)
        ours_s, floor_s = time_interleaved(
            [
                [*cmd, "cleanup-orphans", "--json"],
                [sys.executable, str(floor), vast.url, vast.api_key],
            ],
            runs,
            env,
        )
        print(f"(c) cleanup-orphans --json (Vast.ai only, nothing running), median of {runs}")
        return report("cleanup", ours_s, floor_s, FLOOR_GOAL)


SIZES = [5_000, 20_000]


def main() -> int:
    global SIZES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sizes", default="5000,20000")
    parser.add_argument("--skip-fanout", action="store_true")
    args = parser.parse_args()
    SIZES = [int(x) for x in args.sizes.split(",")]
    for name in list(os.environ):
        if name.startswith(SCRUB):
            del os.environ[name]
    results = [bench_search(args.runs, size) for size in SIZES]
    results.append(bench_cleanup(args.runs))
    if not args.skip_fanout:
        with (
            tempfile.TemporaryDirectory() as home,
            VastEmulator() as vast,
            TensorDockEmulator() as td,
        ):
            vast.seed_default_offers()
            td.seed_default()
            os.environ.update(tool_env(home, vast, td))
            results.append(bench_fanout(min(args.runs, 7), vast, td))
    print("all goals met" if all(results) else "some goals missed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
