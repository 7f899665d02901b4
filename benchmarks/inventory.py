"""Inventory speed against the loopback emulators; prints its figures (not a test).

(a) fan-out: `inventory --refresh` with both providers, each answering after 300 ms of
    injected latency, against one provider alone. Goal: ratio <= 1.2 (the fan-out is
    concurrent, so two slow providers cost about as much as one).
(b) parsing and ranking 20,000 Vast.ai offers: JSON decode, parse to Offer, filter, rank.
    Goal: under 0.5 s.
(c) a cached `inventory --json` as a whole process against `gpu-shopper --help`.
    Goal: ratio <= 1.5.

Run: .venv/bin/python benchmarks/inventory.py [--runs N] [--offers N]
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

from _util import gpu_shopper_cmd  # noqa: E402

from tests.fakes.tensordock import TensorDockEmulator  # noqa: E402
from tests.fakes.vastai import VastEmulator  # noqa: E402

LATENCY_S = 0.3
FANOUT_GOAL = 1.2
PARSE_GOAL_S = 0.5
PROCESS_GOAL = 1.5


def median_time(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_interleaved(
    first: list[str], second: list[str], runs: int, env: dict[str, str]
) -> tuple[float, float]:
    """Median wall times of two whole-process commands run turn about (after a warm-up)."""
    import subprocess

    full_env = dict(os.environ, **env)
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(runs + 1):
        for argv, out in ((first, samples[0]), (second, samples[1])):
            start = time.perf_counter()
            proc = subprocess.run(argv, env=full_env, capture_output=True, check=False)
            if i:
                out.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"{argv} exited {proc.returncode}: {proc.stderr.decode()[-300:]}")
    return statistics.median(samples[0]), statistics.median(samples[1])


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
    print(f"(a) fan-out, {LATENCY_S * 1000:.0f} ms injected latency per provider, {runs} runs")
    print(f"    vastai alone      {vast_only * 1000:8.1f} ms")
    print(f"    tensordock alone  {td_only * 1000:8.1f} ms")
    print(f"    both providers    {both * 1000:8.1f} ms")
    ok = ratio <= FANOUT_GOAL
    print(
        f"    ratio both / slower alone: {ratio:.2f}  goal <= {FANOUT_GOAL}  {'ok' if ok else 'MISS'}"
    )
    return ok


def bench_parse(runs: int, n_offers: int) -> bool:
    from gpushopper.core.inventory import matches, rank
    from gpushopper.core.models import OfferQuery
    from gpushopper.providers.vastai import parse_offer

    with VastEmulator() as emu:
        emu.generate_offers(n_offers, seed=7)
        import requests

        answer = requests.post(
            emu.url + "/api/v0/bundles/",
            json={"limit": n_offers, "allocated_storage": 32.0, "order": [["dph_total", "asc"]]},
            headers={"Authorization": f"Bearer {emu.api_key}"},
            timeout=60,
        )
        answer.raise_for_status()
        body = answer.content
    query = OfferQuery(min_reliability=0.95, disk_gb=32)
    rows = json.loads(body)["offers"]
    kept = [0]

    def parse_and_rank() -> None:
        parsed = [parse_offer(r) for r in rows]
        passing = [o for o in parsed if matches(o, query)]
        kept[0] = len(rank(passing, "price"))

    ours = median_time(parse_and_rank, runs)
    decode = median_time(lambda: json.loads(body), runs)
    print(f"(b) {n_offers:,} Vast.ai offers ({len(body) / 1e6:.1f} MB of JSON), {runs} runs")
    print(f"    parse + filter + rank   {ours * 1000:8.1f} ms ({kept[0]:,} pass the 0.95 floor)")
    print(
        f"    json.loads of the answer {decode * 1000:7.1f} ms (stdlib; with it {(ours + decode) * 1000:.0f} ms)"
    )
    ok = ours < PARSE_GOAL_S
    print(
        f"    goal: parse + filter + rank < {PARSE_GOAL_S * 1000:.0f} ms  {'ok' if ok else 'MISS'}"
    )
    return ok


def bench_process(runs: int, home: str, vast: VastEmulator, td: TensorDockEmulator) -> bool:
    # As installed: bytecode cached (in a private folder, so the checkout stays clean)
    # even where PYTHONDONTWRITEBYTECODE is set; the warm-up run of each command fills it.
    env = {
        **tool_env(home, vast, td),
        "PYTHONPYCACHEPREFIX": str(Path(home) / "pycache"),
        "PYTHONDONTWRITEBYTECODE": "",
    }
    cmd = gpu_shopper_cmd()
    import subprocess

    fill = subprocess.run(
        [*cmd, "inventory", "--json"], env=dict(os.environ, **env), capture_output=True
    )
    if fill.returncode != 0:
        raise SystemExit(
            f"inventory --json exited {fill.returncode}: {fill.stderr.decode()[-300:]}"
        )
    asked = len(vast.requests) + len(td.requests)
    # Interleaved, so a busy machine slows both commands alike.
    help_s, cached_s = time_interleaved([*cmd, "--help"], [*cmd, "inventory", "--json"], runs, env)
    extra = len(vast.requests) + len(td.requests) - asked
    ratio = cached_s / help_s
    print(f"(c) whole process, median of {runs} runs")
    print(f"    gpu-shopper --help              {help_s * 1000:8.1f} ms")
    print(
        f"    gpu-shopper inventory --json    {cached_s * 1000:8.1f} ms (cached; {extra} HTTP calls)"
    )
    ok = ratio <= PROCESS_GOAL and extra == 0
    print(f"    ratio: {ratio:.2f}  goal <= {PROCESS_GOAL}  {'ok' if ok else 'MISS'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--offers", type=int, default=20_000)
    args = parser.parse_args()
    for name in list(os.environ):
        if name.startswith(("VASTAI_", "VAST_API", "TENSORDOCK_", "GPU_SHOPPER_")):
            del os.environ[name]
    results = []
    with tempfile.TemporaryDirectory() as home, VastEmulator() as vast, TensorDockEmulator() as td:
        vast.seed_default_offers()
        td.seed_default()
        os.environ.update(tool_env(home, vast, td))
        results.append(bench_fanout(args.runs, vast, td))
        results.append(bench_parse(args.runs, args.offers))
    with tempfile.TemporaryDirectory() as home, VastEmulator() as vast, TensorDockEmulator() as td:
        vast.seed_default_offers()
        td.seed_default()
        results.append(bench_process(max(args.runs, 15), home, vast, td))
    print("all goals met" if all(results) else "some goals missed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
