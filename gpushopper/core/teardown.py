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

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gpushopper.core.sessions import close_record, refresh_ssh_config
from gpushopper.model.errors import (
    GpuShopperError,
    NoSuchItem,
    NotOurs,
    ProviderError,
    StateError,
    StateWriteError,
    Unavailable,
)
from gpushopper.model.models import Instance
from gpushopper.model.session import Session, SessionStatus, record_problem

if TYPE_CHECKING:
    from gpushopper.core.runtime import Runtime
    from gpushopper.providers.base import Provider
    from gpushopper.state.store import StateStore


DESTROY_CONFIRM_S = 120.0  # how long a destroy may take to be confirmed
LABEL_WAIT_S = 30.0  # how long a new instance may take to show up in the provider's list


def get_session_or_fail(store: StateStore, session_id: str) -> Session:
    """The session; NoSuchItem when there is none, StateError (from the store, naming
    what is wrong) when its record is damaged: never acted on, never rewritten."""
    session = store.get_session(session_id)
    if session is None:
        raise NoSuchItem(f"no session {session_id!r} (see 'gpu-shopper sessions list --all')")
    return session


def live_session_or_fail(
    store: StateStore, session_id: str, statuses: tuple[str, ...], needs: str
) -> Session:
    """The session, when its status is one of ``statuses``. An ended (or failed, or still
    creating) session is bad input for a command that needs a live one: exit 2, the same
    code as an unknown session, for every command."""
    session = get_session_or_fail(store, session_id)
    if session.status not in statuses:
        raise NoSuchItem(
            f"session {session_id} is {session.status}; {needs} (see 'gpu-shopper sessions list')"
        )
    return session


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
    runtime: Runtime,
    timeout_s: float = LABEL_WAIT_S,
) -> Instance | None:
    """Look ``label`` up until the listing shows it or ``timeout_s`` passes: a create that
    errored (or was interrupted) may still have made an instance, and a new instance can
    take a while to appear in the list. Listing errors go to ``runtime.log`` and are
    retried; ``runtime``'s clocks time the wait. None only when the last listing answered
    without the label: when the last look failed, its error is raised (a provider glitch
    is never read as "no instance", which would close a session whose instance runs)."""
    if not label:
        return None
    sleep, mono, log = runtime.sleep, runtime.mono, runtime.log
    deadline = mono() + timeout_s
    delay = 1.0
    while True:
        failure: GpuShopperError | None = None
        try:
            found = find_by_label(provider, label)
        except GpuShopperError as exc:
            log(f"Looking the instance up by label failed: {exc}")
            found, failure = None, exc
        if found is not None:
            return found
        remaining = deadline - mono()
        if remaining <= 0:
            if failure is not None:
                raise failure
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
    runtime: Runtime,
    label: str | None = None,
    allow_unlabelled: bool = False,
    timeout_s: float = DESTROY_CONFIRM_S,
) -> bool:
    """Destroy ``instance_id`` and return only once the provider confirms it is gone.

    With ``label``, the instance is fetched first and must carry it (see
    :func:`check_owned`). Returns False when it was gone already, True when this call
    destroyed it. Raises NotOurs, or ProviderError when it is still there at the end.
    ``runtime``'s clocks time the confirmation (its log says nothing here).
    """
    sleep, mono = runtime.sleep, runtime.mono
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
) -> Session:
    """Destroy the session's instance and mark it ended only once the provider confirms.

    ``runtime`` gives the clocks (the record's times, the confirm wait) and the log line
    that says what was destroyed.

    On a failed destroy the session stays ``ending`` (so watch and cleanup-orphans retry)
    and the error is raised. The destroy never waits on the state file: when it cannot be
    written, the destroy still happens and StateWriteError is raised after it.
    Already-ended sessions are returned unchanged.
    """
    session = get_session_or_fail(store, session_id)
    if session.done and session.status is not SessionStatus.FAILED:
        return session
    ending = _Ending(store, provider_factory(session.provider), session, reason, runtime)
    ending.mark_ending()
    ending.destroy()
    result = ending.close()
    ending.raise_if_unrecorded()
    ending.say_what_happened()
    refresh_ssh_config(ssh_config_path, store)
    return result


class _Ending:
    """The steps of :func:`end_session`, over what they share: the session as first read,
    the instance found, whether this call destroyed it, and a state write that failed."""

    def __init__(
        self,
        store: StateStore,
        provider: Provider,
        session: Session,
        reason: str,
        runtime: Runtime,
    ) -> None:
        self.store = store
        self.provider = provider
        self.session = session
        self.reason = reason
        self.runtime = runtime
        self.was_failed = session.status is SessionStatus.FAILED
        self.label = session.label
        self.instance_id: str | int | None = session.instance_id
        self.destroyed = False
        self.destroy_started = 0.0
        self.write_error: StateError | None = None

    def write(self, **changes: object) -> None:
        """Record a step; a failed write is kept for the end, never stops the destroy."""
        try:
            self.store.update_session(self.session.id, **changes)
        except StateWriteError as exc:
            self.write_error = exc

    def mark_ending(self) -> None:
        """``ending`` first, so a crash from here on is retried by watch and cleanup-orphans.
        A failed session keeps the reason it failed; an ended one gets this one."""
        self.write(status="ending", **({} if self.was_failed else {"end_reason": self.reason}))

    def destroy(self) -> None:
        """Destroy the instance, confirmed gone; a failed destroy is recorded and raised."""
        self.destroy_started = self.runtime.mono()
        try:
            if not self.instance_id:
                self._find_by_label()
                if self.instance_id:
                    self.write(instance_id=self.instance_id)
            if self.instance_id:
                try:
                    self.destroyed = self._destroy(allow_unlabelled=True)
                except NotOurs as exc:
                    self._destroy_ours_instead(exc)
        except GpuShopperError as exc:
            self.write(error=f"destroy failed: {exc}")
            raise

    def _find_by_label(self) -> None:
        found = find_by_label(self.provider, self.label)
        self.instance_id = found.instance_id if found else None

    def _destroy(self, *, allow_unlabelled: bool = False) -> bool:
        return destroy_and_confirm(
            self.provider,
            str(self.instance_id),
            runtime=self.runtime,
            label=self.label,
            allow_unlabelled=allow_unlabelled,
        )

    def _destroy_ours_instead(self, exc: NotOurs) -> None:
        """The id on record is someone else's: never touch it; ours carries the label."""
        self.runtime.log(f"Session {self.session.id}: {exc}")
        self._find_by_label()
        self.write(instance_id=self.instance_id, error=str(exc))
        if self.instance_id:
            self.destroyed = self._destroy()

    def close(self) -> Session:
        """Ended (or failed, keeping its reason), with its cost and destroy time, in one
        locked write; a failed write is kept for :meth:`raise_if_unrecorded`."""
        result = self.session
        damaged: StateError | None = None
        try:
            with self.store.transaction() as state:
                raw = state["sessions"].get(self.session.id)
                why = record_problem(raw)
                if why is not None:  # damaged (or removed) since it was read: left as it is
                    damaged = self.store.damaged_error(self.session.id, why)
                    raise damaged
                current = Session.from_record(raw, self.session.id)
                close_record(
                    current,
                    SessionStatus.FAILED if self.was_failed else SessionStatus.ENDED,
                    self.reason,
                    self.runtime.clock(),
                    keep_reason=self.was_failed,
                )
                current.rest.pop("error", None)
                if self.destroyed:  # destroy to gone, as the provider confirmed it (core/stats.py)
                    current.timings = {
                        **current.timings,
                        "destroy_to_gone_s": round(self.runtime.mono() - self.destroy_started, 3),
                    }
                written = state["sessions"][self.session.id] = current.to_record()
                result = Session.from_record(written, self.session.id)
        except StateError as exc:
            if not isinstance(exc, StateWriteError) and exc is not damaged:
                raise
            self.write_error = exc  # the destroy is said all the same (raise_if_unrecorded)
        return result

    def what(self) -> str:
        provider, instance_id = self.session.provider, self.instance_id
        if self.destroyed:
            return f"{provider} instance {instance_id} destroyed (the provider confirms it is gone)"
        if instance_id:
            return f"{provider} instance {instance_id} is gone"
        return "no instance to destroy"

    def raise_if_unrecorded(self) -> None:
        """The destroy happened but the state could not say so: the journal and the error
        say it instead (watch or cleanup-orphans close the record once the disk allows)."""
        if self.write_error is None:
            return
        note_in_journal(
            self.provider,
            "state_write_failed",
            session=self.session.id,
            instance_id=self.instance_id,
            wanted="ended",
            error=str(self.write_error),
        )
        raise StateWriteError(
            f"session {self.session.id}: {self.what()}, but {self.write_error}; the state "
            "still shows it live, and watch or cleanup-orphans will close it once the file "
            "can be written"
        )

    def say_what_happened(self) -> None:
        if self.instance_id:
            self.runtime.log(f"Session {self.session.id}: {self.what()}")
