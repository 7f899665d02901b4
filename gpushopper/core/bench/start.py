"""What ``benchmark run`` decides before and around the runner (core/bench/runner.py): which
flag combinations it refuses, the scratch folder a workload is built in, and the start of a
run: its record first, then the plan and the question, and a run that ends before anything
is rented (a "no", a signal, a bad plan) recorded as such.

The command parses its flags, renders and asks; the rules are tested here
(tests/test_bench_start.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.model.errors import UsageError
from gpushopper.model.jsontypes import JSONObject

if TYPE_CHECKING:
    from gpushopper.core.bench.runner import BenchRunner, RunOptions

# Built-in workloads that need a secret, and the variable (FLUX.1-dev is gated).
NEEDS_SECRET = {"flux-lora": "HF_TOKEN"}


def check_flags(
    *,
    workload: str,
    offers: Iterable[str],
    gpus: Iterable[str],
    workdir: str | None,
    secret_names: Iterable[str],
    environ: Mapping[str, str],
) -> dict[str, str]:
    """Refuse what cannot run (a malformed offer id, --offer with --gpu, a missing
    --workdir, a workload without its secret); returns the --secret-env values."""
    from gpushopper.core.request import read_secret_env
    from gpushopper.providers.registry import split_offer_id

    offers = list(offers)
    for offer_id in offers:
        split_offer_id(offer_id)
    if offers and list(gpus):
        raise UsageError("give --offer or --gpu, not both")
    if workdir is not None and not Path(workdir).is_dir():
        raise UsageError(f"--workdir {workdir}: no such folder")
    secret_env = read_secret_env(secret_names, environ)
    name = workload.partition("@")[0]
    needed = NEEDS_SECRET.get(name)
    if needed is not None and needed not in secret_env:
        raise UsageError(f"{name} needs --secret-env {needed} (FLUX.1-dev is gated)")
    return secret_env


@contextmanager
def scratch(data_dir: Path) -> Iterator[Path]:
    """A private folder under the data directory for the workload's files, removed after."""
    import shutil
    import tempfile

    data_dir.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix="bench-", dir=data_dir)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pending_keys(runner: BenchRunner) -> list[str]:
    """The planned entries that will be measured (not cached)."""
    return [e.record["key"] for e in runner.entries if e.record["status"] == "pending"]


def start(
    runner: BenchRunner,
    options: RunOptions,
    *,
    created: Callable[[JSONObject], None],
    confirm: Callable[[BenchRunner], None],
) -> tuple[JSONObject, int]:
    """Record the run (before anything is rented; ``created`` is told), plan its entries,
    ``confirm`` (which raises to stop), then run them. Anything raised before the run
    starts renting ends the run, recorded (``BenchRunner.abandon``), and is raised again."""
    record = runner.create(options)
    created(record)
    try:
        runner.plan(replace(options))
        confirm(runner)
    except BaseException as exc:  # nothing rented yet: the run ends here, recorded
        runner.abandon(exc)
        raise
    return runner.execute(options)
