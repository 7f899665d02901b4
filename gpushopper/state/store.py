"""The state file: sessions, offer health and the install id.

One JSON document with a ``schema_version``. Every read-modify-write holds a file lock
shared by all processes (operator, ``watch``, a cron sweep) and ends with an atomic,
fsynced replace. A corrupt file is never reset: commands fail, naming it and a backup.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.model.errors import StateError, StateWriteError
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.redact import redact_tree
from gpushopper.state.atomic import atomic_write_text
from gpushopper.state.fs import (
    LinkRefused,
    file_lock,
    open_nofollow,
    read_bytes_nofollow,
    refuse_link,
)

if TYPE_CHECKING:  # model.session loads when sessions are read (inventory needs none)
    from gpushopper.model.session import Session, SessionRecords

SCHEMA_VERSION = 1
LOCK_TIMEOUT_S = 30.0


def _migrate_0_to_1(data: JSONObject) -> JSONObject:
    """Version 0 (unversioned drafts) kept sessions as a list."""
    sessions = data.get("sessions", {})
    if isinstance(sessions, list):
        sessions = {s["id"]: s for s in sessions if isinstance(s, dict) and "id" in s}
    data["sessions"] = sessions
    data.setdefault("offer_health", {})
    data["schema_version"] = 1
    return data


# from_version -> converter to from_version + 1
MIGRATIONS: dict[int, Callable[[JSONObject], JSONObject]] = {0: _migrate_0_to_1}


def _token(nbytes: int) -> str:
    """Random hex (os.urandom: the same source as ``secrets``, without its import cost)."""
    return os.urandom(nbytes).hex()


def empty_state() -> JSONObject:
    return {
        "schema_version": SCHEMA_VERSION,
        "install_id": _token(4),
        "sessions": {},
        "offer_health": {},
    }


class _Damaged(Exception):
    """The state file parsed, but its content cannot be right."""


class StateStore:
    """Locked, atomically written JSON state."""

    what = "state file"
    schema_version = SCHEMA_VERSION

    def _empty(self) -> JSONObject:
        return empty_state()

    def __init__(self, path: Path, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.lock_timeout = lock_timeout

    # -- reading --------------------------------------------------------------------------
    def _backup_corrupt(self, raw: bytes) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        backup = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        if not backup.exists() and not backup.is_symlink():
            fd = open_nofollow(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(raw)
        return backup

    def _damaged(self, raw: bytes, why: str) -> StateError:
        """The one error for a state file we cannot trust: never reset, always backed up."""
        backup = self._backup_corrupt(raw)
        return StateError(
            f"{self.what} {self.path} is damaged ({why}); it was left untouched and "
            f"copied to {backup}. Repair or move it away, then run the command again"
        )

    def _load(self) -> JSONObject | None:
        try:
            refuse_link(self.path, self.what)
            raw = read_bytes_nofollow(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(
                f"cannot read {self.what} {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise self._damaged(raw, "nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._damaged(raw, f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise self._damaged(raw, "top level is not an object")
        try:
            return self._upgrade(data)
        except _Damaged as exc:
            raise self._damaged(raw, str(exc)) from None

    def _upgrade(self, data: JSONObject) -> JSONObject:
        version = data.get("schema_version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise _Damaged(f"invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema version {version}, newer than this "
                f"gpu-shopper understands ({SCHEMA_VERSION}); upgrade gpu-shopper"
            )
        while version < SCHEMA_VERSION:
            try:
                data = MIGRATIONS[version](data)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise _Damaged(
                    f"cannot upgrade from schema version {version}: {type(exc).__name__}"
                ) from None
            version = data["schema_version"]
        data.setdefault("sessions", {})
        data.setdefault("offer_health", {})
        if not isinstance(data["sessions"], dict):
            # Never read as "no sessions": every instance of ours would look like an orphan.
            # (One bad record inside is reported and skipped by the readers instead.)
            raise _Damaged(
                f"'sessions' is {type(data['sessions']).__name__}, not an object of records"
            )
        if not isinstance(data["offer_health"], dict):
            raise _Damaged("'offer_health' is not an object")
        install = data.get("install_id")
        if install is not None and not (isinstance(install, str) and install):
            raise _Damaged(f"invalid install_id {install!r}")
        return data

    def read(self) -> JSONObject:
        """A snapshot of the state (an empty one, unsaved, if there is no file yet)."""
        data = self._load()
        return data if data is not None else self._empty()

    def exists(self) -> bool:
        """Whether anything is at the state path (a dangling link counts: it is refused)."""
        return os.path.lexists(self.path)

    # -- writing --------------------------------------------------------------------------
    def _write_failed(self, exc: OSError) -> StateWriteError:
        return StateWriteError(
            f"cannot write {self.what} {self.path}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(self.path) else "")
        )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        from filelock import Timeout

        stack = contextlib.ExitStack()
        try:
            stack.enter_context(file_lock(self.lock_path, self.lock_timeout))
        except Timeout:
            raise StateError(
                f"{self.what} {self.path} is locked by another gpu-shopper process "
                f"(waited {self.lock_timeout:.0f}s); try again"
            ) from None
        except LinkRefused as exc:
            raise StateError(str(exc.strerror)) from None
        except OSError as exc:  # read-only home, full disk: typed, so destroys go on
            raise self._write_failed(exc) from None
        with stack:
            yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[JSONObject]:
        """Lock, load, let the caller change the dict, then write it atomically."""
        with self.lock():
            data = self._load()
            if data is None:
                data = self._empty()
            yield data
            data["schema_version"] = self.schema_version
            # Reasons and errors recorded here come from exceptions: never a secret in them.
            clean = redact_tree(data)
            text = json.dumps(clean, indent=2, sort_keys=True)
            try:
                # Under the lock no other writer is mid-write: every leftover temporary is stale.
                atomic_write_text(self.path, text + "\n", stale_after=0)
                self._written(clean)
            except OSError as exc:
                raise self._write_failed(exc) from None

    def _written(self, data: JSONObject) -> None:
        """After each write, still under the lock: a subclass may keep derived files."""

    def install_id(self) -> str:
        """The random id of this installation, made (and saved) on first use only.

        Never a new one while a state file exists: instances labelled with the old id
        would look foreign and be left running. A state without an id takes the one its
        sessions carry.
        """
        data = self.read()
        if data.get("install_id") and self.exists():
            return str(data["install_id"])
        with self.transaction() as state:
            if not state.get("install_id"):
                known = {
                    str(r["install_id"])
                    for r in state["sessions"].values()
                    if isinstance(r.get("install_id"), str) and r["install_id"]
                }
                if len(known) > 1:
                    raise StateError(
                        f"state file {self.path} has no install_id and its sessions carry "
                        f"{len(known)} different ones; set install_id by hand"
                    )
                state["install_id"] = known.pop() if known else _token(4)
            return str(state["install_id"])

    # -- sessions -------------------------------------------------------------------------
    # Sessions cross this boundary typed (model.session.Session). A record that cannot be
    # trusted is never typed, never rewritten and never dropped: it comes back apart, as a
    # Damaged entry (session_records), and get/update refuse it with one clear error.
    def session_records(self) -> SessionRecords:
        """Every session of one read: the valid ones typed, the damaged ones apart."""
        from gpushopper.model.session import SessionRecords

        return SessionRecords.split(self.read()["sessions"])

    def sessions(self) -> dict[str, Session]:
        """The sessions that can be trusted (see session_records for the others)."""
        return self.session_records().valid

    def damaged_error(self, session_id: str, why: str) -> StateError:
        """The one error for acting on a damaged record (it is reported, never touched)."""
        return StateError(
            f"session {session_id} in {self.path} {why}; repair or remove that record"
        )

    def _typed(self, session_id: str, record: JSONValue) -> Session:
        from gpushopper.model.session import Session, record_problem

        why = record_problem(record)
        if why is not None:
            raise self.damaged_error(session_id, why)
        return Session.from_record(record, session_id)

    def get_session(self, session_id: str) -> Session | None:
        """The session, None when there is none; StateError when its record is damaged."""
        record = self.read()["sessions"].get(session_id)
        return None if record is None else self._typed(session_id, record)

    def put_session(self, session: Session) -> None:
        """Write the whole session (keys it does not model kept, in ``rest``)."""
        with self.transaction() as state:
            state["sessions"][session.id] = session.to_record()

    def update_session(self, session_id: str, **changes: object) -> Session:
        """Change some fields of one session in one locked read-modify-write; every other
        byte of its record stays as it was. Names the model lacks are kept as keys."""
        return self.change_session(session_id, lambda _session: changes)

    def change_session(
        self, session_id: str, decide: Callable[[Session], Mapping[str, object]]
    ) -> Session:
        """A read-modify-write whose changes depend on the session: ``decide`` is given the
        session as it stands under the lock and returns the changes; when it raises,
        nothing is written. (Deciding on an earlier read would let two writers each
        overwrite the other's change, e.g. two ``sessions extend --override``.)"""
        with self.transaction() as state:
            record = state["sessions"].get(session_id)
            if record is None:
                raise StateError(f"no session {session_id!r} in {self.path}")
            session = self._typed(session_id, record)
            session.set(**decide(session))
            state["sessions"][session_id] = written = session.to_record()
            return type(session).from_record(written, session_id)

    def new_session_id(self) -> str:
        existing = self.read()["sessions"]  # damaged records' ids too
        while True:
            candidate = _token(3)
            if candidate not in existing:
                return candidate
