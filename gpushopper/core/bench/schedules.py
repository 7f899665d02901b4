"""Benchmark schedules: stored in the benchmark file, fired by ``schedule run-due``.

``run_due`` is what cron calls (every few minutes, say). Under its own lock (not the
benchmark file's: the runs it starts write there), it claims every enabled schedule whose
next firing time after its last one (or its creation) has come, recording ``last_fired_at``
before anything runs, so a second ``run-due`` (concurrent, or after a crash) never fires the
same time twice. Missed times collapse into one firing. Each run gets the schedule's own
``--max-budget``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.core.bench import cron
from gpushopper.model.errors import StateError, UsageError
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.units import iso, parse_iso

if TYPE_CHECKING:
    from gpushopper.state.benchstore import BenchStore

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_BUDGET = 10_000.0  # USD per run
MAX_ARGS = 200
# Flags run-due adds itself: in RUN-ARGS they would be overridden or would ask a question.
RESERVED = ("--max-budget", "--yes", "-y", "--json")

# (args for `benchmark run`, schedule name) -> (exit code, the run's JSON or None, stderr tail)
Runner = Callable[[list[str], str], "RunOutcome"]


@dataclass
class RunOutcome:
    exit_code: int
    run: JSONObject | None = None
    message: str = ""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(
            f"schedule name {str(name)[:60]!r} must be letters, digits and ._- (at most 64), "
            "starting with a letter or digit"
        )
    return name


def check_budget(value: JSONValue) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError("--max-budget must be a number of USD")
    if not 0 < value <= MAX_BUDGET:
        raise UsageError(f"--max-budget must be above 0 and at most {MAX_BUDGET:g} USD")
    return float(value)


def check_args(args: list[str]) -> list[str]:
    """RUN-ARGS as `benchmark run` will get them: plain strings, a workload, no flag that
    run-due adds itself."""
    if not args:
        raise UsageError("give RUN-ARGS after '--', e.g. -- --workload gpu-matmul@1")
    if len(args) > MAX_ARGS:
        raise UsageError(f"at most {MAX_ARGS} run arguments")
    for arg in args:
        if not isinstance(arg, str) or len(arg) > 1000 or re.search(r"[\x00-\x1f\x7f]", arg):
            raise UsageError(f"run argument {str(arg)[:40]!r} holds control characters")
        flag = arg.split("=", 1)[0]
        if flag in RESERVED:
            raise UsageError(
                f"{flag} does not belong in RUN-ARGS: run-due adds --max-budget (the "
                "schedule's own), --yes and --json itself"
            )
    if not any(a == "--workload" or a.startswith("--workload=") for a in args):
        raise UsageError("RUN-ARGS need --workload NAME (what the schedule measures)")
    return list(args)


def add(
    store: BenchStore, name: str, expr: str, max_budget: float, args: list[str], now: datetime
) -> JSONObject:
    """Store a new schedule (enabled); refuse a name already taken."""
    check_name(name)
    parsed = cron.parse(expr)
    record = {
        "name": name,
        "cron": parsed.text,
        "max_budget": check_budget(max_budget),
        "args": check_args(args),
        "enabled": True,
        "created_at": iso(now),
        "updated_at": iso(now),
        "last_fired_at": None,
        "last_run_id": None,
    }
    with store.transaction() as data:
        if name in data["schedules"]:
            raise UsageError(f"schedule {name!r} exists; change it with 'schedule update'")
        data["schedules"][name] = record
    return record


def update(
    store: BenchStore,
    name: str,
    now: datetime,
    *,
    expr: str | None = None,
    max_budget: float | None = None,
    args: list[str] | None = None,
    enabled: bool | None = None,
) -> JSONObject:
    changes: JSONObject = {}
    if expr is not None:
        changes["cron"] = cron.parse(expr).text
    if max_budget is not None:
        changes["max_budget"] = check_budget(max_budget)
    if args:
        changes["args"] = check_args(args)
    if enabled is not None:
        changes["enabled"] = enabled
    if not changes:
        raise UsageError(
            "nothing to change: give --cron, --max-budget, --enable/--disable or RUN-ARGS"
        )
    with store.transaction() as data:
        record = data["schedules"].get(name)
        if not isinstance(record, dict):
            raise UsageError(f"no schedule {name!r} (see 'gpu-shopper benchmark schedule list')")
        if changes.get("enabled") and not record.get("enabled"):
            # Re-enabled: count from now, not from times missed while it was off.
            changes["last_fired_at"] = iso(now)
        record.update(changes, updated_at=iso(now))
        return dict(record)


def delete(store: BenchStore, name: str) -> None:
    if not store.delete("schedules", name):
        raise UsageError(f"no schedule {name!r} (see 'gpu-shopper benchmark schedule list')")


def next_due(record: JSONObject) -> datetime | None:
    """When the schedule fires next: the first cron time after its last firing (or its
    creation). None when disabled or unreadable."""
    try:
        since = parse_iso(record.get("last_fired_at") or record.get("created_at"))
        expr = cron.parse(record["cron"])
    except (KeyError, TypeError, ValueError, UsageError):
        return None
    if since is None or not record.get("enabled"):
        return None
    return expr.next_after(since)


def view(record: JSONObject) -> JSONObject:
    """A schedule as ``schedule list --json`` shows it: the record plus ``next_due_at``."""
    return {**record, "next_due_at": iso(next_due(record))}


def run_due(
    store: BenchStore,
    lock_path: Path,
    now: Callable[[], datetime],
    runner: Runner,
    log: Callable[[str], None] = lambda message: None,
) -> list[JSONObject]:
    """Fire every enabled schedule that is due, once each; the firings, in name order.

    Returns ``[]`` without firing anything when another run-due holds the lock.
    """
    from filelock import Timeout

    from gpushopper.state.fs import file_lock

    try:
        with file_lock(lock_path, 0):
            return _fire(store, now, runner, log)
    except Timeout:
        log("another 'schedule run-due' is running; nothing fired")
        return []
    except OSError as exc:
        raise StateError(f"cannot take the lock {lock_path}: {exc.strerror or exc}") from None


def _fire(
    store: BenchStore, now: Callable[[], datetime], runner: Runner, log: Callable[[str], None]
) -> list[JSONObject]:
    stamp = now()
    claimed: list[JSONObject] = []
    with store.transaction() as data:  # claim first: a crash mid-run never fires it again
        for name in sorted(data["schedules"]):
            record = data["schedules"][name]
            if not isinstance(record, dict):
                continue
            due = next_due(record)
            if due is None or due > stamp:
                continue
            record["last_fired_at"] = iso(stamp)
            record["last_run_id"] = None
            claimed.append({**record, "due_at": iso(due)})
    firings = []
    for record in claimed:
        name = record["name"]
        # repr: the budget exactly (':g' keeps 6 digits and rounds 1234.567 up to 1234.57)
        budget = repr(float(record["max_budget"]))
        args = [*record["args"], "--max-budget", budget, "--yes", "--json"]
        log(f"schedule {name}: benchmark run {' '.join(args)}")
        try:
            outcome = runner(args, name)
        except OSError as exc:
            outcome = RunOutcome(1, None, f"could not start the run: {exc.strerror or exc}")
        run = outcome.run if isinstance(outcome.run, dict) else None
        run_id = run.get("id") if run else None
        if not (isinstance(run_id, str) and re.fullmatch(r"b-[0-9a-f]{6,32}", run_id)):
            run_id = None
        with store.transaction() as data:
            stored = data["schedules"].get(name)
            if isinstance(stored, dict) and stored.get("last_fired_at") == iso(stamp):
                stored["last_run_id"] = run_id
        firings.append(
            {
                "schedule": name,
                "due_at": record["due_at"],
                "fired_at": iso(stamp),
                "run_id": run_id,
                "exit_code": outcome.exit_code,
                "status": run.get("status") if run else None,
                "message": outcome.message[-500:] if outcome.exit_code else "",
            }
        )
    return firings


def subprocess_runner(environ: dict[str, str] | None = None) -> Runner:
    """The default runner: ``python -m gpushopper benchmark run ARGS`` as a child process
    (stderr passes through to our own; its one JSON document is read from stdout)."""

    def run(args: list[str], schedule: str) -> RunOutcome:
        import json
        import os
        import subprocess
        import sys

        env = dict(os.environ if environ is None else environ)
        env["GPU_SHOPPER_BENCH_SCHEDULE"] = schedule  # the run may record which schedule
        proc = subprocess.run(
            [sys.executable, "-m", "gpushopper", "benchmark", "run", *args],
            stdout=subprocess.PIPE,
            env=env,
            check=False,
        )
        try:
            doc = json.loads(proc.stdout.decode("utf-8", "replace") or "null")
        except ValueError:
            doc = None
        message = ""
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            message = str(doc["error"].get("message", ""))
            doc = None
        return RunOutcome(proc.returncode, doc if isinstance(doc, dict) else None, message)

    return run
