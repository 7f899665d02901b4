"""The state store: locking across processes, atomic writes, corrupt files kept."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gpushopper.model.errors import StateError
from gpushopper.model.session import Session, SessionStatus
from gpushopper.state.store import SCHEMA_VERSION, StateStore


def running(session_id: str) -> Session:
    return Session(session_id, SessionStatus.RUNNING, "vastai")


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
    store.put_session(running("a00001"))
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
    when = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    assert store.update_session("a00001", warned_at=when).warned_at == when
    assert opened == [1] and unlocked_reads == []


def test_concurrent_updates_of_one_session_lose_nothing(tmp_path):
    import threading

    store = StateStore(tmp_path / "state.json")
    store.put_session(running("a00001"))

    def work(n: int) -> None:
        mine = StateStore(tmp_path / "state.json")
        for i in range(8):
            mine.update_session("a00001", **{f"k{n}_{i}": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = store.get_session("a00001").rest
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
    store.put_session(running("a00001"))
    monkeypatch.setattr(store_module, "atomic_write_text", full)
    with pytest.raises(StateWriteError, match="No space left on device"):
        store.update_session("a00001", x=1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateWriteError):
        StateStore(blocker / "state.json").put_session(running("a00002"))


def test_sessions_that_are_not_an_object_are_refused_not_read_as_none(tmp_path):
    import json

    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema_version": 1, "sessions": "oops"}))
    with pytest.raises(StateError, match="'sessions' is str"):
        StateStore(path).read()


# -- sessions cross the store boundary typed -------------------------------------------------
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
# As a hand (or an older or newer gpu-shopper) may have written it: a time with an offset
# rather than "Z", keys the model does not name, a null where a value could be.
ON_DISK = {
    "id": "a00001",
    "status": "running",
    "provider": "vastai",
    "instance_id": 7,
    "label": "gpu-shopper:0123abcd:a00001",
    "price_per_hour": 0.5,
    "created_at": "2026-11-23T12:00:00+00:00",
    "billing_started_at": "2026-11-23T12:01:00.250000Z",
    "reservation_ends_at": "2026-11-23T14:00:00Z",
    "hard_max_at": None,
    "ssh": {"host": "127.0.0.1", "port": 22},
    "timings": {"create_call_s": 1.5},
    "owner": {"pid": 1, "host": "h"},
    "from_a_newer_version": {"nested": [1, 2.0, None]},
}


def _write_state(path: Path, sessions: dict) -> bytes:
    text = json.dumps(
        {"schema_version": 1, "install_id": "0123abcd", "sessions": sessions, "offer_health": {}},
        indent=2,
        sort_keys=True,
    )
    path.write_text(text + "\n")
    return path.read_bytes()


def test_an_unchanged_session_is_rewritten_byte_for_byte(tmp_path):
    path = tmp_path / "state.json"
    before = _write_state(path, {"a00001": ON_DISK})
    store = StateStore(path)
    store.put_session(store.get_session("a00001"))
    assert path.read_bytes() == before
    store.update_session("a00001")  # no change at all: the same bytes again
    assert path.read_bytes() == before


def test_a_change_rewrites_that_field_only_and_unknown_keys_survive(tmp_path):
    path = tmp_path / "state.json"
    _write_state(path, {"a00001": ON_DISK})
    store = StateStore(path)
    later = T0 + timedelta(hours=3)
    back = store.update_session("a00001", reservation_ends_at=later, note="kept too")
    assert back.reservation_ends_at == later and back.rest["note"] == "kept too"
    on_disk = json.loads(path.read_text())["sessions"]["a00001"]
    assert on_disk == {**ON_DISK, "reservation_ends_at": "2026-11-23T15:00:00Z", "note": "kept too"}
    session = store.get_session("a00001")
    session.status = SessionStatus.ENDED
    session.rest.pop("note")  # a key dropped from rest is dropped from the record
    store.put_session(session)
    on_disk = json.loads(path.read_text())["sessions"]["a00001"]
    assert on_disk == {**ON_DISK, "reservation_ends_at": "2026-11-23T15:00:00Z", "status": "ended"}
    assert on_disk["from_a_newer_version"] == {"nested": [1, 2.0, None]}


def test_times_come_back_as_aware_datetimes_and_the_status_as_the_enum(tmp_path):
    path = tmp_path / "state.json"
    _write_state(path, {"a00001": ON_DISK})
    session = StateStore(path).get_session("a00001")
    assert session.created_at == T0 and session.created_at.tzinfo is not None
    assert session.billing_started_at == T0 + timedelta(minutes=1, microseconds=250000)
    assert session.hard_max_at is None and session.ended_at is None
    assert session.status is SessionStatus.RUNNING and session.live
    assert session.rest == {
        "owner": ON_DISK["owner"],
        "from_a_newer_version": {"nested": [1, 2.0, None]},
    }


def test_a_damaged_record_is_reported_never_lost_nor_rewritten(tmp_path):
    path = tmp_path / "state.json"
    damaged = {"id": "b00002", "status": "zombie", "provider": "vastai", "instance_id": 9}
    before = _write_state(path, {"a00001": ON_DISK, "b00002": damaged, "c00003": None})
    store = StateStore(path)
    records = store.session_records()
    assert set(records.valid) == {"a00001"}  # only what can be trusted comes back typed
    assert records.problems == {
        "b00002": "has an unknown status 'zombie'",
        "c00003": "is null, not a session object",
    }
    assert records.damaged["b00002"].record == damaged  # exactly as read, for the reports
    assert set(store.sessions()) == {"a00001"}
    with pytest.raises(StateError, match="b00002 .* has an unknown status 'zombie'; repair"):
        store.get_session("b00002")
    with pytest.raises(StateError, match="repair or remove that record"):
        store.update_session("b00002", status="ended")
    assert path.read_bytes() == before  # refused, not rewritten
    store.update_session("a00001", warned_at=T0)  # another session's write keeps it whole
    on_disk = json.loads(path.read_text())["sessions"]
    assert on_disk["b00002"] == damaged and on_disk["c00003"] is None
    assert store.new_session_id() not in {"a00001", "b00002", "c00003"}


def test_a_session_is_its_key_even_when_its_record_has_no_id_or_another(tmp_path):
    """Every command names a session by its key in the state file: a record whose own
    ``id`` is missing (or hand-edited) is still found, changed and ended under that key, and
    its ``id`` is never rewritten (the old dict records were keyed the same way)."""
    path = tmp_path / "state.json"
    no_id = {k: v for k, v in ON_DISK.items() if k != "id"}
    other = {**ON_DISK, "id": "zzz"}
    _write_state(path, {"a00001": no_id, "b00002": other})
    store = StateStore(path)
    assert {sid: s.id for sid, s in store.sessions().items()} == {
        "a00001": "a00001",
        "b00002": "b00002",
    }
    assert store.get_session("a00001").id == "a00001"
    back = store.update_session("a00001", status="ending")
    assert back.id == "a00001" and back.status is SessionStatus.ENDING
    store.put_session(store.update_session("b00002", status="ending"))
    on_disk = json.loads(path.read_text())["sessions"]
    assert on_disk["a00001"] == {**no_id, "status": "ending"}  # still no "id" key
    assert on_disk["b00002"] == {**other, "status": "ending"}  # its own id left as it was
    assert set(on_disk) == {"a00001", "b00002"}  # nothing written under another key
