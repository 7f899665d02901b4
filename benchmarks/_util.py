"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def gpu_shopper_cmd() -> list[str]:
    """The installed console script next to this Python, else ``python -m gpushopper``."""
    script = Path(sys.executable).with_name("gpu-shopper")
    if script.exists():
        return [str(script)]
    found = shutil.which("gpu-shopper")
    return [found] if found else [sys.executable, "-m", "gpushopper"]


def time_process(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    """Median wall time of ``runs`` whole-process runs, in seconds (after one warm-up)."""
    full_env = dict(os.environ, **(env or {}))
    # Measure an installed tool as users run it: with bytecode caches (this sandbox sets
    # PYTHONDONTWRITEBYTECODE, which would recompile our modules on every run).
    full_env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(argv, env=full_env, capture_output=True, check=False)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=full_env, capture_output=True, check=False)
        samples.append(time.perf_counter() - start)
        if proc.returncode not in (0,):
            raise SystemExit(
                f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-300:]}"
            )
    return statistics.median(samples)


# Our settings in the caller's environment would point a benchmark at a real account.
SCRUB = ("VASTAI_", "VAST_API", "TENSORDOCK_", "GPU_SHOPPER_")


def scrubbed_environ() -> dict[str, str]:
    """``os.environ`` without any of our settings (no real key, no real home)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}


def time_interleaved(argvs: list[list[str]], runs: int, env: dict[str, str]) -> list[float]:
    """Median wall time of each command, run in turn round after round (after one warm-up
    round), so a busy shared machine slows every command alike."""
    full_env = dict(os.environ, **env)
    full_env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run it: with bytecode caches
    samples: list[list[float]] = [[] for _ in argvs]
    for round_no in range(runs + 1):
        for k, argv in enumerate(argvs):
            start = time.perf_counter()
            proc = subprocess.run(argv, env=full_env, capture_output=True, check=False)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(
                    f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-300:]}"
                )
            if round_no:
                samples[k].append(elapsed)
    return [statistics.median(s) for s in samples]
