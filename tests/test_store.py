"""The state store: locking across processes, atomic writes, corrupt files kept."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from gpushopper.model.errors import StateError
from gpushopper.state.store import SCHEMA_VERSION, StateStore


def _add_records(path: str, prefix: str, count: int) -> None:
    store = StateStore(Path(path))
    for i in range(count):
        with store.transaction() as state:
            state["sessions"][f"{prefix}-{i}"] = {"id": f"{prefix}-{i}", "n": i}


def test_two_processes_lose_no_records(tmp_path):
    path = tmp_path / "state.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_records, args=(str(path), p, 200)) for p in ("a", "b")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    sessions = json.loads(path.read_text())["sessions"]
    assert len(sessions) == 400
    assert {f"a-{i}" for i in range(200)} | {f"b-{i}" for i in range(200)} == set(sessions)


def _write_then_die(path: str, where: str) -> None:
    """Write a big state; SIGKILL ourselves in the middle of the write."""
    import gpushopper.state.atomic as atomic

    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    if where == "mid-write":
        atomic.os.fdopen = lambda fd, *a, **k: HalfWriter(real_fdopen(fd, *a, **k))  # type: ignore[attr-defined]
    else:
        atomic.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[attr-defined]
    store = StateStore(Path(path))
    with store.transaction() as state:
        for i in range(2000):
            state["sessions"][f"new-{i}"] = {"id": f"new-{i}", "pad": "x" * 50}


@pytest.mark.parametrize("where", ["mid-write", "before-replace"])
def test_sigkill_during_write_leaves_readable_state(tmp_path, where):
    path = tmp_path / "state.json"
    store = StateStore(path)
    with store.transaction() as state:
        state["sessions"]["keep"] = {"id": "keep"}
    before = path.read_text()
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_write_then_die, args=(str(path), where))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert path.read_text() == before
    assert StateStore(path).read()["sessions"] == {"keep": {"id": "keep"}}
    # and the store still works afterwards (the dead process's lock is released)
    with StateStore(path, lock_timeout=5).transaction() as state:
        state["sessions"]["after"] = {"id": "after"}
    assert set(StateStore(path).read()["sessions"]) == {"keep", "after"}


def test_corrupt_file_is_never_reset(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"schema_version": 1, "sessions": {"x": ')
    store = StateStore(path)
    with pytest.raises(StateError) as err:
        store.read()
    assert str(path) in str(err.value)
    backups = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(backups) == 1 and str(backups[0]) in str(err.value)
    with pytest.raises(StateError), store.transaction():
        pass
    assert path.read_text() == '{"schema_version": 1, "sessions": {"x": '


def test_corrupt_state_makes_commands_exit_1(gs, isolated_home):
    state = isolated_home / "state.json"
    state.write_text("\x00\x00garbage")
    result = gs("doctor --json")
    assert result.exit_code == 1
    checks = {c["check"]: c for c in result.json()["checks"]}
    assert checks["state"]["status"] == "fail"
    assert str(state) in checks["state"]["detail"]
    assert state.read_text() == "\x00\x00garbage"


def test_install_id_is_made_once(tmp_path):
    store = StateStore(tmp_path / "state.json")
    first = store.install_id()
    assert first == StateStore(tmp_path / "state.json").install_id()
    assert len(first) == 8


def test_migration_from_unversioned_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"install_id": "abcd1234", "sessions": [{"id": "s1"}]}))
    data = StateStore(path).read()
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["sessions"] == {"s1": {"id": "s1"}}


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "sessions": {}}))
    with pytest.raises(StateError, match="newer"):
        StateStore(path).read()


def test_state_file_is_private(tmp_path):
    path = tmp_path / "state.json"
    with StateStore(path).transaction() as state:
        state["sessions"]["a"] = {"id": "a"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_corrupt_state_fails_ordinary_commands_too(gs, isolated_home):
    state = isolated_home / "state.json"
    state.write_text('{"schema_version": 1, "sessions": {')
    result = gs("sessions list --json")
    assert result.exit_code == 1
    assert result.json()["error"]["type"] == "state"
    assert str(state) in result.stderr and ".corrupt-" in result.stderr
    assert state.read_text() == '{"schema_version": 1, "sessions": {'


def test_update_session_reads_and_writes_in_one_locked_transaction(tmp_path, monkeypatch):
    """A read outside the lock (or in a second transaction) loses a concurrent update."""
    import fcntl
    import os

    store = StateStore(tmp_path / "state.json")
    store.put_session({"id": "a00001", "status": "running"})
    opened: list[int] = []
    real_transaction = StateStore.transaction
    real_load = StateStore._load
    unlocked_reads: list[bool] = []

    def counting(self):
        opened.append(1)
        return real_transaction(self)

    def load(self):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds only if nobody holds it
        except BlockingIOError:
            pass
        else:
            unlocked_reads.append(True)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return real_load(self)

    monkeypatch.setattr(StateStore, "transaction", counting)
    monkeypatch.setattr(StateStore, "_load", load)
    assert store.update_session("a00001", warned_at="x")["warned_at"] == "x"
    assert opened == [1] and unlocked_reads == []


def test_concurrent_updates_of_one_session_lose_nothing(tmp_path):
    import threading

    store = StateStore(tmp_path / "state.json")
    store.put_session({"id": "a00001", "status": "running"})

    def work(n: int) -> None:
        mine = StateStore(tmp_path / "state.json")
        for i in range(8):
            mine.update_session("a00001", **{f"k{n}_{i}": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = store.get_session("a00001")
    assert {k for k in record if k.startswith("k")} == {
        f"k{n}_{i}" for n in range(4) for i in range(8)
    }


def test_a_state_file_that_cannot_be_written_is_a_typed_error(tmp_path, monkeypatch):
    import errno

    from gpushopper.model.errors import StateWriteError
    from gpushopper.state import store as store_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    store = StateStore(tmp_path / "state.json")
    store.put_session({"id": "a00001", "status": "running"})
    monkeypatch.setattr(store_module, "atomic_write_text", full)
    with pytest.raises(StateWriteError, match="No space left on device"):
        store.update_session("a00001", x=1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateWriteError):
        StateStore(blocker / "state.json").put_session({"id": "a00002"})


def test_sessions_that_are_not_an_object_are_refused_not_read_as_none(tmp_path):
    import json

    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema_version": 1, "sessions": "oops"}))
    with pytest.raises(StateError, match="'sessions' is str"):
        StateStore(path).read()
