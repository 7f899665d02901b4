"""`benchmark list` and the queries over 10,000 stored results, as whole processes,
against `gpu-shopper --help` (the floor: the tool's own start-up).

Goal: ratio <= 1.5 for each command. Run: .venv/bin/python benchmarks/bench_queries.py [--runs N]
The 10,000 results are generated deterministically (seed 13) through the same validator
`benchmark submit` uses, and written once to a temporary home.

Measured (2-CPU machine shared with other work, load 1.4-2.6; 7 runs of 11 rounds each,
median of the 7 medians, lowest..highest in brackets): `--help` 45.2 ms (40.3..54.0);
`list` 1.26x (1.11..1.48), `list --json` 1.18x (1.01..1.34), `list --workload --gpu
--json` 1.34x (1.05..1.60), `cheapest --json` 1.37x (1.02..1.56), `cheapest` 1.41x
(1.17..1.44), `best --json` 1.43x (1.31..1.48), `compare --json` 1.46x (1.43..1.84),
`recommendations --json` 1.48x (1.24..1.66), `recommendations` 1.50x (1.40..1.68).
The tables were 2.00-2.20x while rich rendered them; off a terminal they are now plain
text, as fast as their --json twins. `list --json --limit 0` (all 10,000 rows, a 6.6 MB
document) is 5.0x (4.42..5.76), 232 ms: in the process, encoding the document takes
~56 ms (CPython's C encoder needs ~55 ms for the same rows even without indentation),
reading and parsing the rows ~37 ms, cost per unit ~17 ms, on top of ~45 ms of start-up,
so 1.5x (~68 ms in all) cannot be reached for dumping every row; it is not a query.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import SCRUB, gpu_shopper_cmd, time_interleaved  # noqa: E402

GOAL = 1.5
N_RESULTS = 10_000
GPUS = [  # name, typical TFLOPS, typical $/h
    ("RTX 3090", 71.0, 0.22),
    ("RTX 4090", 165.0, 0.40),
    ("RTX 5090", 210.0, 0.70),
    ("RTX A6000", 91.0, 0.48),
    ("L40S", 181.0, 0.85),
    ("A100 SXM4", 312.0, 1.15),
    ("A100 PCIE", 290.0, 1.05),
    ("H100 SXM", 989.0, 2.35),
    ("H100 PCIE", 756.0, 2.05),
    ("H200", 989.0, 3.20),
    ("RTX 4080", 97.0, 0.30),
    ("RTX A5000", 55.0, 0.17),
]
WORKLOADS = ["gpu-matmul@1"] * 8 + ["transfer@1", "my-train"]


def generate(n: int, seed: int = 13) -> list[dict]:
    """``n`` plausible results (mostly gpu-matmul@1), the same ones for a given seed."""
    from gpushopper.core.bench.records import assign_id, validate_result

    rng = random.Random(seed)
    start = datetime(2026, 6, 1, tzinfo=timezone.utc)
    taken: dict[str, dict] = {}
    for i in range(n):
        gpu, tflops, price = rng.choice(GPUS)
        count = rng.choice([1, 1, 1, 2, 4])
        provider = rng.choice(["vastai", "tensordock"])
        workload = rng.choice(WORKLOADS)
        when = start + timedelta(minutes=17 * i)
        raw = {
            "workload": workload,
            "metric": "tflops_bf16" if workload != "transfer@1" else "upload_mbs",
            "value": round(tflops * rng.uniform(0.8, 1.1), 2),
            "unit": "TFLOPS" if workload != "transfer@1" else "MB/s",
            "higher_is_better": True,
            "extra_metrics": {"membw_gbs": round(rng.uniform(800, 3300), 1)},
            "hardware": {
                "gpu_name": gpu,
                "gpu_count": count,
                "vram_mb": 24564,
                "driver": "550.54",
                "cuda": "12.4",
                "device": "gpu",
            },
            "offer": {
                "provider": provider,
                "offer_id": f"{provider}:{1000000 + i}",
                "machine_id": str(rng.randrange(40000)),
                "gpu_name": gpu,
                "gpu_count": count,
                "price_per_hour": round(price * count * rng.uniform(0.8, 1.3), 4),
                "dlperf": round(tflops * 0.8, 1),
            },
            "timings": {"provision_s": 95.0, "run_s": 61.0, "teardown_s": 4.0},
            "cost_usd": 0.05,
            "valid": rng.random() > 0.05,
            "source": "run",
        }
        if not raw["valid"]:
            raw["invalid_reasons"] = ["measured GPU is not the advertised one"]
        record = validate_result(raw, now=when, source="run")
        record["created_at"] = when.isoformat().replace("+00:00", "Z")
        record = assign_id(record, taken)
        taken[record["id"]] = record
    return list(taken.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    from gpushopper.state.benchstore import BenchStore

    with tempfile.TemporaryDirectory() as home:
        # time_interleaved lays env over os.environ: blank every setting of ours there
        env = {name: "" for name in os.environ if name.startswith(SCRUB)}
        env["GPU_SHOPPER_HOME"] = home
        records = generate(N_RESULTS)
        store = BenchStore(Path(home) / "benchmarks.json")
        with store.transaction() as data:
            data["results"] = {r["id"]: r for r in records}
        size_mb = store.path.stat().st_size / 1e6
        cmd = gpu_shopper_cmd()
        cases = [
            ["benchmark", "list"],
            ["benchmark", "list", "--json"],
            ["benchmark", "list", "--json", "--limit", "0"],
            ["benchmark", "list", "--workload", "gpu-matmul@1", "--gpu", "4090", "--json"],
            ["benchmark", "cheapest", "--workload", "gpu-matmul@1", "--json"],
            ["benchmark", "cheapest", "--workload", "gpu-matmul@1"],
            ["benchmark", "best", "--workload", "gpu-matmul@1", "--json"],
            ["benchmark", "compare", "--workload", "gpu-matmul@1", "--json"],
            ["benchmark", "recommendations", "--workload", "gpu-matmul@1", "--json"],
            ["benchmark", "recommendations", "--workload", "gpu-matmul@1"],
        ]
        times = time_interleaved([cmd + ["--help"]] + [cmd + c for c in cases], args.runs, env)
        base = times[0]
        print(f"{N_RESULTS} results ({size_mb:.1f} MB file); runs per command: {args.runs}")
        print(f"{'command':66} {'median ms':>10} {'ratio':>7}  goal <= {GOAL}")
        print(f"{'gpu-shopper --help':66} {base * 1000:10.1f} {1.0:7.2f}")
        worst = 0.0
        for case, median in zip(cases, times[1:], strict=True):
            ratio = median / base
            worst = max(worst, ratio)
            label = "gpu-shopper " + " ".join(case)
            verdict = "ok" if ratio <= GOAL else "OVER"
            print(f"{label:66} {median * 1000:10.1f} {ratio:7.2f}  {verdict}")
        print(f"worst ratio: {worst:.2f} ({'meets' if worst <= GOAL else 'misses'} the goal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
