"""``gpu-shopper run`` end to end: the Vast.ai emulator, a real sshd, real remote processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gpushopper.model.errors import SshError
from gpushopper.state.store import StateStore
from tests.fakes.records import read_state
from tests.fakes.tool import run_tool, spawn_tool
from tests.waiting import wait_for


def make_workdir(root: Path) -> Path:
    work = root / "job"
    (work / "data").mkdir(parents=True)
    (work / "data" / "in.txt").write_text("hello lora\n")
    (work / ".git").mkdir()
    (work / ".git" / "config").write_text("secret-ish git stuff\n")
    (work / "skip.tmp").write_text("excluded\n")
    return work


def run_job(gs, out, *command: str, opts: list[str] | tuple[str, ...] = (), as_json: bool = True):
    """``gpu-shopper run --provider vastai --out OUT [OPTS] --yes [--json] -- COMMAND``."""
    json_flag = ["--json"] if as_json else []
    argv = ["run", "--provider", "vastai", "--out", str(out), *opts, "--yes", *json_flag]
    return gs([*argv, "--", *command])


def test_failing_job_exits_with_its_code_results_home_nothing_left(
    gs, vast, tmp_path, isolated_home
):
    work = make_workdir(tmp_path)
    out = tmp_path / "results"
    script = (
        "tr a-z A-Z < data/in.txt > out/upper.txt; "
        "ls -a > out/listing.txt; echo progress line; exit 3"
    )
    result = run_job(
        gs,
        out,
        "sh",
        "-c",
        script,
        opts=["--gpu", "4090", "--workdir", str(work), "--exclude", "*.tmp"],
    )
    assert result.exit_code == 3, result.stderr
    doc = result.json()
    assert doc["status"] == "failed"
    assert doc["exit_code"] == 3
    assert doc["failure_stage"] == "running"
    assert doc["teardown"]["confirmed"] is True
    upper = out / "upper.txt"
    assert upper.read_text() == "HELLO LORA\n"
    listing = (out / "listing.txt").read_text().split()
    assert ".git" not in listing and "skip.tmp" not in listing and "data" in listing
    rows = {Path(a["local"]).name: a for a in doc["artifacts"]}
    assert rows["upper.txt"]["sha256"] == hashlib.sha256(upper.read_bytes()).hexdigest()
    assert rows["upper.txt"]["bytes"] == upper.stat().st_size
    assert vast.live_instances() == []
    saved = read_state(isolated_home)
    assert saved["sessions"][doc["session_id"]]["status"] == "ended"
    assert saved["jobs"][doc["id"]]["status"] == "failed"
    assert "progress line" in Path(doc["log_path"]).read_text()
    for key in ("provision_s", "upload_s", "run_s", "download_s", "teardown_s"):
        assert doc["timings"][key] is not None, key
    assert doc["cost_usd"] is not None


def test_success_streams_to_stdout_and_downloads(gs, vast, tmp_path):
    work = make_workdir(tmp_path)
    out = tmp_path / "results"
    result = gs(
        [
            "run",
            "--provider",
            "vastai",
            "--workdir",
            str(work),
            "--out",
            str(out),
            "--download",
            "extra/model.bin",
            "--download",
            "data/in.txt:" + str(tmp_path / "copy.txt"),
            "--env",
            "GREETING=hi there",
            "--yes",
            "--",
            "sh",
            "-c",
            "mkdir -p extra && head -c 100000 /dev/urandom > extra/model.bin; "
            'echo "$GREETING from $GPU_SHOPPER_JOB"',
        ]
    )
    assert result.exit_code == 0, result.stderr
    assert "hi there from j" in result.stdout
    assert (out / "model.bin").stat().st_size == 100000
    assert (tmp_path / "copy.txt").read_text() == "hello lora\n"
    assert not list(out.glob(".*gs-partial*"))
    assert vast.live_instances() == []


def test_max_duration_stops_the_command_exit_124(gs, vast, tmp_path, fake_time):
    result = run_job(gs, tmp_path / "o", "sleep", "60", opts=["--max-duration", "5s"])
    assert result.exit_code == 124, result.stderr
    doc = result.json()
    assert doc["status"] == "timed_out"
    assert doc["teardown"]["confirmed"] is True
    assert vast.live_instances() == []
    assert not _remote_running("sleep 60")


def test_stall_timeout_stops_a_silent_command(gs, vast, tmp_path, fake_time):
    result = run_job(
        gs, tmp_path / "o", "sh", "-c", "echo started; sleep 61", opts=["--stall-timeout", "3s"]
    )
    assert result.exit_code == 124, result.stderr
    assert result.json()["status"] == "stalled"
    assert vast.live_instances() == []
    assert not _remote_running("sleep 61")


def _remote_running(needle: str) -> bool:
    """Is a process of the job's command group (the fake instance is this machine) alive?"""
    import pathlib

    root = pathlib.Path(os.environ["GPU_SHOPPER_JOBS_REMOTE_ROOT"])
    groups = {int(p.read_text()) for p in root.glob("*/ctl/pid")}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # state, ppid, pgrp; a zombie (never reaped where pid 1 does not reap) is not running
        if fields[0] != "Z" and int(fields[2]) in groups:
            return True
    return False


def _when(predicate, then, timeout: float = 60.0) -> threading.Thread:
    def body() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                then()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def _log_has(home: Path, text: str):
    def check() -> bool:
        for path in (home / "jobs").glob("*/output.log") if (home / "jobs").exists() else []:
            if text in path.read_text(errors="replace"):
                return True
        return False

    return check


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
def test_signal_mid_job_collects_destroys_and_exits_128_plus(
    gs, vast, tmp_path, isolated_home, sig
):
    out = tmp_path / "o"
    _when(_log_has(isolated_home, "halfway"), lambda: os.kill(os.getpid(), sig))
    result = run_job(gs, out, "sh", "-c", "echo partial > out/partial.txt; echo halfway; sleep 62")
    assert result.exit_code == 128 + sig, result.stderr
    doc = result.json()
    assert doc["status"] == "cancelled"
    assert (out / "partial.txt").exists(), (doc.get("error"), result.stderr)
    assert (out / "partial.txt").read_text() == "partial\n"
    assert doc["teardown"]["confirmed"] is True
    assert vast.live_instances() == []
    assert not _remote_running("sleep 62"), result.stderr


def test_ssh_dropped_mid_job_carries_on_and_stream_resumes(
    gs, vast, tmp_path, isolated_home, sshd_pool
):
    def drop() -> None:
        # kill every per-connection sshd (not the listeners): our SSH connection dies
        for inst in list(sshd_pool._instances.values()):
            root = inst.process.pid
            children = subprocess.run(
                ["pgrep", "-P", str(root)], capture_output=True, text=True
            ).stdout.split()
            for pid in children:
                os.kill(int(pid), signal.SIGKILL)

    _when(_log_has(isolated_home, "tick 2"), drop)
    result = run_job(
        gs,
        tmp_path / "o",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done; echo done > out/d",
        as_json=False,
    )
    assert result.exit_code == 0, result.stderr
    for i in range(1, 7):
        assert f"tick {i}" in result.stdout
    assert "reconnect" in result.stderr
    assert (tmp_path / "o" / "d").read_text() == "done\n"
    assert vast.live_instances() == []


def test_secret_reaches_the_command_and_nowhere_else(
    gs, vast, tmp_path, isolated_home, monkeypatch
):
    secret = "hf_" + "S3cr3tValue9876543210"
    monkeypatch.setenv("HF_TOKEN", secret)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    seen: list[str] = []

    def snapshot() -> None:
        seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
        (tmp_path / "looked").touch()

    _when(_log_has(isolated_home, "checking"), snapshot)
    out = tmp_path / "o"
    result = gs(
        [
            "run",
            "--provider",
            "vastai",
            "--out",
            str(out),
            "--secret-env",
            "HF_TOKEN",
            "--yes",
            "--json",
            "--",
            "sh",
            "-c",
            f'echo checking; [ "$(printf %s "$HF_TOKEN" | sha256sum | cut -c1-64)" = {digest} ] '
            "&& echo ok > out/check; "
            # the command waits until the test has looked at ps (the fake instance is here)
            f'echo "token is $HF_TOKEN"; while [ ! -e {tmp_path}/looked ]; do sleep 0.1; done',
        ]
    )
    assert result.exit_code == 0, result.stderr
    assert (out / "check").read_text() == "ok\n"
    assert seen and all(secret not in text for text in seen)
    assert secret not in result.stdout + result.stderr
    roots = [isolated_home, out, tmp_path / "instance-jobs", tmp_path / "work"]
    (remote_job,) = (tmp_path / "instance-jobs").iterdir()
    assert not (remote_job / "ctl" / "env").exists()  # read once by the wrapper, then removed
    for root in roots:
        for path in root.rglob("*") if root.exists() else []:
            # What the command itself printed stays on the instance, which is destroyed.
            if path.is_file() and path != remote_job / "ctl" / "log":
                assert secret.encode() not in path.read_bytes(), path
    assert " is ***" in Path(result.json()["log_path"]).read_text()  # redacted, not dropped


def test_detach_then_attach(gs, vast, tmp_path):
    out = tmp_path / "o"
    started = run_job(
        gs,
        out,
        "sh",
        "-c",
        "sleep 1; echo later > out/later.txt; echo finished; exit 5",
        opts=["--detach"],
    )
    assert started.exit_code == 0, started.stderr
    job = started.json()
    assert job["status"] == "running"
    assert len(vast.live_instances()) == 1
    listed = gs("jobs --json").json()
    assert [j["id"] for j in listed] == [job["id"]]
    attached = gs(f"jobs attach {job['id']} --json")
    assert attached.exit_code == 5, attached.stderr
    assert (out / "later.txt").read_text() == "later\n"
    assert vast.live_instances() == []
    shown = gs(f"jobs show {job['id']} --json").json()
    assert shown["status"] == "failed" and shown["exit_code"] == 5
    logs = gs(f"jobs logs {job['id']}")
    assert "finished" in logs.stdout


def test_attach_counts_max_duration_from_the_commands_start_not_from_the_attach(gs, vast, tmp_path):
    """A detached job with --max-duration 5m, attached when it has run for 6 minutes (the
    clock moved on): the watchdog fires at once (124), not 5 minutes after the attach."""
    started = run_job(
        gs, tmp_path / "o", "sh", "-c", "sleep 67", opts=["--detach", "--max-duration", "5m"]
    )
    job = started.json()
    wait_for(lambda: _remote_running("sleep 67"), 30, "the detached command to start")
    attached = run_tool(
        "jobs", "attach", job["id"], "--json", env={"GPU_SHOPPER_CLOCK_OFFSET": "6m"}
    )
    assert attached.returncode == 124, attached.stderr
    assert "--max-duration 5m reached" in attached.stderr
    assert vast.live_instances() == []
    assert not _remote_running("sleep 67")


def test_cancel_a_detached_job(gs, vast, tmp_path):
    started = run_job(gs, tmp_path / "o", "sh", "-c", "echo x > out/x; sleep 63", opts=["--detach"])
    job = started.json()
    wait_for(lambda: _remote_running("sleep 63"), 30, "the detached command to start")
    cancelled = gs(f"jobs cancel {job['id']} --json")
    assert cancelled.exit_code == 0, cancelled.stderr
    assert cancelled.json()["status"] == "cancelled"
    assert vast.live_instances() == []
    assert not _remote_running("sleep 63")


def test_a_detached_jobs_secret_stays_out_of_what_attach_and_cancel_bring_home(
    gs, vast, tmp_path, isolated_home, monkeypatch
):
    """--detach with --secret-env: cancel brings the log home redacted like run does; an
    attach from a shell without the variable would stream it unredacted, so it is refused
    (exit 2, nothing touched) while cancel still stops, collects and destroys."""
    secret = "hf_" + "D3tachedS3cret0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    script = 'echo "token is $HF_TOKEN"; sleep 64'
    opts = ["--detach", "--secret-env", "HF_TOKEN"]
    job = run_job(gs, tmp_path / "o", "sh", "-c", script, opts=opts).json()
    wait_for(lambda: _remote_running("sleep 64"), 30, "the detached command to start")
    cancelled = gs(f"jobs cancel {job['id']} --json")
    assert cancelled.exit_code == 0, cancelled.stderr
    log = Path(job["log_path"]).read_bytes()
    assert b"token is ***" in log and secret.encode() not in log
    assert secret not in cancelled.stdout + cancelled.stderr
    assert vast.live_instances() == []

    second = run_job(gs, tmp_path / "o2", "sh", "-c", script, opts=opts).json()
    wait_for(lambda: _remote_running("sleep 64"), 30, "the detached command to start")
    monkeypatch.delenv("HF_TOKEN")
    refused = gs(f"jobs attach {second['id']}")
    assert refused.exit_code == 2 and "HF_TOKEN" in refused.stderr, refused.stderr
    assert len(vast.live_instances()) == 1
    assert read_state(isolated_home)["jobs"][second["id"]]["status"] == "running"
    unset = gs(f"jobs cancel {second['id']} --json")
    assert unset.exit_code == 0, unset.stderr
    assert secret not in unset.stdout + unset.stderr
    assert "HF_TOKEN is not set here to redact it" in unset.stderr
    unread = Path(second["log_path"])
    assert not unread.exists() or secret.encode() not in unread.read_bytes()
    assert vast.live_instances() == []
    assert not _remote_running("sleep 64")


def test_a_full_local_disk_while_streaming_stops_collects_and_destroys(
    gs, vast, tmp_path, isolated_home, monkeypatch
):
    """The local log cannot be written (ENOSPC) while the command runs: the job fails at
    'running', the command is stopped and the instance destroyed; never an escaped error
    that leaves the rental running and the record 'running'."""
    import errno

    from gpushopper.core.jobs import JobRunner

    def full(self, local_log, data):  # noqa: ANN001, ANN202 - JobRunner._out's shape
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JobRunner, "_out", full)
    result = run_job(gs, tmp_path / "o", "sh", "-c", "echo x > out/x; echo hi; sleep 65")
    doc = result.json()
    assert result.exit_code == 1, result.stderr
    assert doc["status"] == "failed" and doc["failure_stage"] == "running"
    assert "No space left on device" in doc["error"]
    assert doc["teardown"]["confirmed"] is True
    assert vast.live_instances() == []
    assert not _remote_running("sleep 65")


def test_cancel_with_a_full_local_disk_still_destroys(gs, vast, tmp_path, monkeypatch):
    import errno

    from gpushopper.core.jobs import JobRunner

    job = run_job(gs, tmp_path / "o", "sh", "-c", "sleep 66", opts=["--detach"]).json()
    wait_for(lambda: _remote_running("sleep 66"), 30, "the detached command to start")

    def full(job):  # noqa: ANN001, ANN202 - JobRunner._local_log's shape
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JobRunner, "_local_log", staticmethod(full))
    cancelled = gs(f"jobs cancel {job['id']} --json")
    assert cancelled.exit_code == 0, cancelled.stderr
    assert "No space left on device" in cancelled.stderr
    assert cancelled.json()["teardown"]["confirmed"] is True
    assert vast.live_instances() == []
    assert not _remote_running("sleep 66")


def test_a_signal_while_cancel_stops_the_command_still_destroys_exits_130(
    gs, vast, tmp_path, monkeypatch
):
    """Ctrl-C during 'jobs cancel' (its TERM grace can take seconds): the cancel carries on
    to the collect and the destroy, and exits 128+N as run does."""
    from gpushopper.core import interrupts
    from gpushopper.core.jobs import JobRunner

    job = run_job(gs, tmp_path / "o", "sh", "-c", "sleep 68", opts=["--detach"]).json()
    wait_for(lambda: _remote_running("sleep 68"), 30, "the detached command to start")
    stop = JobRunner._stop
    calls: list[int] = []

    def interrupted(self, job, grace_s=10.0):  # noqa: ANN001, ANN202 - JobRunner._stop's shape
        calls.append(1)
        if len(calls) == 1:
            raise interrupts.SignalReceived(signal.SIGINT)
        return stop(self, job, grace_s)

    monkeypatch.setattr(JobRunner, "_stop", interrupted)
    cancelled = gs(f"jobs cancel {job['id']} --json")
    assert cancelled.exit_code == 130, cancelled.stderr
    doc = cancelled.json()
    assert doc["status"] == "cancelled" and "SIGINT" in doc["error"]
    assert doc["teardown"]["confirmed"] is True
    assert vast.live_instances() == []
    assert not _remote_running("sleep 68")


def test_preflight_mismatch_fails_over(gs, vast, tmp_path, isolated_home):
    vast.offers.clear()
    bad = vast.add_offer(
        gpu_name="RTX 4090", dph_base=0.20, real_gpu={"name": "NVIDIA GeForce RTX 3060"}
    )
    good = vast.add_offer(gpu_name="RTX 4090", dph_base=0.30)
    result = run_job(gs, tmp_path / "o", "true", opts=["--gpu", "4090", "--auto-retry", "1"])
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["offer_id"] == f"vastai:{good['id']}"
    health = read_state(isolated_home)["offer_health"]
    assert "not what was rented" in health[f"vastai:{bad['id']}"]["last_reason"]
    assert vast.live_instances() == []


def test_preflight_mismatch_without_retry_exits_1_naming_the_stage(gs, vast, tmp_path):
    vast.offers.clear()
    vast.add_offer(gpu_name="RTX 4090", dph_base=0.20, real_gpu={"count": 0, "memory_mib": 8000})
    result = run_job(gs, tmp_path / "o", "true")
    assert result.exit_code == 1, result.stderr
    doc = result.json()
    assert doc["failure_stage"] == "preflight"
    assert doc["exit_code"] is None
    assert vast.live_instances() == []


def test_provider_exited_mid_job_is_lost_nothing_leaked(
    gs, vast, tmp_path, isolated_home, fake_time
):
    def exit_it() -> None:
        for inst in vast.live_instances():
            vast.force_status(inst["id"], "exited")

    _when(_log_has(isolated_home, "running now"), exit_it)
    result = run_job(gs, tmp_path / "o", "sh", "-c", "echo running now; sleep 64")
    doc = result.json()
    assert doc["status"] == "lost", result.stderr
    assert result.exit_code == 1
    assert doc["teardown"]["confirmed"] is True
    assert vast.live_instances() == []
    _kill_job_groups()


def _kill_job_groups() -> None:
    """End what a lost job left running on the fake instance (this machine), by the process
    groups its wrapper recorded: never by name, which could hit another run's processes."""
    root = Path(os.environ["GPU_SHOPPER_JOBS_REMOTE_ROOT"])
    for pid_file in root.glob("*/ctl/pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_provider_check_during_a_job_finds_an_exited_instance_while_ssh_still_works(
    gs, vast, tmp_path, isolated_home, fake_time, monkeypatch
):
    """The once-a-minute provider check on its own: SSH stays up (so the reconnect path never
    asks), the provider reports the instance exited; the job is lost within a minute of the
    fake clock, long before --max-duration, and the instance is torn down."""
    import dataclasses

    from gpushopper.core.jobs import PROVIDER_CHECK_S
    from gpushopper.providers.vastai import VastAI

    real_get = VastAI.get_instance
    flipped: list[float] = []

    def get_instance(self, instance_id):
        inst = real_get(self, instance_id)
        if inst is not None and flipped and inst.status == "running":
            return dataclasses.replace(inst, status="exited", raw_status="exited")
        return inst

    monkeypatch.setattr(VastAI, "get_instance", get_instance)
    _when(_log_has(isolated_home, "running now"), lambda: flipped.append(fake_time.now))
    result = run_job(
        gs, tmp_path / "o", "sh", "-c", "echo running now; sleep 66", opts=["--max-duration", "5m"]
    )
    _kill_job_groups()
    doc = result.json()
    assert doc["status"] == "lost", result.stderr
    assert "exited at the provider" in doc["error"]
    assert "reconnect" not in result.stderr  # found by the check, not by a dropped SSH
    assert flipped and fake_time.now - flipped[0] < 2 * PROVIDER_CHECK_S + 30
    assert result.exit_code == 1
    assert doc["teardown"]["confirmed"] is True
    assert vast.live_instances() == []


def test_broken_stdout_pipe_mid_job_stops_collects_destroys_exits_141(
    vast, isolated_home, tmp_path
):
    """``run ... | head -1``: the next write to stdout fails; the job is cancelled as by
    SIGPIPE, the command stopped, what it wrote brought home, the instance destroyed."""

    out = tmp_path / "o"
    err = (tmp_path / "run.err").open("w")
    proc = spawn_tool(
        *("run", "--provider", "vastai", "--out", str(out), "--yes", "--"),
        *("sh", "-c", "echo partial > out/partial.txt; while :; do echo tick; sleep 0.1; done"),
        stdout=subprocess.PIPE,
        stderr=err,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"tick\n"  # what `| head -1` shows
        proc.stdout.close()  # and then head exits
        assert proc.wait(120) == 141, (tmp_path / "run.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    (job,) = read_state(isolated_home)["jobs"].values()
    assert job["status"] == "cancelled" and "SIGPIPE" in job["error"]
    assert job["teardown"]["confirmed"] is True
    assert (out / "partial.txt").read_text() == "partial\n"
    assert vast.live_instances() == []
    assert not _remote_running("while :"), (tmp_path / "run.err").read_text()


@pytest.mark.parametrize("sweeper", [("watch", "--once"), ("cleanup-orphans", "--yes")])
def test_a_run_sigkilled_mid_job_leaves_the_job_to_attach_and_its_rental_to_the_deadline(
    vast, isolated_home, tmp_path, sweeper
):
    """The local process dies with no chance to clean up (SIGKILL) while its job runs: the
    command goes on under its wrapper, and a sweep before the reservation ends leaves the
    instance to 'jobs attach'; a sweep past the reservation destroys it."""
    out = tmp_path / "o"
    err = (tmp_path / "run.err").open("w")
    proc = spawn_tool(
        *("run", "--provider", "vastai", "--out", str(out), "--hours", "1h", "--yes", "--"),
        *("sh", "-c", "echo halfway; while :; do sleep 0.2; done"),
        stdout=subprocess.PIPE,
        stderr=err,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"halfway\n", (tmp_path / "run.err").read_text()
    finally:
        proc.kill()  # SIGKILL: no handler, no teardown of its own
        proc.wait(10)
    try:
        (job,) = read_state(isolated_home)["jobs"].values()
        assert job["status"] == "running"
        early = run_tool(*sweeper)
        assert early.returncode == 0, early.stderr
        assert len(vast.live_instances()) == 1
        assert read_state(isolated_home)["sessions"][job["session_id"]]["status"] == "running"
        late = run_tool(*sweeper, env={"GPU_SHOPPER_CLOCK_OFFSET": "2h"})
        assert late.returncode == 0, late.stderr
        assert vast.live_instances() == []
        assert read_state(isolated_home)["sessions"][job["session_id"]]["status"] == "ended"
    finally:
        _kill_job_groups()


def test_job_record_comes_first(gs, vast, tmp_path, isolated_home):
    """A create that fails (and no instance appears): the job was on disk before, and now
    says which stage failed; exit 1; nothing rented."""
    vast.fail_next("PUT", r"/asks/", status=400, body={"error": "no_such_ask"}, times=50)
    result = run_job(gs, tmp_path / "o", "true")
    assert result.exit_code == 1, result.stderr
    jobs = read_state(isolated_home).get("jobs") or {}
    assert len(jobs) == 1
    (job,) = jobs.values()
    assert job["command"] == ["true"]
    assert job["owner"]["pid"] == os.getpid()
    assert job["status"] == "failed" and job["failure_stage"] == "provisioning"
    assert result.json()["failure_stage"] == "provisioning"
    assert vast.live_instances() == []


def test_bad_input_exits_2(gs, vast, tmp_path):
    assert gs("run --provider vastai --yes").exit_code == 2
    assert gs("run --provider vastai --secret-env NOPE_NOT_SET --yes -- true").exit_code == 2
    assert gs("run --provider vastai --env NOEQUALS --yes -- true").exit_code == 2
    assert gs(f"run --provider vastai --workdir {tmp_path}/missing --yes -- true").exit_code == 2
    assert gs("run --provider vastai --max-duration 5 --yes -- true").exit_code == 2
    assert vast.live_instances() == []


def test_keep_on_failure_keeps_the_instance_and_moves_the_deadline(
    gs, vast, tmp_path, isolated_home
):
    result = run_job(gs, tmp_path / "o", "sh", "-c", "exit 4", opts=["--keep-on-failure", "10m"])
    assert result.exit_code == 4, result.stderr
    doc = result.json()
    assert doc["teardown"]["confirmed"] is False
    assert "kept" in result.stderr and "--keep-on-failure" in result.stderr
    assert len(vast.live_instances()) == 1
    session = read_state(isolated_home)["sessions"][doc["session_id"]]
    from gpushopper.model.units import parse_iso

    ends = parse_iso(session["reservation_ends_at"])
    kept = parse_iso(doc["teardown"]["kept_until"])
    assert ends is not None and kept is not None and abs((ends - kept).total_seconds()) < 5
    assert session.get("deadline_pushed_at"), session.get("deadline_push_error")
    assert gs(f"sessions done {doc['session_id']}").exit_code == 0
    assert vast.live_instances() == []


def test_keep_on_failure_is_not_used_on_success(gs, vast, tmp_path):
    result = run_job(gs, tmp_path / "o", "true", opts=["--keep-on-failure", "10m"])
    assert result.exit_code == 0, result.stderr
    assert result.json()["teardown"]["confirmed"] is True
    assert vast.live_instances() == []


def test_attach_refuses_a_machine_with_another_host_key_and_still_destroys(
    gs, vast, tmp_path, isolated_home, fake_time
):
    """The job's own SSH (paramiko) holds the instance to the host key the provision
    verified: another key at that endpoint gets no command; the instance is destroyed."""
    started = run_job(gs, tmp_path / "o", "sh", "-c", "echo hi; sleep 2", opts=["--detach"])
    assert started.exit_code == 0, started.stderr
    job = started.json()
    store = StateStore(isolated_home / "state.json")
    with store.transaction() as saved:
        ssh = saved["sessions"][job["session_id"]]["ssh"]
        assert ssh["host_key"].startswith("ssh-")
        ssh["host_key"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKey00"
    attached = gs(f"jobs attach {job['id']} --json")
    _kill_job_groups()
    assert attached.exit_code == 1, attached.stderr
    assert "host key" in attached.stderr
    doc = attached.json()
    assert doc["status"] == "failed" and "host key" in doc["error"]
    assert doc["teardown"]["confirmed"] is True
    log = Path(doc["log_path"])
    assert not log.exists() or "hi" not in log.read_text()  # nothing was read from it
    assert vast.live_instances() == []


def test_attach_never_starts_a_command_that_was_never_started(
    gs, vast, tmp_path, isolated_home, fake_time
):
    """The run was killed between upload and start: attach finds no wrapper on the instance,
    does not start (or wait on) the command, and destroys the instance."""
    started = run_job(gs, tmp_path / "o", "true", opts=["--detach"])
    job = started.json()
    ctl = Path(os.environ["GPU_SHOPPER_JOBS_REMOTE_ROOT"]) / job["id"] / "ctl"
    wait_for((ctl / "status").exists, 10, "the detached command to end")
    for name in ("started", "status", "log", "pid"):
        (ctl / name).unlink(missing_ok=True)  # as if the wrapper never ran
    store = StateStore(isolated_home / "state.json")
    with store.transaction() as saved:
        saved["jobs"][job["id"]].update(started=False, status="uploading", max_duration_s=60.0)
    attached = gs(f"jobs attach {job['id']} --json")
    doc = attached.json()
    assert attached.exit_code == 1, attached.stderr
    assert doc["status"] == "failed" and "never started" in doc["error"]
    assert not (ctl / "started").exists()
    assert doc["teardown"]["confirmed"] is True
    assert vast.live_instances() == []


def test_a_destroy_that_is_never_confirmed_exits_3_and_says_so(
    gs, vast, tmp_path, isolated_home, fake_time
):
    """Results come home, then the provider refuses every destroy: exit 3 (never the
    command's 0), the job says the teardown is not confirmed and how to finish it."""
    vast.fail_next("DELETE", r"/instances/", status=500, times=1000)
    result = run_job(gs, tmp_path / "o", "sh", "-c", "echo done > out/d")
    assert result.exit_code == 3, result.stderr
    doc = result.json()
    assert doc["teardown"]["confirmed"] is False
    assert "NOT confirmed" in doc["error"] and "cleanup-orphans" in doc["error"]
    assert (tmp_path / "o" / "d").read_text() == "done\n"
    assert len(vast.live_instances()) == 1
    vast.clear_faults()
    assert gs(f"sessions done {doc['session_id']}").exit_code == 0
    assert vast.live_instances() == []


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_big_and_small_results_come_home_hashed_in_one_pass(gs, vast, tmp_path, monkeypatch):
    """Big files (streamed, hashed as they land) and the small rest (one tar stream) of a
    folder arrive whole, each listed with its real size and sha256; links inside are left
    out, an empty folder comes too."""
    from gpushopper.remote import jobwrap

    monkeypatch.setattr(jobwrap, "STREAM_MIN_BYTES", 64 << 10)
    out = tmp_path / "o"
    script = (
        "mkdir -p out/ckpt/deep out/empty extra && "
        "head -c 300000 /dev/urandom > out/ckpt/lora.safetensors && "
        "head -c 1000 /dev/urandom > out/ckpt/deep/small.bin && echo hi > 'out/a b.txt' && "
        "ln -s /etc/passwd out/link && head -c 200000 /dev/urandom > extra/model.bin"
    )
    result = run_job(gs, out, "sh", "-c", script, opts=["--download", "extra/model.bin"])
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    rows = {Path(a["local"]).relative_to(out).as_posix(): a for a in doc["artifacts"]}
    assert set(rows) == {"ckpt/lora.safetensors", "ckpt/deep/small.bin", "a b.txt", "model.bin"}
    for rel, row in rows.items():
        assert row["bytes"] == (out / rel).stat().st_size, rel
        assert row["sha256"] == _digest(out / rel), rel
    assert rows["ckpt/lora.safetensors"]["bytes"] == 300000
    assert (out / "empty").is_dir() and not (out / "link").exists()
    assert not list(tmp_path.glob(".*gs-partial*"))
    assert vast.live_instances() == []


def test_a_failed_download_is_retried_and_a_lasting_failure_leaves_no_half_file(
    gs, vast, tmp_path, monkeypatch, fake_time
):
    from gpushopper.remote import jobwrap

    monkeypatch.setattr(jobwrap, "STREAM_MIN_BYTES", 64 << 10)
    real = jobwrap._stream_file
    calls = {"n": 0, "fail": 1}

    def flaky(ssh, remote_dir, rel, dest):
        calls["n"] += 1
        if calls["n"] <= calls["fail"]:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(b"half")  # what a dropped connection leaves in the stage
            raise SshError("connection dropped")
        return real(ssh, remote_dir, rel, dest)

    monkeypatch.setattr(jobwrap, "_stream_file", flaky)
    make = "head -c 100000 /dev/urandom > out/model.bin"
    out = tmp_path / "o"
    result = run_job(gs, out, "sh", "-c", make)
    assert result.exit_code == 0, result.stderr
    assert "attempt 1" in result.stderr and calls["n"] == 2
    (row,) = result.json()["artifacts"]
    assert row["bytes"] == 100000 and row["sha256"] == _digest(out / "model.bin")

    calls.update(n=0, fail=99)
    out2 = tmp_path / "o2"
    result = run_job(gs, out2, "sh", "-c", make)
    assert result.exit_code == 1, result.stderr
    doc = result.json()
    assert doc["status"] == "failed" and doc["failure_stage"] == "collecting"
    assert "connection dropped" in doc["error"]
    assert not (out2 / "model.bin").exists()  # never half a file under the final name
    assert not list(tmp_path.glob(".*gs-partial*"))
    assert doc["teardown"]["confirmed"] is True and vast.live_instances() == []


def _local_ssh(monkeypatch, after: str = "") -> None:
    """jobwrap's ssh replaced by a local sh running the remote command, then ``after``:
    the byte streams exactly as the instance would send them, with no connection."""
    from gpushopper.remote import jobwrap

    monkeypatch.setattr(jobwrap, "ssh_argv", lambda ssh: ["sh", "-c", f'sh -c "$0"{after}'])


def test_the_tar_stream_is_read_to_its_end_before_the_process_is_waited_for(monkeypatch, tmp_path):
    """After tar's end marker the stream may still carry bytes (tar pads to its record size):
    they are read to EOF, and the process is neither killed nor cut off by a closed pipe. The
    sender here keeps 4 MiB behind the archive, more than any pipe and tarfile's buffer hold,
    so it is always still writing when the archive ends, and it lives on a moment after its
    stream closes (as ssh does while the channel shuts): closing the pipe early, or killing
    the process once the stream has ended, is red every time, not now and then."""
    from gpushopper.remote import jobwrap

    remote = tmp_path / "remote"
    (remote / "out").mkdir(parents=True)
    (remote / "out" / "a.txt").write_text("a\n")
    _local_ssh(monkeypatch, " && head -c 4194304 /dev/zero && exec >&- && sleep 0.5")
    found = jobwrap._tar_files({}, str(remote), ["out/a.txt"], tmp_path / "into")
    assert found == {"out/a.txt": (2, hashlib.sha256(b"a\n").hexdigest())}
    assert (tmp_path / "into" / "out" / "a.txt").read_text() == "a\n"


def test_a_streamed_file_whose_sender_dies_fails_at_once_with_what_it_had(monkeypatch, tmp_path):
    """The digest follows a streamed file while its writer runs; a writer that dies midway
    ends the follow (no wait on a file that will never grow) and the download fails."""
    from gpushopper.remote import jobwrap

    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "big.bin").write_bytes(os.urandom(300_000))
    _local_ssh(monkeypatch, "")
    dest = tmp_path / "into" / "big.bin"
    size, digest = jobwrap._stream_file({}, str(remote), "big.bin", dest)
    assert (size, digest) == (300_000, _digest(remote / "big.bin"))
    monkeypatch.setattr(
        jobwrap,
        "ssh_argv",
        lambda ssh: ["sh", "-c", "head -c 100000 /dev/zero; echo gone >&2; exit 3"],
    )
    started = time.monotonic()
    with pytest.raises(SshError, match="download of big.bin failed: gone"):
        jobwrap._stream_file({}, str(remote), "big.bin", dest)
    assert time.monotonic() - started < 10
    assert dest.stat().st_size == 100_000


def test_hard_linked_results_both_come_home(gs, vast, tmp_path):
    """tar sends the second name of a hard-linked file as a link to the first, not its
    bytes: it still arrives (a copy of the first, same size and digest), and the job
    succeeds instead of failing at collecting with 'did not arrive'."""
    out = tmp_path / "o"
    result = run_job(gs, out, "sh", "-c", "echo same > out/a.txt && ln out/a.txt out/b.txt")
    assert result.exit_code == 0, result.stderr
    rows = {Path(a["local"]).name: a for a in result.json()["artifacts"]}
    assert set(rows) == {"a.txt", "b.txt"}
    assert (out / "b.txt").read_text() == "same\n"
    assert rows["a.txt"]["sha256"] == rows["b.txt"]["sha256"] == _digest(out / "b.txt")
    assert vast.live_instances() == []


def test_a_result_name_with_a_line_break_is_left_out_and_said(gs, vast, tmp_path):
    out = tmp_path / "o"
    result = run_job(
        gs,
        out,
        "sh",
        "-c",
        "echo ok > out/good.txt; f=$(printf 'bad\\nname'); echo x > \"out/$f\"",
        as_json=False,
    )
    assert result.exit_code == 0, result.stderr
    assert (out / "good.txt").read_text() == "ok\n"
    assert "control character" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.txt"]


def test_uploads_a_file_and_a_folder_where_asked(gs, vast, tmp_path):
    """--upload LOCAL[:REMOTE]: a single file (mode bits kept) lands at a path relative to the
    working directory, a folder at an absolute path; nothing staged is left beside them."""
    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    folder = tmp_path / "dataset"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "1.txt").write_text("caption one\n")
    remote = tmp_path / "remote-data"  # the fake instance is this machine
    out = tmp_path / "o"
    result = run_job(
        gs,
        out,
        "sh",
        "-c",
        f"bin/run-me > out/ran.txt && cat {remote}/img/1.txt >> out/ran.txt && ls -a bin >> out/ran.txt",
        opts=["--upload", f"{tool}:bin/run-me", "--upload", f"{folder}:{remote}"],
    )
    assert result.exit_code == 0, result.stderr
    lines = (out / "ran.txt").read_text().splitlines()
    assert lines[:2] == ["tool ran", "caption one"]
    assert not [n for n in lines[2:] if "gs-partial" in n]
    assert not list(tmp_path.glob("remote-data.gs-partial*"))
    assert vast.live_instances() == []


def test_a_command_deaf_to_term_is_killed_after_the_grace(gs, vast, tmp_path, fake_time):
    """--max-duration sends TERM to the process group, waits the grace, then KILL: a command
    that ignores TERM still ends, and the job is timed_out (124) and destroyed."""
    result = run_job(
        gs,
        tmp_path / "o",
        "sh",
        "-c",
        "trap '' TERM; echo deaf; while :; do sleep 0.2 || true; done",
        opts=["--max-duration", "3s"],
    )
    assert result.exit_code == 124, result.stderr
    assert result.json()["status"] == "timed_out"
    assert vast.live_instances() == []
    assert not _remote_running("while :")


def test_a_started_command_is_never_run_twice_even_with_auto_retry(gs, vast, tmp_path):
    """--auto-retry re-provisions only when no instance could be made ready: a command that
    started and failed is not run again, and only one instance was ever rented."""
    vast.offers.clear()
    vast.add_offer(gpu_name="RTX 4090", dph_base=0.20)
    vast.add_offer(gpu_name="RTX 4090", dph_base=0.30)
    marker = tmp_path / "ran-count"  # the fake instance is this machine
    result = run_job(
        gs, tmp_path / "o", "sh", "-c", f"echo x >> {marker}; exit 5", opts=["--auto-retry", "2"]
    )
    assert result.exit_code == 5, result.stderr
    assert marker.read_text() == "x\n"
    assert len(vast.instances) == 1
    assert vast.live_instances() == []


def test_preflight_refuses_a_machine_without_disk_for_the_upload(gs, vast, tmp_path):
    vast.offers.clear()
    vast.add_offer(gpu_name="RTX 4090", dph_base=0.20, real_gpu={"disk_free_gb": 0.001})
    big = tmp_path / "dataset.bin"
    big.write_bytes(os.urandom(3_000_000))
    result = run_job(gs, tmp_path / "o", "true", opts=["--upload", f"{big}:data.bin"])
    assert result.exit_code == 1, result.stderr
    doc = result.json()
    assert doc["failure_stage"] == "preflight"
    assert "free disk" in doc["error"]
    assert vast.live_instances() == []


def test_the_reservation_is_max_duration_plus_a_margin_never_past_the_hard_maximum():
    from gpushopper.core.jobs import HOURS_MARGIN_S, default_hours

    assert default_hours(3600.0, 7200.0, 48 * 3600.0) == 3600.0 + HOURS_MARGIN_S
    assert default_hours(None, 7200.0, 48 * 3600.0) == 7200.0
    assert default_hours(100 * 3600.0, 7200.0, 48 * 3600.0) == 48 * 3600.0


def test_a_job_records_its_sessions_setup_time_for_the_lifecycle_statistics(
    gs, vast, tmp_path, isolated_home
):
    result = run_job(gs, tmp_path / "o", "true")
    assert result.exit_code == 0, result.stderr
    session = read_state(isolated_home)["sessions"][result.json()["session_id"]]
    assert session["timings"]["setup_s"] >= 0
    assert session["timings"]["time_to_ssh_s"] is not None  # the provision's own kept
    stats = gs("sessions stats --json").json()
    assert stats[0]["phases"]["setup_s"]["n"] == 1
