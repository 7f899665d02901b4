"""`benchmark schedule add/list/update/delete/run-due`: stored schedules, cron times on the
injected clock (GPU_SHOPPER_CLOCK_OFFSET), each firing once, under a lock, with its budget."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gpushopper.core.bench import schedules
from gpushopper.core.bench.schedules import RunOutcome
from gpushopper.model.units import iso, parse_iso
from gpushopper.state.benchstore import BenchStore


class FakeRunner:
    """Records each `benchmark run` it is asked for; answers like the runner's --json."""

    def __init__(self, exit_code: int = 0) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self.exit_code = exit_code
        self.during = None  # called while a run is "running"

    def __call__(self, args: list[str], schedule: str) -> RunOutcome:
        self.calls.append((args, schedule))
        if self.during is not None:
            self.during()
        run_id = f"b-{len(self.calls):06x}"
        status = "completed" if self.exit_code == 0 else "failed"
        return RunOutcome(self.exit_code, {"id": run_id, "status": status}, "boom")


@pytest.fixture
def runner(monkeypatch) -> FakeRunner:
    from gpushopper.cli import benchmark

    fake = FakeRunner()
    monkeypatch.setattr(benchmark, "RUNNER", fake)
    return fake


@pytest.fixture
def clock(monkeypatch):
    """Move the tool's clock: clock("90m") is now + 90 minutes."""

    def move(offset: str) -> None:
        monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", offset)

    return move


def add(gs, name="nightly", cron="0 3 * * *", budget="5", args="--workload gpu-matmul@1"):
    return gs(f"benchmark schedule add {name} --cron '{cron}' --max-budget {budget} -- {args}")


def stored(home: Path) -> dict:
    return BenchStore(home / "benchmarks.json").schedules()


def test_add_list_update_delete(gs, isolated_home):
    out = add(gs, args="--workload gpu-matmul@1 --gpu 4090 --provider vastai")
    assert out.exit_code == 0, out.stderr
    record = stored(isolated_home)["nightly"]
    assert record["args"] == ["--workload", "gpu-matmul@1", "--gpu", "4090", "--provider", "vastai"]
    assert record["max_budget"] == 5.0 and record["enabled"] is True
    assert record["last_fired_at"] is None
    (listed,) = gs("benchmark schedule list --json").json()
    assert set(listed) >= {
        "name", "cron", "max_budget", "args", "enabled", "created_at", "updated_at",
        "last_fired_at", "last_run_id", "next_due_at",
    }  # fmt: skip
    assert parse_iso(listed["next_due_at"]).hour == 3
    assert "nightly" in gs("benchmark schedule list").stdout
    changed = gs("benchmark schedule update nightly --cron '*/5 * * * *' --max-budget 2 --json")
    assert changed.exit_code == 0 and changed.json()["cron"] == "*/5 * * * *"
    assert changed.json()["max_budget"] == 2.0
    gs("benchmark schedule update nightly -- --workload transfer@1")
    assert stored(isolated_home)["nightly"]["args"] == ["--workload", "transfer@1"]
    off = gs("benchmark schedule update nightly --disable --json").json()
    assert off["enabled"] is False and off["next_due_at"] is None
    assert gs("benchmark schedule delete nightly").exit_code == 0
    assert stored(isolated_home) == {}
    assert gs("benchmark schedule delete nightly").exit_code == 2


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ("add x --cron '61 * * * *' --max-budget 5 -- --workload w", "cron minute field"),
        ("add x --cron '* * * *' --max-budget 5 -- --workload w", "needs five"),
        ("add x --cron '@daily' --max-budget 0 -- --workload w", "--max-budget"),
        ("add x --cron '@daily' --max-budget nan -- --workload w", "--max-budget"),
        ("add x --cron '@daily' -- --workload w", "--max-budget"),
        ("add x --cron '@daily' --max-budget 5", "RUN-ARGS"),
        ("add x --cron '@daily' --max-budget 5 -- --gpu 4090", "--workload"),
        ("add x --cron '@daily' --max-budget 5 -- --workload w --max-budget 99", "--max-budget"),
        ("add x --cron '@daily' --max-budget 5 -- --workload w --json", "--json"),
        ("add 'a b' --cron '@daily' --max-budget 5 -- --workload w", "schedule name"),
        ("update nope --cron '@daily'", "no schedule 'nope'"),
        ("update nope", "nothing to change"),
    ],
)
def test_bad_schedules_are_refused_with_exit_2(gs, isolated_home, argv, says):
    out = gs(f"benchmark schedule {argv}")
    assert out.exit_code == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], out.stderr
    assert stored(isolated_home) == {}


def test_run_due_passes_the_schedules_budget_exactly_never_rounded_up(gs, runner, clock):
    assert add(gs, cron="*/30 * * * *", budget="1234.567").exit_code == 0
    clock("31m")
    assert gs("benchmark schedule run-due --json").exit_code == 0
    args, _ = runner.calls[0]
    assert args[args.index("--max-budget") + 1] == "1234.567"


def test_a_taken_name_is_refused(gs):
    assert add(gs).exit_code == 0
    out = add(gs, cron="@hourly")
    assert out.exit_code == 2 and "exists" in out.stderr


def test_run_due_fires_once_when_due_with_the_schedules_budget(gs, runner, clock, isolated_home):
    assert add(gs, cron="*/30 * * * *", budget="2.5").exit_code == 0
    assert gs("benchmark schedule run-due --json").json() == []  # not due yet
    assert runner.calls == []
    clock("31m")
    (firing,) = gs("benchmark schedule run-due --json").json()
    args, name = runner.calls[0]
    assert name == "nightly"
    assert args == ["--workload", "gpu-matmul@1", "--max-budget", "2.5", "--yes", "--json"]
    assert firing["run_id"] == "b-000001" and firing["status"] == "completed"
    record = stored(isolated_home)["nightly"]
    assert record["last_run_id"] == "b-000001" and record["last_fired_at"] == firing["fired_at"]
    assert gs("benchmark schedule run-due --json").json() == []  # same time: never twice
    assert len(runner.calls) == 1


def test_missed_times_collapse_into_one_firing(gs, runner, clock):
    assert add(gs, cron="*/5 * * * *").exit_code == 0
    clock("3h")  # 36 times missed
    assert len(gs("benchmark schedule run-due --json").json()) == 1
    assert gs("benchmark schedule run-due --json").json() == []
    clock("3h6m")
    assert len(gs("benchmark schedule run-due --json").json()) == 1
    assert len(runner.calls) == 2


def test_disabled_schedules_never_fire_and_reenabling_skips_the_missed_ones(gs, runner, clock):
    assert add(gs, cron="*/5 * * * *").exit_code == 0
    gs("benchmark schedule update nightly --disable")
    clock("1h")
    assert gs("benchmark schedule run-due --json").json() == []
    gs("benchmark schedule update nightly --enable")
    assert gs("benchmark schedule run-due --json").json() == []  # counted from now
    clock("1h6m")
    assert len(gs("benchmark schedule run-due --json").json()) == 1


def test_each_due_schedule_fires_in_name_order(gs, runner, clock):
    assert add(gs, name="b", cron="@hourly").exit_code == 0
    assert add(gs, name="a", cron="@hourly", args="--workload transfer@1").exit_code == 0
    assert add(gs, name="c", cron="@yearly").exit_code == 0
    clock("61m")
    firings = gs("benchmark schedule run-due --json").json()
    assert [f["schedule"] for f in firings] == ["a", "b"]
    assert [name for _, name in runner.calls] == ["a", "b"]


def test_a_failed_run_exits_1_and_is_not_retried_at_once(gs, runner, clock):
    runner.exit_code = 1
    assert add(gs, cron="@hourly").exit_code == 0
    clock("61m")
    out = gs("benchmark schedule run-due")
    assert out.exit_code == 1 and "boom" in out.stderr
    assert gs("benchmark schedule run-due").exit_code == 0  # nothing due: fired once
    assert len(runner.calls) == 1


def test_a_concurrent_run_due_fires_nothing_twice(gs, runner, clock, isolated_home):
    assert add(gs, cron="@hourly").exit_code == 0
    clock("61m")
    second: list = []

    def meanwhile() -> None:  # another cron tick while the first run is still going
        store = BenchStore(isolated_home / "benchmarks.json")
        lock = store.path.with_name(store.path.name + ".run-due.lock")
        second.append(
            schedules.run_due(
                store, lock, lambda: datetime.now(timezone.utc) + timedelta(hours=2), runner
            )
        )

    runner.during = meanwhile
    assert len(gs("benchmark schedule run-due --json").json()) == 1
    assert second == [[]] and len(runner.calls) == 1


def test_claims_are_recorded_before_the_run_starts(gs, runner, clock, isolated_home):
    """Even without the lock, a second caller sees the schedule as fired already."""
    assert add(gs, cron="@hourly").exit_code == 0
    clock("61m")
    seen: list = []
    runner.during = lambda: seen.append(stored(isolated_home)["nightly"]["last_fired_at"])
    gs("benchmark schedule run-due")
    assert seen[0] is not None


def test_unreadable_schedule_records_are_skipped(gs, runner, clock, isolated_home):
    store = BenchStore(isolated_home / "benchmarks.json")
    store.put("schedules", "broken", {"name": "broken", "cron": "nonsense", "enabled": True})
    assert add(gs, cron="@hourly").exit_code == 0
    clock("61m")
    assert [f["schedule"] for f in gs("benchmark schedule run-due --json").json()] == ["nightly"]


def test_the_default_runner_starts_benchmark_run_as_a_subprocess(tmp_path, monkeypatch):
    """The real subprocess path, with a stand-in interpreter that records its argv."""
    fake = tmp_path / "python"
    log = tmp_path / "argv.txt"
    fake.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {shlex.quote(str(log))}\n'
        'echo "schedule=$GPU_SHOPPER_BENCH_SCHEDULE" >> ' + shlex.quote(str(log)) + "\n"
        'echo \'{"id": "b-abcdef", "status": "completed"}\'\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    outcome = schedules.subprocess_runner()(["--workload", "w", "--max-budget", "1"], "nightly")
    assert outcome.exit_code == 0 and outcome.run == {"id": "b-abcdef", "status": "completed"}
    lines = log.read_text().splitlines()
    assert lines == [
        "-m", "gpushopper", "benchmark", "run", "--workload", "w", "--max-budget", "1",
        "schedule=nightly",
    ]  # fmt: skip


def test_next_due_counts_from_creation_then_last_firing():
    record = {
        "cron": "0 * * * *",
        "enabled": True,
        "created_at": "2026-12-01T10:20:00Z",
        "last_fired_at": None,
    }
    assert iso(schedules.next_due(record)) == "2026-12-01T11:00:00Z"
    record["last_fired_at"] = "2026-12-01T13:05:00Z"
    assert iso(schedules.next_due(record)) == "2026-12-01T14:00:00Z"
