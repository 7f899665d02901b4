"""Pin the JSON shapes scripts depend on (CLI.md): a change here must be a conscious one."""

from __future__ import annotations

SESSION_KEYS = {
    "id", "status", "provider", "offer_id", "instance_id", "label", "gpu_name", "num_gpus",
    "price_per_hour", "consumer", "created_at", "ready_at", "reservation_ends_at", "hard_max_at",
    "ended_at", "end_reason", "cost_usd", "ssh", "timings", "image", "disk_gb", "ports",
}  # fmt: skip
PORT_KEYS = {"internal", "external", "protocol"}
SSH_KEYS = {"host", "port", "user", "key_path", "command"}
ORPHAN_KEYS = {
    "provider",
    "instance_id",
    "label",
    "reason",
    "age_seconds",
    "price_per_hour",
    "action",
}
STATUSES = {"creating", "provisioning", "verifying", "running", "ending", "ended", "failed"}


def test_session_json_has_every_contract_key(vast, gs):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    assert set(session) >= SESSION_KEYS
    assert set(session["ssh"]) >= SSH_KEYS
    assert session["status"] in STATUSES
    assert {"create_call_s", "time_to_running_s", "time_to_ssh_s"} <= set(session["timings"])
    assert session["created_at"].endswith("Z")
    assert isinstance(session["ports"], list)
    assert all(set(p) == PORT_KEYS for p in session["ports"])
    listed = gs("sessions list --json").json()
    assert isinstance(listed, list) and set(listed[0]) >= SESSION_KEYS
    ended = gs(f"sessions done {session['id']} --json").json()
    assert ended["status"] == "ended" and ended["ended_at"].endswith("Z")
    assert "host_key" not in ended["ssh"] and "private" not in str(ended).lower()


def test_orphan_json_has_every_contract_key(vast, gs, isolated_home):
    from gpushopper.state.store import StateStore

    install = StateStore(isolated_home / "state.json").install_id()
    vast.create_instance_directly(label=f"gpu-shopper:{install}:lost01", status="running")
    (row,) = gs("cleanup-orphans --json").json()
    assert set(row) >= ORPHAN_KEYS
    assert row["action"] == "left"


def test_error_object_shape(gs):
    data = gs("sessions show nope --json").json()
    assert set(data) == {"error"} and set(data["error"]) == {"type", "message"}


STATS_KEYS = {
    "provider", "template", "gpu", "count", "failed", "failure_rate", "failure_rate_by_stage",
    "phases",
}  # fmt: skip
STATS_PHASES = {
    "create_call_s",
    "time_to_running_s",
    "time_to_ssh_s",
    "setup_s",
    "destroy_to_gone_s",
}
TIMEOUT_KEYS = {"seconds", "source", "reason", "provider", "template"}


def test_sessions_stats_json_shape(vast, gs):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    assert gs(f"sessions done {session['id']} --json").exit_code == 0
    (row,) = gs("sessions stats --json").json()
    assert set(row) == STATS_KEYS
    assert set(row["phases"]) == STATS_PHASES
    assert set(row["failure_rate_by_stage"]) == {"create", "running", "ssh", "after boot"}
    for phase in row["phases"].values():
        assert set(phase) == {"n", "median_s", "p90_s"}
    assert row["count"] == 1 and row["provider"] == "vastai"
    assert row["phases"]["destroy_to_gone_s"]["n"] == 1  # sessions done recorded it
    assert gs("sessions stats --provider tensordock --json").json() == []
    assert gs("sessions stats --gpu a100 --json").json() == []
    assert len(gs("sessions stats --gpu 4090 --json").json()) == 1


def test_dry_run_timeout_shape(vast, gs):
    plan = gs("provision --provider vastai --gpu 4090 --dry-run --json").json()
    assert set(plan["timeout"]) == TIMEOUT_KEYS


REFRESH_KEYS = {"provider_status", "provider_detail"}
PROVIDER_STATUSES = {"creating", "loading", "running", "stopped", "exited", "failed", "unknown",
                     "gone", "unreachable"}  # fmt: skip


def test_refreshed_sessions_say_what_the_provider_says(vast, gs):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    assert not REFRESH_KEYS & set(session)  # only when asked
    (listed,) = gs("sessions list --refresh --json").json()
    assert set(listed) >= SESSION_KEYS | REFRESH_KEYS
    assert listed["provider_status"] in PROVIDER_STATUSES
    shown = gs(f"sessions show {session['id']} --refresh --json").json()
    assert shown["provider_status"] == "running" and isinstance(shown["provider_detail"], str)


# -- benchmark (issue 13) -------------------------------------------------------------------------
# -- benchmark run / status / cancel (bench-schema: the run and result records) -------------------
BENCH_RUN_KEYS = {
    "id", "workload", "command", "status", "owner", "created_at", "finished_at",
    "cancel_requested", "budget", "args", "schedule", "entries",
}  # fmt: skip
BENCH_ENTRY_KEYS = {
    "key", "gpu_name", "provider", "offer_id", "status", "result_id", "failure_stage", "attempts",
}  # fmt: skip
BENCH_ATTEMPT_KEYS = {
    "offer_id",
    "machine_id",
    "session_id",
    "job_id",
    "stage",
    "reason",
    "cost_usd",
}
BENCH_RESULT_KEYS = {
    "id", "workload", "workload_name", "workload_version", "metric", "value", "unit",
    "higher_is_better", "extra_metrics", "backend", "hardware", "offer", "timings", "cost_usd",
    "cost_per_unit", "valid", "invalid_reasons", "run_id", "entry", "job_id", "session_id",
    "source", "created_at",
}  # fmt: skip
BENCH_LIST_KEYS = {
    "id", "workload", "workload_name", "workload_version", "metric", "value", "unit",
    "higher_is_better", "valid", "gpu_name", "gpu_count", "provider", "offer_id", "machine_id",
    "price_per_hour", "measured_gpu", "measured_count", "device", "peak_vram_mb", "cost_usd",
    "source", "run_id", "created_at", "cost_per_unit",
}  # fmt: skip
BENCH_HARDWARE_KEYS = {"gpu_name", "gpu_count", "vram_mb", "driver", "cuda", "device"}
BENCH_OFFER_KEYS = {
    "provider", "offer_id", "machine_id", "gpu_name", "gpu_count", "price_per_hour", "dlperf",
}  # fmt: skip
BENCH_ROW_KEYS = {
    "result_id", "workload", "gpu_name", "gpu_count", "provider", "offer_id", "metric", "value",
    "unit", "higher_is_better", "price_per_hour", "cost_per_unit", "created_at",
    "live_offer_id", "live_price_per_hour", "live_cost_per_unit",
}  # fmt: skip
BENCH_GROUP_KEYS = {
    "gpu_name", "gpu_count", "n", "metric", "median_value", "unit", "higher_is_better",
    "median_price_per_hour", "cost_per_unit", "peak_vram_mb", "providers",
    "live_offer_id", "live_price_per_hour", "live_cost_per_unit",
}  # fmt: skip
SCHEDULE_KEYS = {
    "name", "cron", "max_budget", "args", "enabled", "created_at", "updated_at",
    "last_fired_at", "last_run_id", "next_due_at",
}  # fmt: skip
FIRING_KEYS = {"schedule", "due_at", "fired_at", "run_id", "exit_code", "status", "message"}


def test_benchmark_json_shapes(gs, tmp_path, monkeypatch):
    import json

    from gpushopper.cli import benchmark
    from gpushopper.core.bench.schedules import RunOutcome

    path = tmp_path / "r.json"
    record = {
        "workload": "mm", "metric": "tflops", "value": 10.0, "unit": "TFLOPS",
        "higher_is_better": True,
        "offer": {"provider": "vastai", "gpu_name": "RTX 4090", "price_per_hour": 0.4},
    }  # fmt: skip
    path.write_text(json.dumps(record))
    (stored,) = gs(f"benchmark submit {path} --json").json()
    assert set(stored) == BENCH_RESULT_KEYS
    assert set(stored["hardware"]) == BENCH_HARDWARE_KEYS
    assert set(stored["offer"]) == BENCH_OFFER_KEYS
    (listed,) = gs("benchmark list --json").json()
    assert set(listed) == BENCH_LIST_KEYS
    assert set(gs(f"benchmark show {stored['id']} --json").json()) == BENCH_RESULT_KEYS
    for question in ("cheapest", "best"):
        (row,) = gs(f"benchmark {question} --workload mm --json").json()
        assert set(row) == BENCH_ROW_KEYS
    (group,) = gs("benchmark recommendations --workload mm --json").json()
    assert set(group) == BENCH_GROUP_KEYS
    (compared,) = gs("benchmark compare --workload mm --json").json()
    assert set(compared) == BENCH_GROUP_KEYS | {"perf_ratio", "cost_ratio"}

    add = "benchmark schedule add s --cron '* * * * *' --max-budget 1 --json -- --workload mm"
    assert set(gs(add).json()) == SCHEDULE_KEYS
    (listed_schedule,) = gs("benchmark schedule list --json").json()
    assert set(listed_schedule) == SCHEDULE_KEYS
    monkeypatch.setattr(benchmark, "RUNNER", lambda args, name: RunOutcome(0, {"id": "b-123456"}))
    monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "2m")
    (firing,) = gs("benchmark schedule run-due --json").json()
    assert set(firing) == FIRING_KEYS


BENCH_TIMING_KEYS = {"provision_s", "upload_s", "run_s", "download_s", "teardown_s"}


def test_benchmark_run_status_cancel_json_shapes(vast, gs, isolated_home):
    from gpushopper.state.benchstore import BenchStore

    run = gs(
        [
            "benchmark", "run", "--workload", "my-step", "--gpu", "4090", "--provider", "vastai",
            "--command",
            'echo \'{"metric": "m", "value": 2, "unit": "u", "higher_is_better": false}\' '
            '> "$GPU_SHOPPER_RESULT"',
            "--max-budget", "1", "--yes", "--json",
        ]
    ).json()  # fmt: skip
    assert set(run) >= BENCH_RUN_KEYS
    assert set(run["budget"]) == {"max", "spent", "committed"}
    assert run["status"] == "completed" and run["args"][:2] == ["--workload", "my-step"]
    (entry,) = run["entries"]
    assert set(entry) >= BENCH_ENTRY_KEYS
    (attempt,) = entry["attempts"]
    assert set(attempt) >= BENCH_ATTEMPT_KEYS
    (result,) = BenchStore(isolated_home / "benchmarks.json").results().values()
    assert set(result) >= BENCH_RESULT_KEYS
    assert set(result["hardware"]) == BENCH_HARDWARE_KEYS
    assert set(result["offer"]) == BENCH_OFFER_KEYS
    assert set(result["timings"]) == BENCH_TIMING_KEYS
    assert result["id"].startswith("r-") and run["id"].startswith("b-")
    assert result["cost_per_unit"] == result["offer"]["price_per_hour"] * 2
    status = gs(f"benchmark status {run['id']} --json").json()
    assert set(status) >= BENCH_RUN_KEYS and status["id"] == run["id"]
    cancelled = gs(f"benchmark cancel {run['id']} --json").json()
    assert set(cancelled) >= BENCH_RUN_KEYS and cancelled["status"] == "completed"  # final


SESSION_LOGS_KEYS = {"session_id", "provider", "instance_id", "tail", "lines"}


def test_sessions_logs_json_shape(vast, gs):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    doc = gs(f"sessions logs {session['id']} --tail 3 --json").json()
    assert set(doc) == SESSION_LOGS_KEYS
    assert isinstance(doc["lines"], list) and all(isinstance(x, str) for x in doc["lines"])
    assert doc["tail"] == 3 and len(doc["lines"]) <= 3


CATALOG_KEYS = {"workload", "needs", "templates", "left_out", "errors"}
CATALOG_NEEDS = {"min_vram_gb", "num_gpus", "disk_gb", "min_reliability", "min_cuda", "template"}
CATALOG_TEMPLATE = {
    "provider", "id", "name", "image", "min_cuda", "recommended_disk_gb", "disk_gb",
    "workload_default", "gpus",
}  # fmt: skip
CATALOG_GPU = {"gpu_name", "vram_gb", "offers", "cheapest_per_hour", "median_per_hour"}
CATALOG_LEFT_OUT = {"provider", "id", "name", "reason"}


def test_templates_catalog_json_shape(vast, tensordock, gs):
    doc = gs("templates catalog --workload flux-lora --json").json()
    assert set(doc) == CATALOG_KEYS
    assert set(doc["needs"]) == CATALOG_NEEDS
    assert doc["templates"] and all(set(t) == CATALOG_TEMPLATE for t in doc["templates"])
    gpus = [g for t in doc["templates"] for g in t["gpus"]]
    assert gpus and all(set(g) == CATALOG_GPU for g in gpus)
    assert doc["left_out"] and all(set(r) == CATALOG_LEFT_OUT for r in doc["left_out"])
    assert doc["errors"] == {}
