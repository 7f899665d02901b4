"""Ending a session: destroy its instance, confirm it is gone, finalise the cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from gpushopper.core.errors import GpuShopperError, UsageError
from gpushopper.core.provisioner import destroy_and_confirm, find_by_label
from gpushopper.core.sessions import DONE, close_record, refresh_ssh_config


def get_session_or_fail(store: Any, session_id: str) -> dict[str, Any]:
    record = store.get_session(session_id)
    if record is None:
        raise UsageError(f"no session {session_id!r} (see 'gpu-shopper sessions list --all')")
    return record


def end_session(
    store: Any,
    provider_factory: Callable[[str], Any],
    session_id: str,
    reason: str,
    *,
    clock: Callable[[], datetime],
    ssh_config_path: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    mono: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Destroy the session's instance and mark it ended only once the provider confirms.

    On failure the session stays ``ending`` (so watch and cleanup-orphans retry) and the
    error is raised. Already-ended sessions are returned unchanged.
    """
    record = get_session_or_fail(store, session_id)
    if record.get("status") in DONE and record.get("status") != "failed":
        return record
    provider = provider_factory(record["provider"])
    was_failed = record.get("status") == "failed"
    # A failed session keeps the reason it failed; an ended one gets this one.
    store.update_session(
        session_id, status="ending", **({} if was_failed else {"end_reason": reason})
    )
    try:
        instance_id = record.get("instance_id")
        if not instance_id:
            found = find_by_label(provider, record.get("label") or "")
            instance_id = found.instance_id if found else None
            if instance_id:
                store.update_session(session_id, instance_id=instance_id)
        if instance_id:
            log(f"Destroying {record['provider']} instance {instance_id} (session {session_id})")
            destroy_and_confirm(provider, str(instance_id), sleep=sleep, mono=mono)
    except GpuShopperError as exc:
        store.update_session(session_id, error=f"destroy failed: {exc}")
        raise
    with store.transaction() as state:
        current = state["sessions"][session_id]
        close_record(
            current, "failed" if was_failed else "ended", reason, clock(), keep_reason=was_failed
        )
        current.pop("error", None)
        result = dict(current)
    refresh_ssh_config(ssh_config_path, store)
    return result
