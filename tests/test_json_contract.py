"""Pin the JSON shapes scripts depend on (CLI.md): a change here must be a conscious one."""

from __future__ import annotations

SESSION_KEYS = {
    "id", "status", "provider", "offer_id", "instance_id", "label", "gpu_name", "num_gpus",
    "price_per_hour", "consumer", "created_at", "ready_at", "reservation_ends_at", "hard_max_at",
    "ended_at", "end_reason", "cost_usd", "ssh", "timings",
}  # fmt: skip
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
