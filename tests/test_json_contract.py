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
