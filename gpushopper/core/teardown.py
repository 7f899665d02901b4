"""The one home of every destroy: confirm it, check whose it is, record it after.

Every path that destroys (a failed boot, an interrupted ``provision``, ``sessions done``,
``watch``, ``cleanup-orphans``) goes through :func:`destroy_and_confirm`:

* **Confirmed.** A destroy counts only once the provider answers that the instance is gone
  (``get_instance`` returns None: a 404, or Vast.ai's ``{"instances": null}``). An instance
  that lingers gets the destroy again half-way; one still there at the end is an error.
* **Ours, checked.** With a ``label``, the instance is fetched first and destroyed only when
  it carries that label. An orphan, known only from a listing, must carry it exactly; the
  instance a session recorded (its id came from our own create) may also carry none.
* **Never behind the disk.** The state is written after the destroy. If it cannot be
  written (disk full, read-only home) the destroy has still happened: the outcome goes to
  the log and the journal, and a :class:`StateWriteError` says so (the command exits 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gpushopper.core.sessions import close_record, record_problem, refresh_ssh_config
from gpushopper.model.errors import (
    GpuShopperError,
    NoSuchItem,
    NotOurs,
    ProviderError,
    StateError,
    StateWriteError,
    Unavailable,
)
from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.models import Instance
from gpushopper.model.session import DONE

if TYPE_CHECKING:
    from gpushopper.core.runtime import Runtime
    from gpushopper.providers.base import Provider
    from gpushopper.state.store import StateStore


DESTROY_CONFIRM_S = 120.0  # how long a destroy may take to be confirmed
LABEL_WAIT_S = 30.0  # how long a new instance may take to show up in the provider's list


def get_session_or_fail(store: StateStore, session_id: str) -> JSONObject:
    record = store.get_session(session_id)
    if record is None:
        raise NoSuchItem(f"no session {session_id!r} (see 'gpu-shopper sessions list --all')")
    why = record_problem(record)
    if why is not None:
        raise StateError(
            f"session {session_id} in {getattr(store, 'path', 'the state file')} {why}; "
            "repair or remove that record"
        )
    return record


def live_session_or_fail(
    store: StateStore, session_id: str, statuses: tuple[str, ...], needs: str
) -> JSONObject:
    """The session, when its status is one of ``statuses``. An ended (or failed, or still
    creating) session is bad input for a command that needs a live one: exit 2, the same
    code as an unknown session, for every command."""
    record = get_session_or_fail(store, session_id)
    status = record.get("status")
    if status not in statuses:
        raise NoSuchItem(
            f"session {session_id} is {status}; {needs} (see 'gpu-shopper sessions list')"
        )
    return record


def _id_order(instance: Instance) -> tuple[int, str]:
    text = str(instance.instance_id)
    return (int(text), text) if text.isdigit() else (1 << 62, text)


def find_by_label(provider: Provider, label: str | None) -> Instance | None:
    """The instance carrying ``label`` in the provider's listing (the lowest id of several)."""
    if not label:
        return None
    found = [i for i in provider.list_instances() if i.label == label]
    return min(found, key=_id_order) if found else None


def wait_for_label(
    provider: Provider,
    label: str | None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    mono: Callable[[], float] = time.monotonic,
    timeout_s: float = LABEL_WAIT_S,
    log: Callable[[str], None] = lambda message: None,
) -> Instance | None:
    """Look ``label`` up until the listing shows it or ``timeout_s`` passes: a create that
    errored (or was interrupted) may still have made an instance, and a new instance can
    take a while to appear in the list. Listing errors are logged and retried."""
    if not label:
        return None
    deadline = mono() + timeout_s
    delay = 1.0
    while True:
        try:
            found = find_by_label(provider, label)
        except GpuShopperError as exc:
            log(f"Looking the instance up by label failed: {exc}")
            found = None
        if found is not None:
            return found
        remaining = deadline - mono()
        if remaining <= 0:
            return None
        sleep(min(delay, remaining))
        delay = min(delay * 2, 8.0)


def check_owned(instance: Instance, label: str, *, allow_unlabelled: bool = False) -> None:
    """Raise NotOurs unless ``instance`` carries ``label`` (or none, when allowed)."""
    if instance.label == label or (allow_unlabelled and not instance.label):
        return
    raise NotOurs(
        instance.provider,
        f"instance {instance.instance_id} carries the label {instance.label!r}, not {label!r}; "
        "it is not ours and was not destroyed",
    )


T = TypeVar("T")


def _retry_unavailable(
    call: Callable[[], T], sleep: Callable[[float], None], attempts: int = 3
) -> T:
    for attempt in range(attempts):
        try:
            return call()
        except Unavailable:
            if attempt == attempts - 1:
                raise
            sleep(1.0 + attempt)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def destroy_and_confirm(
    provider: Provider,
    instance_id: str,
    *,
    label: str | None = None,
    allow_unlabelled: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    mono: Callable[[], float] = time.monotonic,
    timeout_s: float = DESTROY_CONFIRM_S,
) -> bool:
    """Destroy ``instance_id`` and return only once the provider confirms it is gone.

    With ``label``, the instance is fetched first and must carry it (see
    :func:`check_owned`). Returns False when it was gone already, True when this call
    destroyed it. Raises NotOurs, or ProviderError when it is still there at the end.
    """
    if label is not None:
        current = _retry_unavailable(lambda: provider.get_instance(instance_id), sleep)
        if current is None:
            return False
        check_owned(current, label, allow_unlabelled=allow_unlabelled)
    _retry_unavailable(lambda: provider.destroy_instance(instance_id), sleep)
    deadline = mono() + timeout_s
    delay = 0.5
    reissued = False
    while True:
        try:
            instance = provider.get_instance(instance_id)
        except Unavailable:
            instance = Instance(provider.NAME, instance_id, None, "unknown", raw_status="unknown")
        if instance is None:
            return True
        remaining = deadline - mono()
        if remaining <= 0:
            raise ProviderError(
                provider.NAME,
                f"instance {instance_id} still exists after destroy ({instance.raw_status}); "
                "run 'gpu-shopper cleanup-orphans --yes'",
            )
        if not reissued and remaining < timeout_s / 2:
            try:
                provider.destroy_instance(instance_id)
            except Unavailable:
                pass  # the next poll says whether it is gone; the end of the wait decides
            reissued = True
        sleep(min(delay, max(remaining, 0.05)))
        delay = min(delay * 2, 10.0)


def note_in_journal(provider: Provider, op: str, **fields: object) -> None:
    """Record an outcome in the audit journal, when the provider is journaled."""
    note = getattr(provider, "note", None)
    if callable(note):
        try:
            note(op, **fields)
        except Exception:  # noqa: BLE001 - the journal is an aid, never an obstacle
            pass


def end_session(
    store: StateStore,
    provider_factory: Callable[[str], Provider],
    session_id: str,
    reason: str,
    *,
    runtime: Runtime,
    ssh_config_path: Path | None = None,
) -> JSONObject:
    """Destroy the session's instance and mark it ended only once the provider confirms.

    ``runtime`` gives the clocks (the record's times, the confirm wait) and the log line
    that says what was destroyed.

    On a failed destroy the session stays ``ending`` (so watch and cleanup-orphans retry)
    and the error is raised. The destroy never waits on the state file: when it cannot be
    written, the destroy still happens and StateWriteError is raised after it.
    Already-ended sessions are returned unchanged.
    """
    record = get_session_or_fail(store, session_id)
    if record.get("status") in DONE and record.get("status") != "failed":
        return record
    provider = provider_factory(record["provider"])
    was_failed = record.get("status") == "failed"
    label = record.get("label")
    write_error: StateError | None = None
    sleep, mono, log = runtime.sleep, runtime.mono, runtime.log

    def write(**changes: object) -> None:
        nonlocal write_error
        try:
            store.update_session(session_id, **changes)
        except StateWriteError as exc:
            write_error = exc

    # A failed session keeps the reason it failed; an ended one gets this one.
    write(status="ending", **({} if was_failed else {"end_reason": reason}))
    instance_id = record.get("instance_id")
    destroyed = False
    destroy_started = mono()
    try:
        if not instance_id:
            found = find_by_label(provider, label)
            instance_id = found.instance_id if found else None
            if instance_id:
                write(instance_id=instance_id)
        if instance_id:
            try:
                destroyed = destroy_and_confirm(
                    provider,
                    str(instance_id),
                    label=label,
                    allow_unlabelled=True,
                    sleep=sleep,
                    mono=mono,
                )
            except NotOurs as exc:
                # The id on record is someone else's: never touch it; ours carries the label.
                log(f"Session {session_id}: {exc}")
                found = find_by_label(provider, label)
                instance_id = found.instance_id if found else None
                write(instance_id=instance_id, error=str(exc))
                if instance_id:
                    destroyed = destroy_and_confirm(
                        provider, str(instance_id), label=label, sleep=sleep, mono=mono
                    )
    except GpuShopperError as exc:
        write(error=f"destroy failed: {exc}")
        raise
    result = dict(record)
    try:
        with store.transaction() as state:
            current = state["sessions"][session_id]
            close_record(
                current,
                "failed" if was_failed else "ended",
                reason,
                runtime.clock(),
                keep_reason=was_failed,
            )
            current.pop("error", None)
            if destroyed:  # destroy to gone, as the provider confirmed it (core/stats.py)
                timings = current.get("timings")
                timings = dict(timings) if isinstance(timings, dict) else {}
                timings["destroy_to_gone_s"] = round(mono() - destroy_started, 3)
                current["timings"] = timings
            result = dict(current)
    except StateWriteError as exc:
        write_error = exc
    what = (
        f"{record['provider']} instance {instance_id} destroyed (the provider confirms it is gone)"
        if destroyed
        else (
            f"{record['provider']} instance {instance_id} is gone"
            if instance_id
            else "no instance to destroy"
        )
    )
    if write_error is not None:
        note_in_journal(
            provider,
            "state_write_failed",
            session=session_id,
            instance_id=instance_id,
            wanted="ended",
            error=str(write_error),
        )
        raise StateWriteError(
            f"session {session_id}: {what}, but {write_error}; the state still shows it "
            "live, and watch or cleanup-orphans will close it once the file can be written"
        )
    if instance_id:
        log(f"Session {session_id}: {what}")
    refresh_ssh_config(ssh_config_path, store)
    return result
