"""watch (a real subprocess) and cleanup-orphans against the emulators and a real sshd."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gpushopper.model.units import parse_iso
from gpushopper.state.store import StateStore
from tests.fakes.records import read_state
from tests.fakes.tool import run_tool, spawn_tool
from tests.test_json_contract import ORPHAN_KEYS
from tests.waiting import default_signals, wait_for


class Watch:
    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = tmp_path / f"watch-{time.monotonic_ns()}.log"
        self.handle = self.log.open("w")
        self.proc = spawn_tool(
            *("watch", *args),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.handle,
            preexec_fn=default_signals,  # SIGINT is sent here: no inherited SIG_IGN
        )

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.handle.close()
        return code


@pytest.fixture
def watches():
    started: list[Watch] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


def sessions(home: Path) -> dict:
    return read_state(home)["sessions"]


def test_short_reservation_destroyed_within_one_interval(
    vast, gs, isolated_home, tmp_path, watches
):
    session = gs("provision --provider vastai --gpu 4090 --hours 5s --yes --json").json()
    w = Watch(tmp_path, "--interval", "1s")
    watches.append(w)
    wait_for(lambda: not vast.live_instances(), timeout=30, what="the instance to be destroyed")
    gone_at = time.time()
    ends = parse_iso(session["reservation_ends_at"]).timestamp()
    assert gone_at - ends <= 1 + 3  # one interval, plus destroy confirmation slack
    wait_for(lambda: sessions(isolated_home)[session["id"]]["status"] == "ended", what="ended")
    record = sessions(isolated_home)[session["id"]]
    assert record["end_reason"] == "reservation_ended"
    assert record["cost_usd"] > 0
    assert w.stop() == 143  # SIGTERM: 128 + 15, after the shutdown rule ran
    assert f"session={session['id']}" in w.text() and "reason=reservation_ended" in w.text()


def test_hard_max_destroyed_with_shifted_clock(vast, gs, isolated_home, tmp_path):
    session = gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json").json()
    gs(f"sessions extend {session['id']} --hours 11h --override")  # reservation now past 12h
    out = run_tool("watch", "--once", env={"GPU_SHOPPER_CLOCK_OFFSET": "14h"})
    assert out.returncode == 0, out.stderr
    assert vast.live_instances() == []
    assert sessions(isolated_home)[session["id"]]["end_reason"] == "hard_max"


def test_stuck_provisioning_instance_destroyed(vast, isolated_home, tmp_path):
    vast.boot = {"mode": "stuck_loading", "loading_after": 0.0, "running_after": 0.0}
    proc = spawn_tool(
        *("provision", "--provider", "vastai", "--yes", "--timeout", "1h"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: len(vast.live_instances()) == 1 and (isolated_home / "state.json").exists())
    wait_for(lambda: any(s.get("instance_id") for s in sessions(isolated_home).values()))
    proc.kill()
    proc.wait(10)
    # past the boot's own --timeout 1h (watch waits at least the timeout it chose)
    out = run_tool("watch", "--once", env={"GPU_SHOPPER_CLOCK_OFFSET": "70m"})
    assert out.returncode == 0, out.stderr
    assert "reason=provision_timeout" in out.stderr
    assert vast.live_instances() == []


def test_cleanup_orphans_finds_and_destroys_our_unknown_instance(vast, gs, isolated_home):
    install = StateStore(isolated_home / "state.json").install_id()
    orphan = vast.create_instance_directly(label=f"gpu-shopper:{install}:0e0e01", status="running")
    foreign = vast.create_instance_directly(label="gpu-shopper:ffff0000:0f0f01", status="running")
    mine = vast.create_instance_directly(label="someone-elses-box", status="running")
    listed = gs("cleanup-orphans --json")
    assert listed.exit_code == 3
    rows = {r["instance_id"]: r for r in listed.json()}
    assert rows[str(orphan["id"])]["reason"] == "unknown_to_state"
    assert rows[str(orphan["id"])]["action"] == "left"
    assert rows[str(foreign["id"])]["reason"] == "foreign"
    assert str(mine["id"]) not in rows
    assert set(rows[str(orphan["id"])]) >= ORPHAN_KEYS
    destroyed = gs("cleanup-orphans --yes --json")
    assert destroyed.exit_code == 3, destroyed.stderr  # the foreign one is still running
    assert {r["instance_id"]: r["action"] for r in destroyed.json()}[
        str(orphan["id"])
    ] == "destroyed"
    live = {i["id"] for i in vast.live_instances()}
    assert live == {foreign["id"], mine["id"]}
    assert gs("cleanup-orphans --yes --include-foreign --json").exit_code == 0
    assert {i["id"] for i in vast.live_instances()} == {mine["id"]}


def test_cleanup_orphans_works_with_no_state_file(vast, gs, isolated_home):
    vast.create_instance_directly(label="gpu-shopper:abcd0123:10570a", status="running")
    result = gs("cleanup-orphans --json")
    assert result.exit_code == 3  # a gpu-shopper label is running: cron must hear of it
    assert [r["reason"] for r in result.json()] == ["foreign"]
    assert not (isolated_home / "state.json").exists()


def test_cleanup_orphans_ends_expired_sessions_and_reports_errors(
    vast, tensordock, gs, isolated_home
):
    session = gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json").json()
    shifted = {"GPU_SHOPPER_CLOCK_OFFSET": "3h"}
    out = run_tool("cleanup-orphans", "--json", env=shifted)
    assert out.returncode == 3
    assert json.loads(out.stdout)[0]["reason"] == "reservation_ended"
    tensordock.fail_next("GET", r"/instances$", status=500, times=20)
    out = run_tool(
        "cleanup-orphans",
        "--yes",
        "--json",
        env={**shifted, "GPU_SHOPPER_DEFAULTS_HTTP_RETRIES": "1"},
    )
    assert out.returncode == 1  # tensordock could not be listed
    assert "tensordock" in out.stderr
    assert vast.live_instances() == []
    assert sessions(isolated_home)[session["id"]]["status"] == "ended"


def test_sigterm_destroys_every_guarded_session(
    vast, tensordock, gs, isolated_home, tmp_path, watches
):
    a = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    b = gs("provision --provider tensordock --gpu 4090 --yes --json").json()
    w = Watch(tmp_path, "--interval", "1s")
    watches.append(w)
    wait_for(lambda: "watch started" in w.text(), what="watch to start")
    assert "stopping destroys the 2 guarded sessions" in w.text()
    assert w.stop(signal.SIGTERM) == 143
    assert vast.live_instances() == [] and tensordock.live_instances() == []
    assert {sessions(isolated_home)[s["id"]]["status"] for s in (a, b)} == {"ended"}
    assert "SIGTERM" in w.text()


def test_keep_on_exit_leaves_sessions_and_prints_deadlines(
    vast, gs, isolated_home, tmp_path, watches
):
    a = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    w = Watch(tmp_path, "--interval", "1s", "--keep-on-exit")
    watches.append(w)
    wait_for(lambda: "watch started" in w.text(), what="watch to start")
    assert "stopping leaves the 1 guarded session" in w.text()
    assert w.stop(signal.SIGINT) == 130
    assert len(vast.live_instances()) == 1
    assert f"session={a['id']} reservation_ends_at=" in w.text()


def test_provider_500s_do_not_stop_the_daemon(vast, gs, isolated_home, tmp_path, watches):
    session = gs("provision --provider vastai --gpu 4090 --hours 3s --yes --json").json()
    vast.fail_next("GET", r"/api/v1/instances", status=500, times=4)
    w = Watch(tmp_path, "--interval", "1s", env={"GPU_SHOPPER_DEFAULTS_HTTP_RETRIES": "1"})
    watches.append(w)
    wait_for(lambda: not vast.live_instances(), timeout=40, what="destroy after the 500s")
    assert "error provider=vastai" in w.text()
    assert w.proc.poll() is None  # still running
    assert w.stop() == 143
    assert sessions(isolated_home)[session["id"]]["status"] == "ended"


def test_second_watch_is_refused_naming_the_pid(vast, isolated_home, tmp_path, watches):
    w = Watch(tmp_path, "--interval", "1s", "--keep-on-exit")
    watches.append(w)
    wait_for(lambda: "watch started" in w.text(), what="watch to start")
    second = run_tool("watch", "--once", timeout=30)
    assert second.returncode == 1
    assert f"pid {w.proc.pid}" in second.stderr
    w.stop()


def test_metrics_file_and_webhook(vast, gs, isolated_home, tmp_path, monkeypatch):
    from tests.fakes.scripted_http import ScriptedServer

    gs("provision --provider vastai --gpu 4090 --hours 2h --yes --json")
    vast.create_instance_directly(
        label=f"gpu-shopper:{StateStore(isolated_home / 'state.json').install_id()}:0c0c0c",
        status="running",
    )
    metrics = tmp_path / "gpu_shopper.prom"
    with ScriptedServer() as hook:
        out = run_tool(
            *("watch", "--once", "--metrics-file", str(metrics)),
            env={"GPU_SHOPPER_WEBHOOK_URL": hook.url + "/alert"},
        )
        assert out.returncode == 0, out.stderr
        posts = [json.loads(r["body"]) for r in hook.requests if r["method"] == "POST"]
    assert [p["reason"] for p in posts] == ["unknown_to_state"]
    text = metrics.read_text()
    assert 'gpu_shopper_sessions{status="running"} 1' in text
    assert "gpu_shopper_orphans 1" in text
    assert 'gpu_shopper_actions_total{action="destroy_orphan"} 1' in text
    assert "gpu_shopper_last_successful_tick_timestamp_seconds" in text
    assert "gpu_shopper_cost_rate_usd_per_hour 0." in text
    assert 'gpu_shopper_provider_last_successful_list_timestamp_seconds{provider="vastai"}' in text
