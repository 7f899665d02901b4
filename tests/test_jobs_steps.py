"""The steps of a job's end (core/jobs.py), each on its own, on a fake clock and the in-process
fake provider: the exit status, the watchdogs, a long SSH drop, and a signal that arrives while
the instance is being destroyed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from gpushopper.core import interrupts
from gpushopper.core.jobs import (
    RECONNECT_S,
    TIMEOUT_EXIT,
    BadExitStatus,
    JobFailed,
    JobRunner,
    JobSpec,
    Outcome,
    _Stream,
    exit_code,
    unconfirmed_error,
)
from gpushopper.core.runtime import Runtime
from gpushopper.model.errors import SshError
from gpushopper.model.session import Session
from gpushopper.state.paths import resolve_paths
from tests.conftest import FakeTime
from tests.fakes.provider import FakeProvider, factory
from tests.fakes.records import T0, label, new_store, put, running


class Host:
    """What a JobRunner needs (the CLI's App in production): a store, paths, the fake
    provider and the fake clock."""

    def __init__(self, tmp_path: Path, provider: FakeProvider, clock: FakeTime) -> None:
        self.store = new_store(tmp_path)
        self.paths = resolve_paths({"GPU_SHOPPER_HOME": str(tmp_path)})
        self.settings = None
        self.provider = factory(provider)
        self._clock = clock

    def clock(self):  # noqa: ANN201 - the wall clock does not move in these tests
        return T0

    def mono(self) -> float:
        return self._clock.mono()

    def sleep(self, seconds: float) -> None:
        self._clock.sleep(seconds)


def _outcome(status=None, exit_code_=None, signum=None, failure_stage=None) -> Outcome:
    outcome = Outcome()
    outcome.status, outcome.exit_code = status, exit_code_
    outcome.signum, outcome.failure_stage = signum, failure_stage
    return outcome


@pytest.mark.parametrize(
    ("outcome", "unconfirmed", "started", "code"),
    [
        (_outcome("succeeded", 0), True, True, 3),  # never the command's 0
        (_outcome("failed", 7), True, False, 3),  # 3 even before the command started
        (_outcome("cancelled", signum=15), False, True, 143),
        (_outcome("timed_out", TIMEOUT_EXIT), False, True, TIMEOUT_EXIT),
        (_outcome("stalled", TIMEOUT_EXIT), False, True, TIMEOUT_EXIT),
        (_outcome("failed", 7, failure_stage="running"), False, True, 7),
        (_outcome("succeeded", 0, failure_stage="collecting"), False, True, 1),
        (_outcome("failed", 0, failure_stage="collecting"), False, True, 1),
        (_outcome("lost", failure_stage="running"), False, True, 1),
        (_outcome("failed", 7), False, False, 1),  # the tool failed before it ran
    ],
)
def test_the_exit_status_of_a_job(outcome, unconfirmed, started, code):
    assert exit_code(outcome, unconfirmed, started) == code


def test_an_unconfirmed_destroy_keeps_the_error_and_says_what_to_run():
    assert unconfirmed_error("the command exited 2", "HTTP 503") == (
        "the command exited 2; destroying the instance was NOT confirmed (HTTP 503); "
        "run 'gpu-shopper cleanup-orphans --yes'"
    )
    assert unconfirmed_error(None, "x").startswith("destroying the instance was NOT confirmed")


def _stream(**changes) -> _Stream:
    fields = dict(
        ctl="d/ctl",
        local_log=Path("log"),
        offset=0,
        max_s=None,
        stall_s=None,
        begun=100.0,
        last_growth=100.0,
        last_check=100.0,
        saved_at=100.0,
    )
    fields.update(changes)
    return _Stream(**fields)


def test_the_watchdogs_fire_at_their_limit_and_not_a_moment_before():
    assert _stream().watchdog(1e9) is None  # none set
    timed = _stream(max_s=60.0)
    assert timed.watchdog(159.9) is None
    assert timed.watchdog(160.0) == (
        "timed_out",
        "--max-duration 1m reached",
        "stopped by --max-duration 1m",
    )
    silent = _stream(stall_s=30.0, last_growth=150.0)
    assert silent.watchdog(179.9) is None
    assert silent.watchdog(180.0)[0] == "stalled"
    both = _stream(max_s=60.0, stall_s=30.0)  # both due: the max-duration is what is said
    assert both.watchdog(200.0)[0] == "timed_out"


def _runner(tmp_path: Path, provider: FakeProvider, clock: FakeTime) -> tuple[JobRunner, Host]:
    host = Host(tmp_path, provider, clock)
    runner = JobRunner(host, runtime=Runtime.of(host), emit=lambda data: None)  # type: ignore[arg-type]
    return runner, host


@pytest.mark.parametrize("gone", [True, False])
def test_a_long_ssh_drop_asks_the_provider_whether_the_instance_is_gone(tmp_path, gone):
    """SSH down for longer than RECONNECT_S: an instance the provider reports gone makes the
    job lost (the watch ends); one still running makes it fail on SSH."""
    provider, clock = FakeProvider(), FakeTime()
    iid = provider.add(label("s1"), status="exited" if gone else "running")
    runner, _ = _runner(tmp_path, provider, clock)
    session = Session.from_record(running("s1", iid))  # no SSH endpoint: every connect fails
    stream = _stream(lost_since=clock.now - RECONNECT_S - 1)
    outcome = Outcome()
    if gone:
        assert runner._poll("j1", session, outcome, stream) is None
        assert outcome.status == "lost" and "exited at the provider" in str(outcome.error)
    else:
        with pytest.raises(SshError, match=f"failed for {int(RECONNECT_S)}s"):
            runner._poll("j1", session, outcome, stream)
        assert outcome.status is None
    assert ("get_instance", iid) in provider.calls


def test_a_short_ssh_drop_backs_off_without_asking_the_provider(tmp_path):
    provider, clock = FakeProvider(), FakeTime()
    iid = provider.add(label("s1"))
    runner, _ = _runner(tmp_path, provider, clock)
    session = Session.from_record(running("s1", iid))
    stream = _stream()
    before = clock.now
    assert runner._poll("j1", session, Outcome(), stream) == (b"", None)
    assert stream.lost_since == before and clock.now == before + 1.0
    assert runner._poll("j1", session, Outcome(), stream) == (b"", None)
    assert stream.delay == 4.0 and clock.now == before + 3.0
    assert provider.count("get_instance") == 0


class _StatusSftp:
    """SFTP as the watch reads it: an empty log and a status file holding ``status``."""

    def __init__(self, status: bytes) -> None:
        self.status = status

    def open(self, path: str, mode: str = "r"):  # noqa: ANN201 - a file-like, as paramiko's
        import io

        return io.BytesIO(self.status if path.endswith("/status") else b"")


@pytest.mark.parametrize(
    ("text", "code"), [(b"0\n", 0), (b"3\n", 3), (b"143\n", 143), (b"255\n", 255)]
)
def test_an_exit_status_sh_can_write_is_the_commands_code(tmp_path, text, code):
    runner, _ = _runner(tmp_path, FakeProvider(), FakeTime())
    runner.sftp = _StatusSftp(text)  # type: ignore[assignment]
    session = Session.from_record(running("s1", "1"))
    assert runner._poll("j1", session, Outcome(), _stream()) == (b"", code)


@pytest.mark.parametrize("text", [b"256\n", b"-1\n", b"+0\n", b"1e3\n", b"\xd9\xa3\n", b"\n"])
def test_an_exit_status_no_shell_writes_fails_the_job_not_the_ssh(tmp_path, text):
    """The instance's status text becomes this tool's exit status: 256 would exit 0 and -1
    would exit 255. Anything sh cannot write fails the job at once (never a code, never
    retried as a dropped SSH)."""
    runner, _ = _runner(tmp_path, FakeProvider(), FakeTime())
    runner.sftp = _StatusSftp(text)  # type: ignore[assignment]
    session = Session.from_record(running("s1", "1"))
    stream = _stream()
    with pytest.raises(BadExitStatus, match="exit status"):
        runner._poll("j1", session, Outcome(), stream)
    assert stream.lost_since is None


def test_a_local_error_while_renting_ends_the_job_record_failed(tmp_path):
    """A local OSError from the rental step (a full disk writing a key, say) fails the job
    at its stage; never a record left 'provisioning' for ever."""
    import errno

    runner, host = _runner(tmp_path, FakeProvider(), FakeTime())
    job = runner.create(JobSpec(command=["true"]))

    def provision(on_stage):  # noqa: ANN001, ANN202
        on_stage("preflight")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(JobFailed) as failed:
        runner.run(JobSpec(command=["true"]), job, provision)
    assert failed.value.exit_code == 1
    record = host.store.read()["jobs"][job["id"]]
    assert record["status"] == "failed" and record["failure_stage"] == "preflight"
    assert "No space left on device" in record["error"] and record["ended_at"]


def test_a_signal_while_the_instance_is_destroyed_waits_for_the_destroy_and_the_record(tmp_path):
    """The job's end holds signals: one that arrives during the destroy is raised only once
    the destroy is confirmed and the job recorded."""
    provider, clock = FakeProvider(), FakeTime()
    iid = provider.add(label("s1"))
    runner, host = _runner(tmp_path, provider, clock)
    put(host.store, running("s1", iid))
    job = runner.create(JobSpec(command=["true"]))
    destroy = provider.destroy_instance

    def signalled_destroy(instance_id: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # handled here, in the main thread, at once
        destroy(instance_id)

    provider.destroy_instance = signalled_destroy  # type: ignore[method-assign]
    session = host.store.get_session("s1")
    assert session is not None
    outcome = _outcome("succeeded", 0)
    with interrupts.destroy_on_signals(), pytest.raises(interrupts.SignalReceived):
        runner._finish(JobSpec(command=["true"]), job["id"], session, outcome, False, True)
    assert provider.live() == set()
    record = host.store.read()["jobs"][job["id"]]
    assert record["status"] == "succeeded"
    assert record["teardown"]["confirmed"] is True
    assert interrupts.last_signal() == signal.SIGTERM


def test_the_setup_time_is_recorded_on_a_valid_session_and_never_on_a_damaged_one(tmp_path):
    """``setup_s`` joins the session's timings (kept beside the others); a damaged record is
    reported elsewhere and never rewritten here, not even to add a timing."""
    runner, host = _runner(tmp_path, FakeProvider(), FakeTime())
    damaged = {**running("a00002", "9"), "created_at": "yesterday"}
    put(host.store, running("a00001", "8", timings={"create_call_s": 1.5}), damaged)
    before = host.store.read()["sessions"]["a00002"]
    runner._record_setup("a00001", 4.25)
    runner._record_setup("a00002", 4.25)
    sessions = host.store.read()["sessions"]
    assert sessions["a00001"]["timings"] == {"create_call_s": 1.5, "setup_s": 4.25}
    assert sessions["a00002"] == before


def test_results_merge_into_the_users_folders_and_never_delete_what_the_instance_did_not_send(
    tmp_path,
):
    """With ``--out .`` the instance's names meet the user's own folders: a folder merges
    (the user's other files stay), a file replaces a file, and a file never replaces a
    folder (or a folder a file): the user's is kept and the clash reported."""
    from gpushopper.core.jobs import JobRunner

    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "keep.py").write_text("mine")
    (mine / "notes.txt").write_text("old")
    (mine / "data").mkdir()
    (mine / "data" / "big.bin").write_text("mine")
    (mine / "report").write_text("mine")
    landed = tmp_path / "stage" / "out"
    (landed / "src").mkdir(parents=True)
    (landed / "src" / "new.py").write_text("sent")
    (landed / "notes.txt").write_text("new")
    (landed / "data").write_text("a file named like the user's folder")
    (landed / "report").mkdir()
    (landed / "report" / "r.txt").write_text("sent")

    clashes = JobRunner._place(landed, mine)

    assert (mine / "src" / "keep.py").read_text() == "mine"
    assert (mine / "src" / "new.py").read_text() == "sent"
    assert (mine / "notes.txt").read_text() == "new"
    assert (mine / "data" / "big.bin").read_text() == "mine"
    assert (mine / "report").read_text() == "mine"
    assert sorted(clashes) == [str(mine / "data"), str(mine / "report")]
    assert (landed / "data").exists() and (landed / "report" / "r.txt").exists()  # kept
