"""Lifecycle statistics (core/stats.py, `sessions stats`) and the boot timeouts they set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpushopper.core import stats
from gpushopper.model.session import Session, SessionRecords
from gpushopper.state.store import StateStore


def record(
    n: int,
    *,
    provider: str = "vastai",
    template: str | None = "pytorch",
    gpu: str = "RTX 4090",
    status: str = "ended",
    boot_s: float | None = 100.0,
    **timings: float,
) -> dict[str, Any]:
    t: dict[str, float] = {"create_call_s": 1.0}
    if boot_s is not None:
        t.update(time_to_running_s=boot_s * 0.8, time_to_ssh_s=boot_s)
    t.update(timings)
    return {
        "id": f"s{n:05d}",
        "status": status,
        "provider": provider,
        "template": template,
        "image": None,
        "gpu_name": gpu,
        "timings": t,
    }


# -- percentiles and the measured timeout ------------------------------------------------------
def test_percentile_interpolates_between_ranks():
    assert stats.percentile([], 0.9) is None
    assert stats.percentile([5.0], 0.9) == 5.0
    assert stats.percentile([float(v) for v in range(1, 11)], 0.5) == pytest.approx(5.5)
    assert stats.percentile([float(v) for v in range(1, 11)], 0.9) == pytest.approx(9.1)


def typed(records):
    """The records as the store hands them to stats: the valid ones, typed."""
    return list(SessionRecords.split({f"r{i}": r for i, r in enumerate(records)}).valid.values())


def choose(records, explicit=None, max_s=1800.0):
    return stats.provision_timeout(
        typed(records), "vastai", "pytorch", explicit=explicit, default_s=900.0, max_s=max_s
    )


def test_four_boots_keep_the_default_five_set_it():
    boots = [record(i, boot_s=400.0 + i * 10) for i in range(4)]
    assert choose(boots).source == "default"
    assert choose(boots).seconds == 900.0
    boots.append(record(9, boot_s=600.0))
    chosen = choose(boots)
    assert chosen.source == "measured"
    p90 = stats.percentile([400.0, 410.0, 420.0, 430.0, 600.0], 0.9)
    assert chosen.seconds == pytest.approx(round(p90 * 1.5, 1))
    assert "5 recorded boots" in chosen.reason


def test_only_boots_of_the_same_pair_count():
    boots = [record(i, boot_s=400.0) for i in range(4)]
    boots += [record(10, provider="tensordock", boot_s=400.0), record(11, template="other")]
    boots += [record(12, status="failed", boot_s=None)]  # a failed boot measures nothing
    assert choose(boots).source == "default"


def test_measured_timeout_is_clamped_to_five_minutes_and_the_maximum():
    fast = [record(i, boot_s=30.0) for i in range(5)]
    assert choose(fast).seconds == 300.0
    slow = [record(i, boot_s=3000.0) for i in range(5)]
    assert choose(slow, max_s=1800.0).seconds == 1800.0


def test_an_explicit_timeout_always_wins():
    boots = [record(i, boot_s=600.0) for i in range(8)]
    chosen = choose(boots, explicit=(120.0, "--timeout flag"))
    assert (chosen.seconds, chosen.source) == (120.0, "--timeout flag")


# -- provision: the measured timeout takes over after 5 boots, and is used -----------------------
def seed(home: Path, records: list[dict[str, Any]]) -> None:
    store = StateStore(home / "state.json")
    for r in records:
        store.put_session(Session.from_record(r))


def dry_run_timeout(gs, extra: str = "") -> dict[str, Any]:
    result = gs(f"provision --provider vastai --gpu 4090 --dry-run --json {extra}")
    assert result.exit_code == 0, result.stderr
    return result.json()["timeout"]


def test_dry_run_says_which_timeout_and_why(vast, gs, isolated_home, monkeypatch):
    first = dry_run_timeout(gs)
    assert first["source"] == "default"
    assert first["seconds"] == 900
    assert "0 recorded boots" in first["reason"]
    pair = {"provider": first["provider"], "template": first["template"]}
    seed(
        isolated_home,
        [
            record(i, provider=pair["provider"], template=pair["template"], boot_s=400.0)
            for i in range(4)
        ],
    )
    assert dry_run_timeout(gs)["source"] == "default"
    seed(
        isolated_home,
        [record(4, provider=pair["provider"], template=pair["template"], boot_s=400.0)],
    )
    measured = dry_run_timeout(gs)
    assert measured["source"] == "measured"
    assert measured["seconds"] == 600.0
    text = gs("provision --provider vastai --gpu 4090 --dry-run")
    assert "boot timeout" in text.stdout and "10m" in text.stdout
    # an explicit flag, and an explicit setting, win over the measurement
    assert dry_run_timeout(gs, "--timeout 7m")["seconds"] == 420
    monkeypatch.setenv("GPU_SHOPPER_SAFETY_PROVISION_TIMEOUT", "20m")
    chosen = dry_run_timeout(gs)
    assert (chosen["seconds"], chosen["source"]) == (1200, "safety.provision_timeout setting")


@pytest.mark.parametrize(
    "argv",
    [
        ["provision", "--provider", "vastai", "--gpu", "4090", "--yes"],
        ["run", "--provider", "vastai", "--gpu", "4090", "--yes", "--json", "--", "true"],
    ],
    ids=["provision", "run"],
)
def test_a_real_boot_waits_the_measured_timeout(vast, gs, isolated_home, fake_time, argv):
    """run and provision pick the boot timeout alike: 5 recorded boots of 100s make it 5m
    (the floor), not the 15m default."""
    pair = dry_run_timeout(gs)
    seed(
        isolated_home,
        [
            record(i, provider=pair["provider"], template=pair["template"], boot_s=100.0)
            for i in range(5)
        ],
    )
    vast.boot = {"mode": "stuck_loading", "loading_after": 0.0, "running_after": 0.0}
    result = gs(argv)
    assert result.exit_code == 1
    assert "not running after 5m" in result.stderr  # p90 100s x 1.5 = 150s, floored at 5m
    if argv[0] == "run":
        assert result.json()["failure_stage"] == "provisioning"
    assert 300 <= fake_time.slept < 320
    assert vast.live_instances() == []


# -- sessions stats --------------------------------------------------------------------------
def test_group_stats_counts_failures_by_stage_and_skips_booting():
    records = [record(i, boot_s=100.0 + i) for i in range(3)]
    records.append(record(10, status="failed", boot_s=None))  # created, never running
    records.append({**record(11, status="failed", boot_s=None), "timings": {}})  # create failed
    records.append(record(12, status="provisioning", boot_s=None))  # still booting
    records.append(record(13, gpu="A100 SXM4", destroy_to_gone_s=4.0))
    rows = stats.group_stats(typed(records))
    assert [(r["gpu"], r["count"]) for r in rows] == [("A100 SXM4", 1), ("RTX 4090", 5)]
    row = rows[1]
    assert row["failed"] == 2 and row["failure_rate"] == 0.4
    assert row["failure_rate_by_stage"] == {
        "create": 0.2,
        "running": 0.2,
        "ssh": 0.0,
        "after boot": 0.0,
    }
    assert row["phases"]["time_to_ssh_s"] == {"n": 3, "median_s": 101.0, "p90_s": 101.8}
    assert rows[0]["phases"]["destroy_to_gone_s"]["median_s"] == 4.0
    assert stats.group_stats(typed(records), stats.Filters(gpu="a100"))[0]["gpu"] == "A100 SXM4"
    assert stats.group_stats(typed(records), stats.Filters(template="nope")) == []


def test_sessions_stats_table_and_bad_input(gs, isolated_home, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: whole cells, one line each
    assert gs("sessions stats").stderr.strip() == "No recorded sessions."
    seed(isolated_home, [record(i, boot_s=90.0) for i in range(3)])
    text = gs("sessions stats").stdout
    assert "RTX 4090" in text and "1m30s / 1m30s" in text
    bad = gs("sessions stats --provider nowhere")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr


GARBAGE_TIMINGS: list[Any] = ["100", float("nan"), float("inf"), -5.0, True, None, [1], {}]


def test_garbage_timings_measure_nothing_and_crash_nothing():
    """A hand-edited or damaged record: no timing that is not a finite, non-negative number
    counts, and no record that is not a mapping breaks the table."""
    good = [record(i, boot_s=400.0) for i in range(4)]
    bad = [
        {**record(100 + i, boot_s=None), "timings": {"create_call_s": v, "time_to_ssh_s": v}}
        for i, v in enumerate(GARBAGE_TIMINGS)
    ]
    bad += [{**record(200), "timings": "100"}, {**record(201), "timings": None}]
    weird: list[Any] = [None, "s00001", 7, {"status": ["x"], "provider": {"a": 1}, "timings": []}]
    records = good + bad + weird
    assert len(SessionRecords.split(dict(enumerate(records))).damaged) == len(weird)
    assert choose(records).source == "default"  # 4 real boots: garbage makes no fifth
    assert choose([*records, record(9, boot_s=400.0)]).seconds == 600.0  # 400s x 1.5
    rows = stats.group_stats(typed(records))
    (row,) = [r for r in rows if r["provider"] == "vastai" and r["gpu"] == "RTX 4090"]
    assert row["count"] == 4 + len(bad)
    for key, _label in stats.PHASES:
        assert row["phases"][key]["n"] in (0, 4), key
    assert stats.table_rows(rows)  # renders
