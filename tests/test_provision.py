"""Provisioning end to end: emulators + a real sshd, OpenSSH's ssh for the hand-off."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from gpushopper.state.store import StateStore
from tests.fakes.records import read_state
from tests.fakes.tool import run_tool, spawn_tool
from tests.waiting import wait_for


def ssh_run(command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run the printed ssh command (plus BatchMode, so a refused key fails fast)."""
    argv = shlex.split(command)
    argv[1:1] = ["-o", "BatchMode=yes", "-F", "/dev/null"]
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize(
    "provider_fixture, flags",
    [("vast", "--provider vastai"), ("tensordock", "--provider tensordock")],
)
def test_provision_ssh_done_leaves_nothing(request, gs, isolated_home, provider_fixture, flags):
    emu = request.getfixturevalue(provider_fixture)
    result = gs(f"provision {flags} --gpu 4090 --hours 1h --yes --json")
    assert result.exit_code == 0, result.stderr
    session = result.json()
    assert session["status"] == "running"
    assert session["instance_id"]
    assert session["label"].startswith("gpu-shopper:")
    assert len(emu.live_instances()) == 1
    # the hand-off: OpenSSH logs in with the printed command and sees the GPU
    login = ssh_run(session["ssh"]["command"], "nvidia-smi", "-L")
    assert login.returncode == 0, login.stderr
    assert "4090" in login.stdout
    # key file private; never printed
    key_path = Path(session["ssh"]["key_path"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    private = key_path.read_text()
    assert private.strip().splitlines()[1] not in result.stdout + result.stderr
    shown = gs(f"sessions show {session['id']} --json")
    assert private.strip().splitlines()[1] not in shown.stdout
    assert shown.json()["timings"]["time_to_ssh_s"] >= shown.json()["timings"]["time_to_running_s"]
    # done: destroyed, confirmed, costed
    done = gs(f"sessions done {session['id']} --json")
    assert done.exit_code == 0, done.stderr
    assert done.json()["status"] == "ended"
    assert done.json()["cost_usd"] > 0
    assert emu.live_instances() == []
    assert read_state(isolated_home)["sessions"][session["id"]]["status"] == "ended"


# -- failures never leak money ----------------------------------------------------------------
def sessions_by_status(home: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in read_state(home)["sessions"].values():
        out.setdefault(record["status"], []).append(record)
    return out


def test_exited_boot_is_destroyed_recorded_and_failover_picks_next(vast, gs, isolated_home):
    bad = vast.add_offer(
        gpu_name="RTX 4090", dph_base=0.10, machine_id=777001, boot={"mode": "exited"}
    )
    result = gs("provision --provider vastai --gpu 4090 --auto-retry 1 --yes --json")
    assert result.exit_code == 0, result.stderr
    session = result.json()
    assert session["offer_id"] != f"vastai:{bad['id']}"
    assert "Attempt 1 failed" in result.stderr
    assert len(vast.live_instances()) == 1
    by_status = sessions_by_status(isolated_home)
    assert (
        len(by_status["failed"]) == 1
        and by_status["failed"][0]["offer_id"] == f"vastai:{bad['id']}"
    )
    assert "exited" in by_status["failed"][0]["end_reason"]
    health = read_state(isolated_home)["offer_health"]
    assert health[f"vastai:{bad['id']}"]["failures"] == 1
    assert health["machine:vastai:777001"]["failures"] == 1
    assert gs("offer-health --json").json()[0]["failures"] == 1


def test_without_auto_retry_a_failed_boot_exits_1_and_leaves_nothing(vast, gs, isolated_home):
    vast.boot = {"mode": "exited", "loading_after": 0.0, "running_after": 0.0}
    result = gs("provision --provider vastai --gpu 4090 --yes")
    assert result.exit_code == 1
    assert "exited" in result.stderr
    assert vast.live_instances() == []
    (failed,) = sessions_by_status(isolated_home)["failed"]
    assert failed["instance_id"] and failed["ended_at"]


def test_repeated_failures_suppress_the_offer(vast, gs, isolated_home):
    bad = vast.add_offer(
        gpu_name="RTX 4090", dph_base=0.05, machine_id=777002, boot={"mode": "exited"}
    )
    for _ in range(2):
        assert gs(f"provision vastai:{bad['id']} --yes").exit_code == 1
    offers = gs("inventory --provider vastai --gpu 4090 --json --refresh").json()
    assert f"vastai:{bad['id']}" not in [o["id"] for o in offers]
    shown = gs("inventory --provider vastai --gpu 4090 --json --refresh --include-unhealthy").json()
    assert {o["id"]: o["health"] for o in shown}[f"vastai:{bad['id']}"] == "suppressed"


def test_stuck_loading_past_timeout_is_destroyed(vast, gs, isolated_home, fake_time):
    vast.boot = {"mode": "stuck_loading", "loading_after": 0.0, "running_after": 0.0}
    result = gs("provision --provider vastai --gpu 4090 --timeout 2s --yes")
    assert result.exit_code == 1
    assert "not running after 2s" in result.stderr
    assert 2 <= fake_time.slept < 10  # waited out the timeout on its clock, then gave up
    assert vast.live_instances() == []


def test_ssh_never_answering_is_destroyed(vast, gs, isolated_home, fake_time):
    vast.ssh_backend = None  # running, but nothing listens on the SSH port
    result = gs("provision --provider vastai --gpu 4090 --timeout 3s --yes")
    assert result.exit_code == 1
    assert fake_time.slept >= 3  # kept retrying SSH until the boot timeout
    assert "SSH" in result.stderr
    assert vast.live_instances() == []
    assert sessions_by_status(isolated_home)["failed"][0]["status"] == "failed"


@pytest.mark.parametrize(
    "real_gpu, flags, needle",
    [
        ({"cuda_version": "12.8"}, "--min-cuda 12.9", "CUDA 12.8 below the 12.9"),
        ({"driver_version": None}, "", "no NVIDIA driver"),
        ({"count": 1}, "--num-gpus 2", "1 GPUs visible, 2 rented"),
        ({"memory_mib": 12288}, "", "MiB VRAM per GPU"),
    ],
)
def test_machine_short_of_what_was_rented_is_a_failed_boot(
    vast, gs, isolated_home, real_gpu, flags, needle
):
    offer = vast.add_offer(
        gpu_name="RTX 4090",
        num_gpus=2 if "num-gpus" in flags else 1,
        cuda_max_good=12.9,
        dph_base=0.01,
        real_gpu=real_gpu,
    )
    result = gs(f"provision vastai:{offer['id']} {flags} --yes")
    assert result.exit_code == 1, result.stderr
    assert needle in result.stderr
    assert vast.live_instances() == []


def test_create_500_after_creating_is_adopted_by_label(vast, gs, isolated_home):
    vast.create_error_after_create = True
    result = gs("provision --provider vastai --gpu 4090 --yes --json")
    assert result.exit_code == 0, result.stderr
    assert "adopting" in result.stderr
    creates = [r for r in vast.requests if r["method"] == "PUT" and "/asks/" in r["path"]]
    assert len(creates) == 1  # never a second create
    assert len(vast.live_instances()) == 1
    assert gs(f"sessions done {result.json()['id']}").exit_code == 0
    assert vast.live_instances() == []


def test_create_error_without_instance_fails_cleanly(tensordock, gs, isolated_home, fake_time):
    tensordock.error_in_200_next("POST", r"/instances$", "No available nodes found", times=5)
    result = gs("provision --provider tensordock --gpu 4090 --yes")
    assert result.exit_code == 1
    assert "No available nodes found" in result.stderr
    assert tensordock.live_instances() == []
    (failed,) = sessions_by_status(isolated_home)["failed"]
    assert failed["instance_id"] is None


def test_destroy_failing_once_still_ends_with_nothing(vast, gs, isolated_home, fake_time):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    vast.destroy_fail_times = 1
    done = gs(f"sessions done {session['id']} --json")
    assert done.exit_code == 0, done.stderr
    assert vast.live_instances() == []


def test_ctrl_c_destroys_and_exits_130(vast, gs, isolated_home, monkeypatch):
    from gpushopper.core import provisioner

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(provisioner.Provisioner, "_verify", interrupted)
    result = gs("provision --provider vastai --gpu 4090 --yes")
    assert result.exit_code == 130
    assert vast.live_instances() == []
    (failed,) = sessions_by_status(isolated_home)["failed"]
    assert "interrupted" in failed["end_reason"]


def test_sigkilled_provision_is_found_by_label(vast, isolated_home):
    import signal

    vast.boot = {"mode": "stuck_loading", "loading_after": 0.0, "running_after": 0.0}
    proc = spawn_tool(
        *("provision", "--provider", "vastai", "--gpu", "4090", "--yes"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def saved_with_instance() -> dict | None:
        sessions = (
            read_state(isolated_home)["sessions"] if (isolated_home / "state.json").exists() else {}
        )
        return next((s for s in sessions.values() if s.get("instance_id")), None)

    try:
        record = wait_for(saved_with_instance, 30, "the provision to record its instance")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert record is not None
    live = vast.live_instances()
    assert [i["label"] for i in live] == [record["label"]]
    assert read_state(isolated_home)["sessions"][record["id"]]["status"] == "provisioning"


def test_wrong_key_cannot_log_in(vast, gs, isolated_home, tmp_path):
    from gpushopper.sandbox.sshd import make_keypair

    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    other_key, _ = make_keypair(tmp_path / "other")
    command = session["ssh"]["command"].replace(session["ssh"]["key_path"], str(other_key))
    refused = ssh_run(command, "true")
    assert refused.returncode == 255
    assert ssh_run(session["ssh"]["command"], "true").returncode == 0


def test_given_ssh_key_is_used_not_a_new_one(vast, gs, isolated_home, tmp_path):
    from gpushopper.sandbox.sshd import make_keypair

    key, public = make_keypair(tmp_path / "mine")
    session = gs(f"provision --provider vastai --gpu 4090 --ssh-key {key} --yes --json").json()
    assert session["ssh"]["key_path"] == str(key)
    assert not (isolated_home / "keys" / session["id"]).joinpath("id_ed25519").exists()
    assert public.split()[1] in " ".join(vast.live_instances()[0]["authorized_keys"])


def test_tensordock_key_reaches_vm_through_cloud_init(tensordock, gs, isolated_home):
    tensordock.drop_ssh_key_field = True  # the field is ignored at some sites
    session = gs("provision --provider tensordock --gpu 4090 --yes --json").json()
    assert session["status"] == "running"
    assert ssh_run(session["ssh"]["command"], "true").returncode == 0
    (instance,) = tensordock.live_instances()
    body = next(r["json"] for r in tensordock.requests if r["method"] == "POST")
    attrs = body["data"]["attributes"]
    assert attrs["useDedicatedIp"] is True
    assert attrs["resources"]["vcpu_count"] % 2 == 0 and attrs["resources"]["storage_gb"] >= 100
    assert any("/home/user/.ssh" in c for c in attrs["cloud_init"]["runcmd"])
    assert any("/root/.ssh" in c for c in attrs["cloud_init"]["runcmd"])


# -- sessions -------------------------------------------------------------------------------------
def test_extend_past_hard_max_needs_override(vast, gs, isolated_home):
    session = gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json").json()
    refused = gs(f"sessions extend {session['id']} --hours 11h")
    assert refused.exit_code == 2
    assert "hard maximum" in refused.stderr and "--override" in refused.stderr
    ok = gs(f"sessions extend {session['id']} --hours 1h --json")
    assert ok.exit_code == 0
    forced = gs(f"sessions extend {session['id']} --hours 11h --override --json").json()
    assert forced["hard_max_at"] == forced["reservation_ends_at"]
    assert forced["overrides"][-1]["via"] == "extend"


def test_hours_past_hard_max_refused_at_provision(vast, gs):
    result = gs("provision --provider vastai --hours 13h --yes")
    assert result.exit_code == 2
    assert "hard maximum" in result.stderr
    assert vast.live_instances() == []


def test_dry_run_creates_nothing(vast, gs, isolated_home):
    result = gs("provision --provider vastai --gpu 4090 --hours 3h --dry-run --json")
    assert result.exit_code == 0, result.stderr
    plan = result.json()
    assert plan["dry_run"] is True
    assert plan["projected_cost_usd"] == pytest.approx(plan["price_per_hour"] * 3, rel=1e-3)
    assert vast.live_instances() == []
    assert not [r for r in vast.requests if r["method"] == "PUT"]


def test_sessions_list_show_and_unknown_id(vast, gs, isolated_home):
    session = gs("provision --provider vastai --gpu 4090 --consumer alice --yes --json").json()
    listed = gs("sessions list --json").json()
    assert [s["id"] for s in listed] == [session["id"]]
    assert gs("sessions --consumer bob --json").json() == []
    table = gs("sessions")
    assert session["id"] in table.stdout and "running" in table.stdout
    missing = gs("sessions show nope")
    assert missing.exit_code == 2 and "nope" in missing.stderr
    gs(f"shutdown {session['id']}")
    assert gs("sessions list --json").json() == []
    assert gs("sessions list --all --json").json()[0]["status"] == "ended"


def test_ssh_config_block_is_written(vast, gs, isolated_home):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    text = (isolated_home / "ssh_config").read_text()
    assert f"Host gpu-{session['id']}" in text
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    login = subprocess.run(
        [
            "ssh",
            "-F",
            str(isolated_home / "ssh_config"),
            "-o",
            "BatchMode=yes",
            f"gpu-{session['id']}",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert login.returncode == 0, login.stderr
    gs(f"sessions done {session['id']}")
    assert f"Host gpu-{session['id']}" not in (isolated_home / "ssh_config").read_text()


def test_diagnostics_over_ssh(vast, gs, isolated_home):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    report = gs(f"sessions diagnostics {session['id']} --json")
    assert report.exit_code == 0, report.stderr
    data = report.json()
    assert data["gpu_count"] == 1 and data["cuda_version"] and data["uptime_seconds"] is not None


# -- the same faults on TensorDock ---------------------------------------------------------------
@pytest.mark.parametrize(
    "setup, flags, needle",
    [
        (
            lambda emu: setattr(emu, "boot", {"mode": "stuck_starting", "running_after": 0.0}),
            "--timeout 2s",
            "not running after 2s",
        ),
        (
            lambda emu: setattr(emu, "boot", {"mode": "stopped", "running_after": 0.0}),
            "",
            "stopped",
        ),
        (lambda emu: setattr(emu, "ssh_backend", None), "--timeout 3s", "SSH"),
        (
            lambda emu: [
                n.__setitem__("_real_gpu", {"driver_version": None}) for n in emu.hostnodes.values()
            ],
            "",
            "no NVIDIA driver",
        ),
    ],
    ids=["stuck", "stopped-after-start", "ssh-down", "no-driver"],
)
def test_tensordock_failed_boots_leave_nothing(
    tensordock, gs, isolated_home, setup, flags, needle, fake_time
):
    setup(tensordock)
    result = gs(f"provision --provider tensordock --gpu 4090 {flags} --yes")
    assert result.exit_code == 1, result.stderr
    assert needle in result.stderr
    assert tensordock.live_instances() == []
    (failed,) = sessions_by_status(isolated_home)["failed"]
    assert (
        failed["instance_id"] and failed["ended_at"] and needle.split()[0] in failed["end_reason"]
    )


def test_tensordock_create_500_adopted_and_destroy_failing_once(
    tensordock, gs, isolated_home, fake_time
):
    tensordock.create_error_after_create = True
    session = gs("provision --provider tensordock --gpu 4090 --yes --json")
    assert session.exit_code == 0, session.stderr
    assert (
        len([r for r in tensordock.requests if r["method"] == "POST" and r["path"] == "/instances"])
        == 1
    )
    tensordock.destroy_fail_times = 1
    done = gs(f"sessions done {session.json()['id']} --json")
    assert done.exit_code == 0, done.stderr
    assert done.json()["status"] == "ended" and done.json()["cost_usd"] > 0
    assert tensordock.live_instances() == []


def test_tensordock_failover_to_next_hostnode(tensordock, gs, isolated_home, fake_time):
    tensordock.error_in_200_next(
        "POST", r"/instances$", "No available public IPs on hostnode", times=1
    )
    result = gs("provision --provider tensordock --gpu 4090 --auto-retry 2 --yes --json")
    assert result.exit_code == 0, result.stderr
    assert len(tensordock.live_instances()) == 1
    (failed,) = sessions_by_status(isolated_home)["failed"]
    assert failed["offer_id"] != result.json()["offer_id"]


def test_vast_falls_back_to_the_proxy_when_the_direct_port_is_closed(
    vast, gs, isolated_home, monkeypatch
):
    """Direct SSH (public_ipaddr + ports 22/tcp) is tried first; the proxy still works."""
    import socket

    from gpushopper.providers import vastai

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    real = vastai.parse_instance

    def direct_port_closed(raw):
        raw = dict(raw)
        if raw.get("ports"):
            raw["ports"] = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(dead_port)}]}
        return real(raw)

    monkeypatch.setattr(vastai, "parse_instance", direct_port_closed)
    result = gs("provision --provider vastai --gpu 4090 --yes --json")
    assert result.exit_code == 0, result.stderr
    assert "the proxy" in result.stderr
    session = result.json()
    assert session["ssh"]["port"] != dead_port
    assert ssh_run(session["ssh"]["command"], "true").returncode == 0


def test_provision_without_credentials_says_so(gs):
    result = gs("provision --yes")
    assert result.exit_code == 2
    assert "no provider has credentials" in result.stderr


def test_provision_with_a_template_no_provider_has(tensordock, gs):
    result = gs("provision --provider tensordock --template 'Ostris AI Toolkit' --yes")
    assert result.exit_code == 2
    assert "no template" in result.stderr
    assert tensordock.live_instances() == []


def test_sessions_ssh_execs_openssh_with_the_session_key(vast, gs, isolated_home):

    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    no_agent = ("SSH_AUTH_SOCK",)
    out = run_tool(
        "sessions", "ssh", session["id"], "--", "nvidia-smi", "-L", unset=no_agent, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "GPU 0:" in out.stdout
    # After "--" every word is the remote command's, --json and -v included (issue 14).
    flags = run_tool(
        *("sessions", "ssh", session["id"], "--", "echo", "--json", "-v"),
        unset=no_agent,
        timeout=30,
    )
    assert flags.returncode == 0, flags.stderr
    assert flags.stdout == "--json -v\n"
    gs(f"sessions done {session['id']}")
    gone = run_tool("sessions", "ssh", session["id"], timeout=30)
    assert gone.returncode == 2  # bad input, as an unknown session (issue 14)
    # ...and a --json meant for the remote command never turns our error into JSON.
    remote_json = gs(["sessions", "ssh", session["id"], "--", "tool", "--json"])
    assert remote_json.exit_code == 2 and remote_json.stdout == ""
    assert "is ended" in gone.stderr and "Connection refused" not in gone.stderr
    assert gs(f"sessions diagnostics {session['id']}").exit_code == 2


def test_progress_and_budget_warning_go_to_stderr(vast, gs, monkeypatch):
    vast.boot = {"mode": "ok", "loading_after": 0.0, "running_after": 0.3}
    monkeypatch.setenv("GPU_SHOPPER_SAFETY_MONTHLY_BUDGET_USD", "0.1")
    result = gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json")
    assert result.exit_code == 0, result.stderr
    assert "loading" in result.stderr and "Checking the machine over SSH" in result.stderr
    assert "budget" in result.stderr
    assert result.json()["status"] == "running"  # stdout is still one JSON document


def test_done_on_a_failed_session_destroys_what_is_left_and_keeps_why_it_failed(
    vast, gs, isolated_home
):
    store = StateStore(isolated_home / "state.json")
    label = f"gpu-shopper:{store.install_id()}:f00001"
    leftover = vast.create_instance_directly(label=label, status="running")
    with store.transaction() as st:
        st["sessions"]["f00001"] = {
            "id": "f00001",
            "status": "failed",
            "provider": "vastai",
            "instance_id": None,
            "label": label,
            "end_reason": "boot failed: instance is exited",
            "ended_at": "2026-11-23T09:00:00Z",
            "cost_usd": 0.0,
        }
    result = gs("sessions done f00001 --json")
    assert result.exit_code == 0, result.stderr
    record = read_state(isolated_home)["sessions"]["f00001"]
    assert record["status"] == "failed"
    assert record["end_reason"] == "boot failed: instance is exited"
    assert record["ended_at"] == "2026-11-23T09:00:00Z"
    assert record["instance_id"] == str(leftover["id"])
    assert vast.live_instances() == []


@pytest.mark.internal_errors
def test_a_crash_right_after_create_still_destroys_the_instance(
    vast, gs, isolated_home, monkeypatch
):
    """A bug after the create call succeeded (say, parsing its answer) must not leak."""
    from gpushopper.providers.vastai import VastAI

    real_create = VastAI.create_instance

    def create_then_crash(self, spec):
        real_create(self, spec)
        raise KeyError("new_contract")

    monkeypatch.setattr(VastAI, "create_instance", create_then_crash)
    result = gs("provision --provider vastai --gpu 4090 --yes")
    assert result.exit_code == 1
    assert "KeyError" in result.stderr
    assert vast.live_instances() == []
    (failed,) = sessions_by_status(isolated_home)["failed"]
    assert "crashed" in failed["end_reason"] and failed["instance_id"]


def test_no_matching_offer_exits_1_before_creating_anything(vast, gs, isolated_home):
    for args in ("--gpu B200 --yes", "--gpu B200 --dry-run"):
        result = gs(f"provision --provider vastai {args}")
        assert result.exit_code == 1
        assert "no offer matches" in result.stderr
    assert not [r for r in vast.requests if r["method"] == "PUT"]
    assert not (isolated_home / "state.json").exists() or not read_state(isolated_home)["sessions"]


def test_extend_is_allowed_to_the_hard_maximum_exactly_and_not_a_second_past(gs, isolated_home):
    from datetime import timedelta

    from gpushopper.model.units import iso, utcnow

    store = StateStore(isolated_home / "state.json")
    ends = utcnow() + timedelta(hours=1)
    hard = ends + timedelta(hours=2)
    with store.transaction() as st:
        st["sessions"]["b0b0b0"] = {
            "id": "b0b0b0",
            "status": "running",
            "provider": "vastai",
            "instance_id": "1",
            "label": f"gpu-shopper:{st['install_id']}:b0b0b0",
            "created_at": iso(utcnow()),
            "reservation_ends_at": iso(ends),
            "hard_max_at": iso(hard),
        }
    past = gs("sessions extend b0b0b0 --hours 7201s")
    assert past.exit_code == 2 and "hard maximum" in past.stderr
    exact = gs("sessions extend b0b0b0 --hours 2h --json")
    assert exact.exit_code == 0, exact.stderr
    assert exact.json()["reservation_ends_at"] == iso(hard)
    assert gs("sessions extend b0b0b0 --hours 1s").exit_code == 2  # now at the maximum


def test_an_explicit_offer_below_the_reliability_floor_is_rented_with_a_warning(vast, gs):
    shaky = vast.add_offer(gpu_name="RTX 4090", dph_base=0.2, reliability=0.80)
    result = gs(f"provision vastai:{shaky['id']} --hours 1h --yes --json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["offer_id"] == f"vastai:{shaky['id']}"
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and "0.800, below the floor 0.95" in warning[0]
    # a reliable offer named by id rents without one
    steady = gs("provision vastai:1000001 --hours 1h --yes --json")
    assert steady.exit_code == 0 and "Warning:" not in steady.stderr


def test_the_session_records_what_was_rented(vast, tensordock, gs, isolated_home):
    # Vast.ai: the template's image as the instance reports it (image_uuid), the disk it
    # allocated and the port the Ostris template opens (8675), with a tunnel hint.
    result = gs(
        "provision --provider vastai --gpu 4090 --template 'Ostris AI Toolkit' --hours 1h "
        "--min-cuda 12.8 --yes --json"
    )
    assert result.exit_code == 0, result.stderr
    session = result.json()
    (instance,) = vast.live_instances()
    assert session["image"] == instance["image_uuid"]
    assert session["image"].startswith("vastai/ostris-ai-toolkit:")  # the tag it booted
    assert session["disk_gb"] == instance["disk_space"]
    external = int(instance["ports"]["8675/tcp"][0]["HostPort"])
    assert session["ports"] == [{"internal": 8675, "external": external, "protocol": "tcp"}]
    shown = gs(f"sessions show {session['id']}").stdout
    assert f"8675/tcp open on {external}" in shown
    assert f"ssh -N -L 8675:localhost:8675 gpu-{session['id']}" in shown
    # TensorDock: the disk it bills, not the disk asked for; the image it was given
    tensordock.min_storage_gb = 100
    td = gs("provision --provider tensordock --gpu 4090 --hours 1h --disk 32 --yes --json").json()
    assert td["disk_gb"] == 100 and td["disk_gb_requested"] == 32
    assert td["image"] == "ubuntu2404_ml_pytorch" and td["ports"] == []
    assert "100 GB (asked for 32)" in gs(f"sessions show {td['id']}").stdout


def test_provider_values_are_validated_before_they_are_recorded():
    from gpushopper.model.models import Instance

    odd = Instance(
        "vastai", "1", None, "running",
        image="evil\nProxyCommand x", disk_gb=float("nan"),
        ports=[{"internal": 8675, "external": "40000; rm", "protocol": "tcp"},
               {"internal": 0, "external": 1, "protocol": "tcp"}, "22"],
    )  # fmt: skip
    assert (odd.image, odd.disk_gb, odd.ports) == (None, None, [])
    fine = Instance("vastai", "1", None, "running", image="vastai/base-image:@vastai-automatic-tag",
                    disk_gb=32, ports=[{"internal": 8675, "external": 40001, "protocol": "tcp"}])  # fmt: skip
    assert fine.image == "vastai/base-image:@vastai-automatic-tag" and fine.disk_gb == 32.0
    assert fine.ports == [{"internal": 8675, "external": 40001, "protocol": "tcp"}]


def test_sessions_refresh_marks_what_the_provider_says(vast, tensordock, gs, monkeypatch):
    exited = gs("provision --provider vastai --gpu 4090 --hours 1h --yes --json").json()
    vanished = gs("provision --provider vastai --gpu 4090 --hours 1h --yes --json").json()
    td = gs("provision --provider tensordock --gpu 4090 --hours 1h --yes --json").json()
    vast.force_status(int(exited["instance_id"]), "exited")
    vast._meta[int(vanished["instance_id"])].destroyed = True  # gone behind our back
    monkeypatch.setenv("TENSORDOCK_API_URL", "http://127.0.0.1:9/api/v2")  # cannot be asked
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_HTTP_RETRIES", "1")
    # without --refresh nothing leaves this machine, and nothing is marked
    assert all("provider_status" not in v for v in gs("sessions list --json").json())
    result = gs("sessions list --refresh --json")
    assert result.exit_code == 0, result.stderr
    said = {v["id"]: v["provider_status"] for v in result.json()}
    assert said == {exited["id"]: "exited", vanished["id"]: "gone", td["id"]: "unreachable"}
    assert {v["status"] for v in result.json()} == {"running"}  # the record is not rewritten
    assert f"session {exited['id']} is running here but vastai says exited" in result.stderr
    assert f"session {vanished['id']} is running here but vastai says gone" in result.stderr
    assert f"session {td['id']}: tensordock could not be asked" in result.stderr
    monkeypatch.setenv("COLUMNS", "100")
    table = gs("sessions --refresh").stdout
    assert "PROVIDER" in table and "SAYS" in table
    rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()[3:]}
    assert rows[exited["id"]] == "exited" and rows[vanished["id"]] == "gone"
    shown = gs(f"sessions show {exited['id'][:4]} --refresh --json").json()
    assert shown["provider_status"] == "exited" and shown["status"] == "running"
    assert "provider says" in gs(f"sessions show {exited['id']} --refresh").stdout
