"""The accidents of a user's first week (issue 8, items 1-10), as a user meets them: real
processes, real signals and pipes, against the emulators and a real sshd.

The item each test reproduces is in its name. On the code before the fix 43 of these failed;
the 4 that passed there are guards against overdoing the fix (under nohup a closed terminal
is still ignored) or already-refused input (a zero interval, negative durations).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gpushopper.state.store import StateStore
from tests.fakes.tool import run_tool, spawn_tool
from tests.waiting import default_signals, wait_for


def sessions(home: Path) -> dict[str, Any]:
    path = home / "state.json"
    return StateStore(path).read()["sessions"] if path.exists() else {}


def booting_record(home: Path) -> dict[str, Any] | None:
    """The session once its instance is known (the provision is waiting for the boot)."""
    return next((s for s in sessions(home).values() if s.get("instance_id")), None)


def start_provision(tmp_path: Path, *args: str, **popen: Any) -> subprocess.Popen:
    popen.setdefault("stdout", (tmp_path / "provision.out").open("w"))
    popen.setdefault("stderr", (tmp_path / "provision.err").open("w"))
    popen.setdefault("preexec_fn", default_signals)
    return spawn_tool("provision", "--yes", *args, **popen)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- 1. a closed terminal (SIGHUP), and the other signals -------------------------------------
@pytest.mark.parametrize(
    "sig, code", [(signal.SIGHUP, 129), (signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_item1_a_signal_during_boot_destroys_and_exits_128_plus_n(
    vast, isolated_home, tmp_path, procs, sig, code
):
    vast.boot = {"mode": "stuck_loading", "loading_after": 0.0, "running_after": 0.0}
    proc = start_provision(tmp_path, "--provider", "vastai", "--gpu", "4090", "--timeout", "1h")
    procs.append(proc)
    record = wait_for(lambda: booting_record(isolated_home), 30, "the instance to be recorded")
    proc.send_signal(sig)
    assert proc.wait(60) == code, (tmp_path / "provision.err").read_text()
    assert vast.live_instances() == []
    after = sessions(isolated_home)[record["id"]]
    assert after["status"] == "failed"
    assert signal.Signals(sig).name in after["end_reason"]
    err = (tmp_path / "provision.err").read_text()
    assert f"instance {record['instance_id']} destroyed" in err


def test_item1_nohup_keeps_sighup_ignored(vast, isolated_home, tmp_path, procs):
    """Under nohup the user asked to survive a closed terminal: SIGHUP stays ignored."""
    vast.boot = {"mode": "ok", "loading_after": 0.0, "running_after": 2.0}
    proc = start_provision(
        tmp_path,
        "--provider",
        "vastai",
        "--gpu",
        "4090",
        "--json",
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    procs.append(proc)
    wait_for(lambda: booting_record(isolated_home), 30, "the instance to be recorded")
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(60) == 0, (tmp_path / "provision.err").read_text()
    assert len(vast.live_instances()) == 1


# -- 2. a closed pipe: `provision ... 2>&1 | head -3` -----------------------------------------
def test_item2_a_closed_pipe_destroys_and_exits_141(vast, isolated_home, tmp_path, procs):
    vast.boot = {"mode": "ok", "loading_after": 0.5, "running_after": 1.5}
    proc = start_provision(
        tmp_path,
        "--provider",
        "vastai",
        "--gpu",
        "4090",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    procs.append(proc)
    assert proc.stdout is not None
    head = [proc.stdout.readline() for _ in range(3)]  # what `| head -3` shows
    proc.stdout.close()  # and then head exits
    assert all(head)
    assert proc.wait(60) == 141
    assert vast.live_instances() == []
    (record,) = sessions(isolated_home).values()
    assert record["status"] == "failed" and "SIGPIPE" in record["end_reason"]


def test_item2_a_hand_off_that_reaches_no_one_is_destroyed_too(
    vast, gs, isolated_home, monkeypatch
):
    """The pipe closes just as the result is printed: nobody got the ssh command."""
    from gpushopper.cli import output
    from gpushopper.core import interrupts

    monkeypatch.setattr(interrupts, "silence_std_streams", lambda: None)

    def closed(data):
        interrupts.output_lost(BrokenPipeError(32, "Broken pipe"))

    # provision hands its result to output.render, which writes it with emit_json
    monkeypatch.setattr(output, "emit_json", closed)
    result = gs("provision --provider vastai --gpu 4090 --yes --json")
    assert result.exit_code == 141
    assert vast.live_instances() == []
    (record,) = sessions(isolated_home).values()
    assert record["status"] == "ended"
    assert record["end_reason"] == "interrupted by SIGPIPE before the hand-off"


# -- 3. SIGKILL: the owner check ----------------------------------------------------------------
@pytest.mark.parametrize("sweeper", [("watch", "--once"), ("cleanup-orphans", "--yes")])
def test_item3_a_sigkilled_provision_is_destroyed_on_the_next_pass(
    vast, isolated_home, tmp_path, procs, sweeper
):
    vast.boot = {"mode": "stuck_loading", "loading_after": 0.0, "running_after": 0.0}
    proc = start_provision(tmp_path, "--provider", "vastai", "--gpu", "4090", "--timeout", "1h")
    procs.append(proc)
    record = wait_for(lambda: booting_record(isolated_home), 30, "the instance to be recorded")
    owner = record["owner"]
    assert owner["pid"] == proc.pid and owner["host"] and owner["started"]
    proc.kill()
    proc.wait(10)
    out = run_tool(*sweeper)  # no shifted clock: the provisioning timeout is far away
    assert out.returncode == 0, out.stderr
    assert vast.live_instances() == []
    assert sessions(isolated_home)[record["id"]]["end_reason"] == "owner_gone"


def test_item3_a_live_owner_is_left_to_finish(vast, isolated_home, tmp_path, procs):
    vast.boot = {"mode": "stuck_loading", "loading_after": 0.0, "running_after": 0.0}
    proc = start_provision(tmp_path, "--provider", "vastai", "--gpu", "4090", "--timeout", "1h")
    procs.append(proc)
    wait_for(lambda: booting_record(isolated_home), 30, "the instance to be recorded")
    out = run_tool("watch", "--once")
    assert out.returncode == 0, out.stderr
    assert len(vast.live_instances()) == 1
    proc.terminate()
    assert proc.wait(60) == 143


# -- 4. a malformed listing is a failed pass, not "no instances" -----------------------------
MALFORMED = {"empty-object": {}, "empty-array": [], "null": "null", "wrong-shape": {"data": 3}}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("provider", ["vastai", "tensordock"])
def test_item4_a_malformed_listing_closes_and_destroys_nothing(
    request, gs, isolated_home, provider, body
):
    emu = request.getfixturevalue("vast" if provider == "vastai" else "tensordock")
    session = gs(f"provision --provider {provider} --gpu 4090 --hours 2h --yes --json").json()
    path = r"/api/v1/instances" if provider == "vastai" else r"/instances$"
    emu.fail_next("GET", path, status=200, body=body, times=4)
    blind = run_tool("watch", "--once", env={"GPU_SHOPPER_DEFAULTS_HTTP_RETRIES": "1"})
    assert blind.returncode == 1, blind.stderr
    assert provider in blind.stderr
    assert sessions(isolated_home)[session["id"]]["status"] == "running"
    emu.clear_faults()
    normal = run_tool("watch", "--once")
    assert normal.returncode == 0, normal.stderr
    assert len(emu.live_instances()) == 1
    assert sessions(isolated_home)[session["id"]]["status"] == "running"


def test_item4_a_listing_without_the_instance_needs_the_provider_to_confirm_it_gone(
    vast, gs, isolated_home
):
    session = gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json").json()
    empty = {"success": True, "instances_found": 0, "next_token": None, "instances": []}
    vast.fail_next("GET", r"/api/v1/instances", status=200, body=empty, times=1)
    partial = run_tool("watch", "--once")
    assert partial.returncode == 1, partial.stderr
    assert sessions(isolated_home)[session["id"]]["status"] == "running"
    assert len(vast.live_instances()) == 1


# -- 5. blind is not all clear -------------------------------------------------------------
def test_item5_watch_once_exits_1_when_a_provider_cannot_be_listed(vast, isolated_home):
    revoked = run_tool("watch", "--once", env={"VASTAI_API_KEY": "revoked-key"})
    assert revoked.returncode == 1
    assert "vastai" in revoked.stderr
    vast.fail_next("GET", r"/api/v1/instances", status=500, times=10)
    failing = run_tool("watch", "--once", env={"GPU_SHOPPER_DEFAULTS_HTTP_RETRIES": "1"})
    assert failing.returncode == 1 and "vastai" in failing.stderr


def test_item5_watch_without_credentials_refuses_to_start(isolated_home):
    for args in (("watch", "--once"), ("watch", "--interval", "1s")):
        out = run_tool(*args, timeout=20)
        assert out.returncode == 2, out.stderr
        assert "no provider has credentials" in out.stderr


def test_item5_cleanup_orphans_with_a_bad_key_gives_no_all_clear(vast, gs, isolated_home):
    out = run_tool("cleanup-orphans", env={"VASTAI_API_KEY": "revoked-key"})
    assert out.returncode == 1
    assert "Nothing of ours" not in out.stdout + out.stderr
    assert "vastai" in out.stderr


def test_item5_cleanup_orphans_exits_3_while_labelled_instances_run(vast, gs, isolated_home):
    vast.create_instance_directly(label="gpu-shopper:abcd0123:0a1b2c", status="running")
    listed = run_tool("cleanup-orphans", "--json")  # no state file: every label is foreign
    assert listed.returncode == 3, listed.stderr
    assert [r["reason"] for r in json.loads(listed.stdout)] == ["foreign"]
    swept = run_tool("cleanup-orphans", "--yes", "--json")
    assert swept.returncode == 3  # still running: foreign ones are left without --include-foreign
    assert run_tool("cleanup-orphans", "--yes", "--include-foreign").returncode == 0
    assert vast.live_instances() == []


# -- 6. one bad record -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad", ["a string", None, {"status": "running", "created_at": "yesterday"}], ids=str
)
def test_item6_one_bad_record_never_switches_the_net_off(vast, gs, isolated_home, bad):
    session = gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json").json()
    store = StateStore(isolated_home / "state.json")
    with store.transaction() as state:
        state["sessions"]["badbad"] = bad
    shifted = {"GPU_SHOPPER_CLOCK_OFFSET": "3h"}  # the good session's reservation is over
    out = run_tool("watch", "--once", env=shifted)
    assert "badbad" in out.stderr
    assert out.returncode == 1  # one record could not be enforced: not all clear
    assert vast.live_instances() == []
    assert sessions(isolated_home)[session["id"]]["status"] == "ended"
    again = gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json")
    assert again.exit_code == 0, again.stderr
    assert len(vast.live_instances()) == 1
    sweep = run_tool("cleanup-orphans", "--yes")
    assert "badbad" in sweep.stderr and sweep.returncode == 1
    assert len(vast.live_instances()) == 1  # the new, healthy session is not touched


# -- 7. a full disk never blocks a destroy -----------------------------------------------------
def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from gpushopper.state import store as store_module

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "atomic_write_text", no_space)


@pytest.mark.parametrize("command", ["sessions done {id}", "watch --once", "cleanup-orphans --yes"])
def test_item7_a_full_disk_never_blocks_a_destroy(
    vast, gs, isolated_home, monkeypatch, fake_time, command
):
    session = gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json").json()
    if command != "sessions done {id}":
        monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "3h")
    _disk_full(monkeypatch)
    result = gs(command.format(id=session["id"]))
    assert vast.live_instances() == []
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr
    journal = (isolated_home / "journal.jsonl").read_text()
    assert '"op": "destroy_instance"' in journal and '"state_write_failed"' in journal


def test_item7_doctor_fails_on_an_unwritable_home(gs, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("GPU_SHOPPER_HOME", str(blocker / "home"))
    monkeypatch.setenv("VASTAI_API_KEY", "k" * 12)
    result = gs("doctor --json")
    assert result.exit_code == 1
    checks = {c["check"]: c for c in result.json()["checks"]}
    assert checks["home writable"]["status"] == "fail"


def test_item7_doctor_makes_a_missing_home_private(gs, monkeypatch, tmp_path):
    """doctor may be the first command run: the folder it makes is 0700 like every other."""
    import stat

    home = tmp_path / "fresh" / "home"
    monkeypatch.setenv("GPU_SHOPPER_HOME", str(home))
    old = os.umask(0o022)
    try:
        gs("doctor --json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


# -- 8. ids and labels are checked, not trusted ------------------------------------------------
def test_item8_a_create_answer_naming_a_foreign_instance_is_not_trusted(
    vast, gs, isolated_home, monkeypatch
):
    from gpushopper.providers.vastai import VastAI

    foreign = vast.create_instance_directly(label="someone-elses-job", status="running")
    real_create = VastAI.create_instance

    def wrong_id(self, spec):
        real_create(self, spec)
        return str(foreign["id"])

    monkeypatch.setattr(VastAI, "create_instance", wrong_id)
    result = gs("provision --provider vastai --gpu 4090 --yes --json")
    assert result.exit_code == 0, result.stderr
    session = result.json()
    assert session["instance_id"] != str(foreign["id"])
    live = {i["id"]: i["label"] for i in vast.live_instances()}
    assert live[int(session["instance_id"])] == session["label"]
    assert gs(f"sessions done {session['id']}").exit_code == 0
    assert [i["id"] for i in vast.live_instances()] == [foreign["id"]]


def test_item8_a_listing_repeating_a_foreign_id_under_our_label_destroys_nothing(
    vast, gs, isolated_home
):
    install = StateStore(isolated_home / "state.json").install_id()
    foreign = vast.create_instance_directly(label="someone-elses-job", status="running")
    row = {k: v for k, v in foreign.items() if k not in ("authorized_keys", "instance_api_key")}
    twice = [row, {**row, "label": f"gpu-shopper:{install}:0a1b2c"}]
    body = {"success": True, "instances_found": 2, "next_token": None, "instances": twice}
    vast.fail_next("GET", r"/api/v1/instances", status=200, body=body, times=1)
    out = run_tool("watch", "--once")
    assert out.returncode == 1  # an inconsistent listing is a failed pass
    assert [i["id"] for i in vast.live_instances()] == [foreign["id"]]


def test_item8_labels_with_an_impossible_session_id_are_never_destroyed(
    vast, isolated_home, tmp_path
):
    install = StateStore(isolated_home / "state.json").install_id()
    odd = vast.create_instance_directly(label=f"gpu-shopper:{install}:$(touch x)")
    ours = vast.create_instance_directly(label=f"gpu-shopper:{install}:0a1b2c")
    out = run_tool("cleanup-orphans", "--yes", "--json")
    assert [i["id"] for i in vast.live_instances()] == [odd["id"]]
    assert {r["instance_id"]: r["action"] for r in json.loads(out.stdout)} == {
        str(ours["id"]): "destroyed",
        str(odd["id"]): "left",
    }
    assert out.returncode == 3  # a gpu-shopper label is still running
    assert not Path("x").exists()


# -- 9. stopping watch says what it does, and exits 130 -----------------------------------------
def test_item9_watch_says_what_stopping_does_and_exits_130(
    vast, gs, isolated_home, tmp_path, procs
):
    gs("provision --provider vastai --gpu 4090 --yes --json")
    log = (tmp_path / "watch.log").open("w")
    proc = spawn_tool("watch", "--interval", "1s", stderr=log, preexec_fn=default_signals)
    procs.append(proc)
    text = lambda: (tmp_path / "watch.log").read_text()  # noqa: E731
    wait_for(lambda: "stopping destroys the 1 guarded session" in text(), 30, "the notice")
    assert "--keep-on-exit leaves them" in text()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    assert vast.live_instances() == []


# -- 10. durations need a unit -----------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        "watch --interval 30",
        "watch --interval 0s",
        "provision --provider vastai --timeout 600 --yes",
        "provision --provider vastai --timeout nan --yes",
        "provision --provider vastai --hours nan --yes",
        "provision --provider vastai --hours inf --yes",
        "provision --provider vastai --hours -1 --yes",
        "provision --provider vastai --hours 1e9 --override --yes",
        "config set safety.provision_timeout 900",
        "config set safety.provision_timeout nan",
        "config set defaults.hours 3",
        "config set safety.warn_before -- -5m",
    ],
)
def test_item10_durations_without_units_or_sense_are_refused(vast, gs, args):
    result = gs(args)
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert vast.live_instances() == []


def test_item10_the_hint_names_the_units(gs):
    result = gs("watch --interval 30")
    assert "give a unit: 30s, 15m, 2h" in result.stderr


def test_item10_hours_is_its_own_unit(vast, gs):
    session = gs("provision --provider vastai --gpu 4090 --hours 3 --yes --json").json()
    ready = time.time()
    from gpushopper.model.units import parse_iso

    ends = parse_iso(session["reservation_ends_at"]).timestamp()
    assert abs(ends - ready - 3 * 3600) < 120
    for bad in ("nan", "inf", "1e9", "0", "-2"):
        result = gs(f"sessions extend {session['id']} --hours {bad}")
        assert result.exit_code == 2, (bad, result.stderr)


def test_item10_a_bare_number_in_the_config_file_is_refused(vast, gs, isolated_home):
    (isolated_home / "config.toml").write_text("[safety]\nprovision_timeout = 900\n")
    result = gs("provision --provider vastai --gpu 4090 --yes")
    assert result.exit_code == 2
    assert "safety.provision_timeout" in result.stderr and "give a unit" in result.stderr
    assert vast.live_instances() == []
