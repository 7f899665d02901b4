"""``gpu-shopper benchmark run|status|cancel`` end to end: the Vast.ai emulator, a real
sshd, real remote processes (the fake instance is this machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gpushopper.state.benchstore import BenchStore
from tests.fakes.records import read_state
from tests.fakes.tool import spawn_tool
from tests.test_run import _kill_job_groups, _log_has, _when

RESULT = '{"metric": "steps_per_s", "value": 12.5, "unit": "steps/s", "higher_is_better": true}'
WRITE = f"printf '%s' '{RESULT}' > \"$GPU_SHOPPER_RESULT\""


def bench(home: Path) -> BenchStore:
    return BenchStore(home / "benchmarks.json")


def bench_run(gs, *args: str, budget: str = "5", extra: tuple[str, ...] = ()):
    argv = ["benchmark", "run", *args, "--max-budget", budget, "--yes", "--json", *extra]
    return gs(argv)


def two_offers(vast, **second):
    vast.offers.clear()
    cheap = vast.add_offer(gpu_name="RTX 4090", dph_base=0.20)
    dear = vast.add_offer(gpu_name="RTX 4090", dph_base=0.40, **second)
    return cheap, dear


def test_custom_workload_on_two_offers_stores_both_with_their_cost(gs, vast, isolated_home):
    cheap, dear = two_offers(vast)
    result = bench_run(
        gs,
        "--workload",
        "my-step",
        "--command",
        WRITE,
        "--offer",
        f"vastai:{cheap['id']}",
        "--offer",
        f"vastai:{dear['id']}",
        "--provider",
        "vastai",
    )
    assert result.exit_code == 0, result.stderr
    run = result.json()
    assert run["status"] == "completed"
    assert [e["status"] for e in run["entries"]] == ["succeeded", "succeeded"]
    results = bench(isolated_home).results()
    assert len(results) == 2
    by_offer = {r["offer"]["offer_id"]: r for r in results.values()}
    for offer, price in ((cheap, 0.20), (dear, 0.40)):
        found = by_offer[f"vastai:{offer['id']}"]
        assert found["value"] == 12.5 and found["metric"] == "steps_per_s"
        assert found["workload"] == "my-step" and found["workload_version"] is None
        assert found["valid"] is True, found["invalid_reasons"]
        assert found["cost_usd"] > 0
        assert found["offer"]["price_per_hour"] == pytest.approx(price, rel=0.2)
        assert found["cost_per_unit"] == pytest.approx(found["offer"]["price_per_hour"] / 12.5)
        assert found["hardware"]["gpu_name"] == "NVIDIA GeForce RTX 4090"
        assert found["hardware"]["vram_mb"] == 24564 and found["hardware"]["gpu_count"] == 1
        assert found["hardware"]["driver"] and found["hardware"]["cuda"]
        assert found["run_id"] == run["id"] and found["source"] == "run"
    spent = sum(a["cost_usd"] for e in run["entries"] for a in e["attempts"])
    assert run["budget"]["spent"] == pytest.approx(spent)
    assert vast.live_instances() == []
    jobs = read_state(isolated_home)["jobs"]
    assert len(jobs) == 2 and all(j["teardown"]["confirmed"] for j in jobs.values())


FAIL_ON_999 = (
    "if nvidia-smi --query-gpu=driver_version --format=csv,noheader | grep -q 999; "
    f"then echo broken here; exit 7; fi; {WRITE}"
)


def test_a_workload_failing_on_one_offer_is_partial_exit_1_not_retried_and_paid_for(
    gs, vast, isolated_home
):
    bad, good = two_offers(vast)
    vast.offers.pop(bad["id"])
    bad = vast.add_offer(gpu_name="RTX 4090", dph_base=0.20, real_gpu={"driver_version": "999.1"})
    result = bench_run(
        gs,
        "--workload",
        "my-step",
        "--command",
        FAIL_ON_999,
        "--offer",
        f"vastai:{bad['id']}",
        "--offer",
        f"vastai:{good['id']}",
        "--attempts",
        "3",
    )
    assert result.exit_code == 1, result.stderr
    run = result.json()
    assert run["status"] == "partial"
    failed, succeeded = run["entries"]
    assert failed["status"] == "failed" and failed["failure_stage"] == "measure"
    assert len(failed["attempts"]) == 1  # the offer that failed is not tried again
    (attempt,) = failed["attempts"]
    assert attempt["offer_id"] == f"vastai:{bad['id']}" and attempt["stage"] == "measure"
    assert "exited 7" in attempt["reason"]
    assert attempt["cost_usd"] > 0  # failed attempts are paid for, and counted
    assert succeeded["status"] == "succeeded"
    spent = attempt["cost_usd"] + succeeded["attempts"][0]["cost_usd"]
    assert run["budget"]["spent"] == pytest.approx(spent)
    assert len(bench(isolated_home).results()) == 1
    assert vast.live_instances() == []


def test_the_next_attempt_of_an_entry_goes_to_another_offer(gs, vast, isolated_home):
    vast.offers.clear()
    bad = vast.add_offer(gpu_name="RTX 4090", dph_base=0.20, real_gpu={"driver_version": "999.1"})
    good = vast.add_offer(gpu_name="RTX 4090", dph_base=0.30)
    result = bench_run(
        gs, "--workload", "my-step", "--command", FAIL_ON_999, "--gpu", "4090", "--attempts", "2"
    )
    assert result.exit_code == 0, result.stderr
    (entry,) = result.json()["entries"]
    assert entry["key"] == "RTX 4090/vastai" and entry["status"] == "succeeded"
    assert [a["offer_id"] for a in entry["attempts"]] == [
        f"vastai:{bad['id']}",
        f"vastai:{good['id']}",
    ]
    assert [a["stage"] for a in entry["attempts"]] == ["measure", "done"]
    assert vast.live_instances() == []


def test_no_such_ask_is_skipped_without_using_an_attempt(gs, vast, isolated_home, fake_time):
    taken, other = two_offers(vast)
    vast.fail_next(
        "PUT",
        rf"/asks/{taken['id']}/",
        status=404,
        body={
            "success": False,
            "error": "no_such_ask",
            "msg": f"error 404/3603: no_such_ask Instance type by id {taken['id']} is not available.",
        },
    )
    result = bench_run(
        gs, "--workload", "my-step", "--command", WRITE, "--gpu", "4090", "--attempts", "1"
    )
    assert result.exit_code == 0, result.stderr
    (entry,) = result.json()["entries"]
    assert entry["status"] == "succeeded"
    first, second = entry["attempts"]
    assert first["offer_id"] == f"vastai:{taken['id']}" and first["stage"] == "find_offer"
    assert "no_such_ask" in first["reason"] and first["cost_usd"] == 0
    assert second["offer_id"] == f"vastai:{other['id']}" and second["stage"] == "done"
    assert vast.live_instances() == []


def test_a_budget_that_allows_one_entry_never_starts_the_second(gs, vast, isolated_home):
    vast.offers.clear()
    # $0.25 a second: one minute commits $15; the first entry's real seconds spend the rest
    # (a dearer test price would be refused by the result validator as a unit mistake).
    one = vast.add_offer(gpu_name="RTX 4090", dph_base=900.0)
    two = vast.add_offer(gpu_name="RTX 4090", dph_base=900.0)
    result = bench_run(
        gs,
        "--workload",
        "my-step",
        "--command",
        f"sleep 0.3; {WRITE}",
        "--offer",
        f"vastai:{one['id']}",
        "--offer",
        f"vastai:{two['id']}",
        "--entry-timeout",
        "1m",
        budget="15.1",
    )
    assert result.exit_code == 1, result.stderr
    run = result.json()
    first, second = run["entries"]
    assert first["status"] == "succeeded" and first["attempts"][0]["cost_usd"] > 0.1
    assert second["status"] == "skipped" and second["attempts"] == []
    assert "over budget" in second["reason"]
    assert len(vast.instances) == 1  # the second was never rented
    assert vast.live_instances() == []


def test_an_offer_without_a_price_is_never_rented_under_a_budget(
    gs, vast, isolated_home, monkeypatch
):
    """A Vast.ai row with neither dph_total nor dph_base + storage is an offer of unknown
    price: no --max-budget can hold it, so it is skipped, never rented at a $0 commitment."""
    from dataclasses import replace

    from gpushopper.providers import vastai as vast_provider

    parse = vast_provider.parse_offer
    monkeypatch.setattr(
        vast_provider, "parse_offer", lambda raw: replace(parse(raw), price_per_hour=None)
    )
    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090")
    result = bench_run(
        gs, "--workload", "my-step", "--command", WRITE, "--offer", f"vastai:{offer['id']}"
    )
    assert result.exit_code == 1, result.stderr
    (entry,) = result.json()["entries"]
    assert entry["status"] == "skipped" and entry["attempts"] == []
    assert "price is unknown" in entry["reason"]
    assert len(vast.instances) == 0  # never rented


def test_a_bug_mid_job_still_destroys_the_instance_and_pays_for_it(
    gs, vast, isolated_home, monkeypatch
):
    """An unexpected exception while the job runs (not a provider or SSH failure) goes
    through the job's one teardown like any failure: nothing left running until the
    on-instance deadline, the attempt failed with its cost in the budget."""
    from gpushopper.core import jobs

    def bug(*args, **kwargs):
        raise RuntimeError("a bug mid-watch")

    monkeypatch.setattr(jobs.JobRunner, "_watch", bug)
    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090", dph_base=0.2)
    result = bench_run(
        gs, "--workload", "my-step", "--command", WRITE, "--offer", f"vastai:{offer['id']}"
    )
    assert result.exit_code == 1, result.stderr
    run = result.json()
    (entry,) = run["entries"]
    assert entry["status"] == "failed" and "a bug mid-watch" in entry["reason"]
    assert entry["attempts"][0]["cost_usd"] > 0
    assert run["budget"]["spent"] == pytest.approx(entry["attempts"][0]["cost_usd"])
    assert len(vast.instances) == 1 and vast.live_instances() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_run_destroys_every_session_and_exits_128_plus(gs, vast, isolated_home, sig):
    from tests.test_run import _remote_running

    one, two = two_offers(vast)
    _when(_log_has(isolated_home, "halfway"), lambda: os.kill(os.getpid(), sig))
    result = bench_run(
        gs,
        "--workload",
        "my-step",
        "--command",
        "echo halfway; sleep 62",
        "--offer",
        f"vastai:{one['id']}",
        "--offer",
        f"vastai:{two['id']}",
        "--parallel",
        "2",
    )
    assert result.exit_code == 128 + sig, result.stderr
    run = result.json()
    assert run["status"] == "interrupted"
    assert all(e["status"] in ("failed", "skipped") for e in run["entries"])
    assert any(e["failure_stage"] == "interrupted" for e in run["entries"])
    assert vast.live_instances() == []
    assert not _remote_running("sleep 62"), result.stderr
    for job in read_state(isolated_home)["jobs"].values():
        assert job["status"] in ("cancelled", "failed"), job


def test_gpu_matmul_on_the_cpu_gives_a_positive_figure(gs, vast, isolated_home):
    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090", dph_base=0.25)
    result = bench_run(
        gs, "--workload", "gpu-matmul@1", "--offer", f"vastai:{offer['id']}", "--param",
        "seconds=0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (found,) = bench(isolated_home).results().values()
    assert found["workload"] == "gpu-matmul@1" and found["workload_version"] == 1
    assert found["metric"].startswith("tflops_") and found["unit"] == "TFLOPS"
    assert found["value"] > 0 and found["extra_metrics"]["membw_gbs"] > 0
    assert found["hardware"]["device"] == "cpu"
    print(f"gpu-matmul@1 on the CPU: {found['value']:.6f} TFLOPS ({found['backend']}), "
          f"{found['extra_metrics']['membw_gbs']:.1f} GB/s")  # fmt: skip
    assert vast.live_instances() == []


def test_a_recent_valid_result_is_cached_unless_no_cache(gs, vast, isolated_home):
    vast.offers.clear()
    vast.add_offer(gpu_name="RTX 4090", dph_base=0.25)
    args = ("--workload", "my-step", "--command", WRITE, "--gpu", "4090")
    assert bench_run(gs, *args).exit_code == 0
    rented = len(vast.instances)
    again = bench_run(gs, *args)
    assert again.exit_code == 0, again.stderr
    (entry,) = again.json()["entries"]
    assert entry["status"] == "cached" and entry["attempts"] == []
    assert entry["result_id"] in bench(isolated_home).results()
    assert len(vast.instances) == rented
    fresh = bench_run(gs, *args, extra=("--no-cache",))
    assert fresh.json()["entries"][0]["status"] == "succeeded"
    assert len(bench(isolated_home).results()) == 2


def test_a_custom_workload_is_cached_by_its_command_not_its_name_alone(gs, vast, isolated_home):
    vast.offers.clear()
    vast.add_offer(gpu_name="RTX 4090", dph_base=0.25)
    first = bench_run(gs, "--workload", "my-step", "--command", WRITE, "--gpu", "4090")
    assert first.exit_code == 0, first.stderr
    other = f"true; {WRITE}"
    again = bench_run(gs, "--workload", "my-step", "--command", other, "--gpu", "4090")
    assert again.exit_code == 0, again.stderr
    assert again.json()["entries"][0]["status"] == "succeeded"  # measured, not the old result
    assert len(bench(isolated_home).results()) == 2
    same = bench_run(gs, "--workload", "my-step", "--command", other, "--gpu", "4090")
    assert same.json()["entries"][0]["status"] == "cached"
    assert vast.live_instances() == []


def test_a_measured_gpu_other_than_the_advertised_one_is_invalid_and_in_offer_health(
    gs, vast, isolated_home, monkeypatch
):
    """Preflight let it through (here: its judgement is switched off), the measurement sees another
    card: the result is stored invalid and the offer's health remembers it."""
    monkeypatch.setattr("gpushopper.remote.ssh.judge", lambda found, **kw: [])
    vast.offers.clear()
    offer = vast.add_offer(
        gpu_name="RTX 4090", dph_base=0.25, real_gpu={"name": "NVIDIA GeForce RTX 3060"}
    )
    result = bench_run(gs, "--workload", "my-step", "--command", WRITE, "--offer",
                       f"vastai:{offer['id']}")  # fmt: skip
    assert result.exit_code == 1, result.stderr
    (entry,) = result.json()["entries"]
    assert entry["status"] == "failed" and entry["failure_stage"] == "verify"
    (found,) = bench(isolated_home).results().values()
    assert found["valid"] is False
    assert "measured GPU NVIDIA GeForce RTX 3060" in found["invalid_reasons"][0]
    health = read_state(isolated_home)["offer_health"][f"vastai:{offer['id']}"]
    assert "measured GPU" in health["last_reason"]
    assert vast.live_instances() == []


def test_bad_input_exits_2_and_rents_nothing(gs, vast, isolated_home):
    base = ["benchmark", "run", "--yes", "--json"]
    assert gs([*base, "--workload", "my-step", "--command", "true"]).exit_code == 2  # no budget
    assert gs([*base, "--workload", "my-step", "--max-budget", "1"]).exit_code == 2  # no command
    assert gs([*base, "--workload", "gpu-matmul@2", "--max-budget", "1"]).exit_code == 2
    assert (
        gs([*base, "--workload", "gpu-matmul", "--command", "x", "--max-budget", "1"]).exit_code
        == 2
    )
    assert (
        gs([*base, "--workload", "bad name!", "--command", "x", "--max-budget", "1"]).exit_code == 2
    )
    assert (
        gs([*base, "--workload", "gpu-matmul", "--param", "nope=1", "--max-budget", "1"]).exit_code
        == 2
    )
    assert (
        gs([*base, "--workload", "transfer", "--param", "mb=-1", "--max-budget", "1"]).exit_code
        == 2
    )
    assert gs([*base, "--workload", "x", "--command", "t", "--max-budget", "nan"]).exit_code == 2
    assert (
        gs(
            [*base, "--workload", "x", "--command", "t", "--max-budget", "1", "--offer", "bogus"]
        ).exit_code
        == 2
    )
    assert gs([*base, "--workload", "flux-lora", "--max-budget", "1"]).exit_code == 2  # no HF_TOKEN
    assert gs("benchmark status b-000000 --json").exit_code == 2
    assert vast.instances == {} or vast.live_instances() == []
    assert bench(isolated_home).runs() == {}


def _spawn_run(tmp_path: Path, *args: str) -> subprocess.Popen:
    err = (tmp_path / "bench.err").open("w")
    return spawn_tool(
        "benchmark", "run", *args, "--yes", "--json", stdout=subprocess.PIPE, stderr=err
    )


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _the_run(home: Path) -> dict:
    (run,) = bench(home).runs().values()
    return run


def test_cancel_from_another_process_stops_the_run_and_its_owner_tears_down(
    gs, vast, isolated_home, tmp_path
):
    from tests.test_run import _remote_running

    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090", dph_base=0.25)
    proc = _spawn_run(
        tmp_path, "--workload", "my-step", "--command", "echo halfway; sleep 65",
        "--offer", f"vastai:{offer['id']}", "--max-budget", "5",
    )  # fmt: skip
    try:
        _wait_for(_log_has(isolated_home, "halfway"))
        run_id = _the_run(isolated_home)["id"]
        cancelled = gs(f"benchmark cancel {run_id} --json")
        assert cancelled.exit_code == 0, cancelled.stderr
        assert cancelled.json()["status"] == "cancelled"
        assert proc.wait(60) == 1, (tmp_path / "bench.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    run = _the_run(isolated_home)
    assert run["status"] == "cancelled" and run["cancel_requested"] is True
    (entry,) = run["entries"]
    assert entry["status"] == "failed" and entry["failure_stage"] == "interrupted"
    assert vast.live_instances() == []
    assert not _remote_running("sleep 65")
    shown = gs(f"benchmark status {run_id} --json").json()
    assert shown["status"] == "cancelled"
    again = gs(f"benchmark cancel {run_id} --json")  # finished: nothing to do, nothing changes
    assert again.exit_code == 0 and again.json()["status"] == "cancelled"


def test_cancel_with_the_owner_gone_destroys_the_sessions_itself(gs, vast, isolated_home, tmp_path):
    vast.offers.clear()
    one = vast.add_offer(gpu_name="RTX 4090", dph_base=0.25)
    two = vast.add_offer(gpu_name="RTX 4090", dph_base=0.30)
    proc = _spawn_run(
        tmp_path, "--workload", "my-step", "--command", "echo halfway; sleep 66",
        "--offer", f"vastai:{one['id']}", "--offer", f"vastai:{two['id']}", "--max-budget", "5",
    )  # fmt: skip
    try:
        _wait_for(_log_has(isolated_home, "halfway"))
        proc.kill()  # SIGKILL: no cleanup of its own
        proc.wait(10)
        assert len(vast.live_instances()) == 1
        run_id = _the_run(isolated_home)["id"]
        cancelled = gs(f"benchmark cancel {run_id} --json")
        assert cancelled.exit_code == 0, cancelled.stderr
        run = cancelled.json()
        assert run["status"] == "cancelled"
        first, second = run["entries"]
        assert first["status"] == "failed" and first["failure_stage"] == "interrupted"
        assert second["status"] == "skipped"
        assert vast.live_instances() == []
        (job,) = read_state(isolated_home)["jobs"].values()
        assert job["status"] == "cancelled"
        sessions = read_state(isolated_home)["sessions"]
        assert all(s["status"] in ("ended", "failed") for s in sessions.values())
    finally:
        _kill_job_groups()


def test_parallel_entries_wait_for_the_money_a_running_one_has_committed(gs, vast, isolated_home):
    """--parallel 2, but the budget holds one entry's commitment at a time: the second
    starts only once the first has ended (and given its commitment back)."""
    one, two = two_offers(vast)
    result = bench_run(
        gs,
        "--workload",
        "my-step",
        "--command",
        f"sleep 0.5; {WRITE}",
        "--offer",
        f"vastai:{one['id']}",
        "--offer",
        f"vastai:{two['id']}",
        "--parallel",
        "2",
        "--entry-timeout",
        "1h",
        budget="0.45",  # 0.2 + 0.4 committed together would be 0.6
    )
    assert result.exit_code == 0, result.stderr
    first, second = (e["attempts"][0] for e in result.json()["entries"])
    sessions = read_state(isolated_home)["sessions"]
    assert sessions[second["session_id"]]["created_at"] >= sessions[first["session_id"]]["ended_at"]
    assert vast.live_instances() == []


def test_cancel_with_the_owner_killed_mid_boot_destroys_what_it_was_booting(
    gs, vast, isolated_home, tmp_path
):
    """SIGKILLed while the instance is still loading: no attempt names the session yet;
    it is the run's by its owner process, and cancel destroys it."""
    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090", dph_base=0.25, boot={"mode": "stuck_loading"})
    proc = _spawn_run(
        tmp_path, "--workload", "my-step", "--command", WRITE,
        "--offer", f"vastai:{offer['id']}", "--max-budget", "5",
    )  # fmt: skip

    def booting() -> bool:
        sessions = read_state(isolated_home).get("sessions") or {}
        return any(s.get("instance_id") for s in sessions.values())

    try:
        _wait_for(booting)
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(vast.live_instances()) == 1
    run = _the_run(isolated_home)
    assert run["entries"][0]["attempts"][0]["session_id"] is None
    shown = gs(f"benchmark status {run['id']}")  # the table, and a hint
    assert shown.exit_code == 0 and "process of run" in shown.stderr and "running" in shown.stdout
    cancelled = gs(f"benchmark cancel {run['id']} --json")
    assert cancelled.exit_code == 0, cancelled.stderr
    assert cancelled.json()["status"] == "cancelled"
    assert vast.live_instances() == []


def test_a_destroy_never_confirmed_exits_3_and_a_command_exiting_3_does_not(
    gs, vast, isolated_home, fake_time
):
    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090", dph_base=0.25)
    args = ("--workload", "my-step", "--offer", f"vastai:{offer['id']}", "--no-cache")
    exits_3 = bench_run(gs, *args, "--command", "exit 3")
    assert exits_3.exit_code == 1, exits_3.stderr  # the command's 3 is a failed measurement
    assert exits_3.json()["entries"][0]["failure_stage"] == "measure"
    vast.fail_next("DELETE", r"/instances/", status=500, times=1000)
    result = bench_run(gs, *args, "--command", WRITE)
    assert result.exit_code == 3, result.stderr
    (attempt,) = result.json()["entries"][0]["attempts"]
    assert attempt["stage"] == "teardown" and "NOT confirmed" in attempt["reason"]
    assert len(vast.live_instances()) == 1
    vast.clear_faults()
    assert gs(f"sessions done {attempt['session_id']}").exit_code == 0
    assert vast.live_instances() == []


def test_a_failed_boot_whose_destroy_is_not_confirmed_exits_3(gs, vast, isolated_home, fake_time):
    """A boot that never comes up is destroyed; when that destroy fails, the session is
    left ending with the destroy's error, and the run says so (3), not 'all gone'."""
    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090", dph_base=0.25, boot={"mode": "stuck_loading"})
    vast.fail_next("DELETE", r"/instances/", status=500, times=1000)
    args = ("--workload", "my-step", "--command", WRITE, "--offer", f"vastai:{offer['id']}")
    result = bench_run(gs, *args, extra=("--no-cache",))
    assert result.exit_code == 3, result.stderr
    (attempt,) = result.json()["entries"][0]["attempts"]
    assert attempt["stage"] == "teardown"
    assert len(vast.live_instances()) == 1
    vast.clear_faults()
    assert gs(f"sessions done {attempt['session_id']}").exit_code == 0
    assert vast.live_instances() == []


def test_an_offer_that_is_gone_and_a_market_that_does_not_answer_are_recorded(
    gs, vast, isolated_home
):
    gone = bench_run(gs, "--workload", "my-step", "--command", WRITE, "--offer", "vastai:999999")
    assert gone.exit_code == 1, gone.stderr
    run = gone.json()
    assert run["status"] == "failed"
    (entry,) = run["entries"]
    assert entry["status"] == "failed" and entry["failure_stage"] == "find_offer"
    assert entry["attempts"] == []
    vast.fail_next("*", r"/bundles", status=500, times=100)
    down = bench_run(gs, "--workload", "my-step", "--command", WRITE, "--gpu", "4090",
                     "--provider", "vastai")  # fmt: skip
    assert down.exit_code == 1, down.stderr
    runs = sorted(bench(isolated_home).runs().values(), key=lambda r: r["created_at"])
    assert [r["status"] for r in runs] == ["failed", "failed"]
    assert "vastai" in runs[-1]["error"] and runs[-1]["finished_at"]
    assert vast.instances == {}


def test_gpu_models_on_both_providers_are_one_entry_each(gs, vast, tensordock, isolated_home):
    """--gpu 4090 without --provider: one entry per provider that has it, each measured on
    its best offer there, both destroyed."""
    result = bench_run(gs, "--workload", "my-step", "--command", WRITE, "--gpu", "4090",
                       "--parallel", "2")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    entries = result.json()["entries"]
    assert sorted(e["provider"] for e in entries) == ["tensordock", "vastai"]
    assert all(e["status"] == "succeeded" for e in entries)
    results = bench(isolated_home).results().values()
    assert {r["offer"]["provider"] for r in results} == {"tensordock", "vastai"}
    assert vast.live_instances() == []
    assert tensordock.live_instances() == []


def test_a_tensordock_stock_out_is_a_taken_offer_too(gs, tensordock, isolated_home, fake_time):
    tensordock.error_in_200_next("POST", r"/instances$", "No available nodes found", times=1)
    result = bench_run(gs, "--workload", "my-step", "--command", WRITE, "--gpu", "4090",
                       "--provider", "tensordock", "--attempts", "1")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (entry,) = result.json()["entries"]
    first, second = entry["attempts"]
    assert first["stage"] == "find_offer" and "No available nodes found" in first["reason"]
    assert second["stage"] == "done" and second["offer_id"] != first["offer_id"]
    assert tensordock.live_instances() == []
