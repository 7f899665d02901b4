"""The state file: sessions, offer health and the install id.

One JSON document with a ``schema_version``. Every read-modify-write holds a file lock
shared by all processes (operator, ``watch``, a cron sweep) and ends with an atomic,
fsynced replace. A corrupt file is never reset: commands fail, naming it and a backup.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpushopper.core.errors import StateError
from gpushopper.state.atomic import atomic_write_text

SCHEMA_VERSION = 1
LOCK_TIMEOUT_S = 30.0


def _migrate_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 (unversioned drafts) kept sessions as a list."""
    sessions = data.get("sessions", {})
    if isinstance(sessions, list):
        sessions = {s["id"]: s for s in sessions if isinstance(s, dict) and "id" in s}
    data["sessions"] = sessions
    data.setdefault("offer_health", {})
    data["schema_version"] = 1
    return data


# from_version -> converter to from_version + 1
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _migrate_0_to_1}


def _token(nbytes: int) -> str:
    """Random hex (os.urandom: the same source as ``secrets``, without its import cost)."""
    return os.urandom(nbytes).hex()


def empty_state() -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "install_id": _token(4),
        "sessions": {},
        "offer_health": {},
    }


class StateStore:
    """Locked, atomically written JSON state."""

    def __init__(self, path: Path, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.lock_timeout = lock_timeout

    # -- reading --------------------------------------------------------------------------
    def _backup_corrupt(self, raw: bytes) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        backup = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        if not backup.exists():
            backup.write_bytes(raw)
            os.chmod(backup, 0o600)
        return backup

    def _load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read state file {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (ValueError, UnicodeDecodeError) as exc:
            backup = self._backup_corrupt(raw)
            raise StateError(
                f"state file {self.path} is corrupt ({exc}); it was left untouched and "
                f"copied to {backup}. Repair or move it away, then run the command again"
            ) from None
        return self._upgrade(data)

    def _upgrade(self, data: dict[str, Any]) -> dict[str, Any]:
        version = data.get("schema_version", 0)
        if not isinstance(version, int):
            raise StateError(f"state file {self.path} has an invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema version {version}, newer than this "
                f"gpu-shopper understands ({SCHEMA_VERSION}); upgrade gpu-shopper"
            )
        while version < SCHEMA_VERSION:
            data = MIGRATIONS[version](data)
            version = data["schema_version"]
        data.setdefault("sessions", {})
        data.setdefault("offer_health", {})
        return data

    def read(self) -> dict[str, Any]:
        """A snapshot of the state (an empty one, unsaved, if there is no file yet)."""
        data = self._load()
        return data if data is not None else empty_state()

    def exists(self) -> bool:
        return self.path.exists()

    # -- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=self.lock_timeout)
        try:
            with lock:
                yield
        except Timeout:
            raise StateError(
                f"state file {self.path} is locked by another gpu-shopper process "
                f"(waited {self.lock_timeout:.0f}s); try again"
            ) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Lock, load, let the caller change the dict, then write it atomically."""
        with self.lock():
            data = self._load()
            if data is None:
                data = empty_state()
            yield data
            data["schema_version"] = SCHEMA_VERSION
            atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def install_id(self) -> str:
        """The random id of this installation, made (and saved) on first use."""
        data = self.read()
        if self.exists() and data.get("install_id"):
            return str(data["install_id"])
        with self.transaction() as state:
            state.setdefault("install_id", _token(4))
            return str(state["install_id"])

    # -- sessions -------------------------------------------------------------------------
    def sessions(self) -> dict[str, dict[str, Any]]:
        return dict(self.read()["sessions"])

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        return self.read()["sessions"].get(session_id)

    def put_session(self, record: dict[str, Any]) -> None:
        with self.transaction() as state:
            state["sessions"][record["id"]] = record

    def update_session(self, session_id: str, **changes: Any) -> dict[str, Any]:
        with self.transaction() as state:
            record = state["sessions"].get(session_id)
            if record is None:
                raise StateError(f"no session {session_id!r} in {self.path}")
            record.update(changes)
            return dict(record)

    def new_session_id(self) -> str:
        existing = self.read()["sessions"]
        while True:
            candidate = _token(3)
            if candidate not in existing:
                return candidate
