"""Carry out lifecycle actions: the I/O half of ``watch`` and ``cleanup-orphans``.

Blind is never clear: a provider that cannot be listed (or answers a listing that does not
hold together), a provider with live sessions but no credentials, and a session record
that cannot be enforced all make the pass not ``ok``. Nothing is concluded from what a
failed listing does not show, and a session is closed as gone only once the provider
answers that its instance is gone (not merely absent from a list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.core.lifecycle import (
    DESTROY_ORPHAN,
    DESTROY_SESSION,
    MARK_ENDED,
    REPORT_BAD_RECORD,
    REPORT_FOREIGN,
    REPORT_MALFORMED,
    WARN,
    Action,
    Policy,
    plan,
)
from gpushopper.core.owner import GONE, owner_state
from gpushopper.core.sessions import close_record, refresh_ssh_config
from gpushopper.core.teardown import destroy_and_confirm, end_session
from gpushopper.model.errors import (
    GpuShopperError,
    MissingCredentials,
    StateWriteError,
    Unavailable,
)
from gpushopper.model.models import Instance
from gpushopper.model.session import Session, SessionRecords, SessionStatus

if TYPE_CHECKING:
    from gpushopper.core.runtime import Runtime
    from gpushopper.providers.base import Provider, SettingsReader
    from gpushopper.state.store import StateStore


REPORTS = (REPORT_FOREIGN, REPORT_MALFORMED, REPORT_BAD_RECORD)
FAILED = ("failed", "unrecorded")  # outcomes that make a pass not ok

DESTROY_WORKERS = 8


@dataclass
class Outcome:
    action: Action
    # destroyed | marked_ended | warned | left | failed | unrecorded (destroyed and
    # confirmed gone, but the state file could not be written)
    result: str
    error: str | None = None


@dataclass
class TickReport:
    outcomes: list[Outcome] = field(default_factory=list)
    provider_errors: dict[str, str] = field(default_factory=dict)
    providers_listed: list[str] = field(default_factory=list)
    instances: dict[str, list[Instance]] = field(default_factory=dict)
    install_id: str | None = None
    bad_records: dict[str, str] = field(default_factory=dict)  # session id -> why skipped
    listed_at: dict[str, float] = field(default_factory=dict)  # provider -> epoch of its list
    ok: bool = True


def consistent(name: str, listed: list[Instance]) -> list[Instance]:
    """A listing, each real id once; one that names an id twice with different labels
    does not hold together (a foreign instance once came back under our label) and is
    not believed."""
    by_id: dict[str, Instance] = {}
    out: list[Instance] = []
    for inst in listed:
        first = by_id.get(inst.instance_id)
        if first is None:
            by_id[inst.instance_id] = inst
            out.append(inst)
        elif first.label != inst.label:
            raise Unavailable(
                name,
                f"the instance list names instance {inst.instance_id} twice, labelled "
                f"{first.label!r} and {inst.label!r}; not believed",
            )
    return out


class Enforcer:
    def __init__(
        self,
        *,
        store: StateStore,
        provider_factory: Callable[[str], Provider],
        providers: list[str],
        runtime: Runtime,
        ssh_config_path: Path | None = None,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    ) -> None:
        self.store = store
        self.provider_factory = provider_factory
        self.providers = providers
        self.runtime = runtime
        self.ssh_config_path = ssh_config_path
        self.on_outcome = on_outcome
        self._clients: dict[str, Provider] = {}

    def client(self, name: str) -> Provider:
        if name not in self._clients:
            self._clients[name] = self.provider_factory(name)
        return self._clients[name]

    def configured(self) -> list[str]:
        """The providers to guard: those with credentials."""
        names = []
        for name in self.providers:
            try:
                self.client(name)
            except MissingCredentials:
                continue
            names.append(name)
        return names

    def gather(self, report: TickReport) -> dict[str, list[Instance]]:
        """Each configured provider's listing; a failed or inconsistent one is left out
        (so nothing is concluded from it) and recorded as an error."""
        instances: dict[str, list[Instance]] = {}
        for name in self.configured():
            try:
                instances[name] = consistent(name, self.client(name).list_instances())
                report.providers_listed.append(name)
                report.listed_at[name] = self.runtime.clock().timestamp()
            except GpuShopperError as exc:
                report.provider_errors[name] = str(exc)
                report.ok = False
            except Exception as exc:  # an adapter's bug must not blind the other providers
                report.provider_errors[name] = f"{type(exc).__name__}: {exc}"
                report.ok = False
        return instances

    def evaluate(self, policy: Policy, report: TickReport) -> list[Action]:
        """Plan this pass. The install id comes from the same single read of the state
        (None without a state file: then every gpu-shopper label counts as foreign)."""
        # List first, then read the state: a session is always saved before its create
        # call, so no instance seen here can belong to a session missing from the state.
        instances = self.gather(report)
        report.instances = instances
        state = self.store.read() if self.store.exists() else {"sessions": {}}
        report.install_id = state.get("install_id")
        policy = replace(policy, install_id=report.install_id)
        sessions = SessionRecords.split(state["sessions"])
        report.bad_records = sessions.problems
        if report.bad_records:
            report.ok = False
        # Live sessions at a provider this pass could not even ask: blind, not clear.
        configured = set(self.configured())
        unseen: dict[str, int] = {}
        for session in sessions.valid.values():
            if session.live and session.provider not in configured:
                unseen[session.provider] = unseen.get(session.provider, 0) + 1
        for name, count in sorted(unseen.items()):
            report.provider_errors.setdefault(
                name, f"no credentials, so {count} live session(s) there cannot be checked"
            )
            report.ok = False
        gone_owners = {
            session_id
            for session_id, session in sessions.valid.items()
            if session.booting and owner_state(session.rest.get("owner")) == GONE
        }
        return plan(sessions, instances, self.runtime.clock(), policy, gone_owners)

    def execute(self, action: Action, *, destroy: bool = True) -> Outcome:
        try:
            if action.kind == WARN:
                if action.session_id:
                    self.store.update_session(action.session_id, warned_at=self.runtime.clock())
                outcome = Outcome(action, "warned")
            elif action.kind in REPORTS or not destroy:
                outcome = Outcome(action, "left")
            elif action.kind == MARK_ENDED:
                if self._confirmed_gone(action):
                    if self._mark_ended(action):
                        outcome = Outcome(action, "marked_ended")
                    else:
                        outcome = Outcome(
                            action, "left", "the session changed since it was read; left to it"
                        )
                else:
                    outcome = Outcome(
                        action,
                        "failed",
                        f"the list left instance {action.instance_id} out, but the provider "
                        "still has it: a partial listing; nothing closed",
                    )
            elif action.kind == DESTROY_SESSION:
                assert action.session_id
                end_session(
                    self.store,
                    self.client,
                    action.session_id,
                    action.reason,
                    runtime=self.runtime,
                    ssh_config_path=self.ssh_config_path,
                )
                outcome = Outcome(action, "destroyed")
            elif action.kind == DESTROY_ORPHAN:
                assert action.instance_id and action.label
                # Known only from a listing: destroyed only if it carries that label now.
                destroy_and_confirm(
                    self.client(action.provider),
                    action.instance_id,
                    label=action.label,
                    runtime=self.runtime,
                )
                outcome = Outcome(action, "destroyed")
            else:
                outcome = Outcome(action, "left")
        except StateWriteError as exc:
            # end_session raises it only after the destroy: say what did happen.
            destroyed = action.kind == DESTROY_SESSION
            outcome = Outcome(action, "unrecorded" if destroyed else "failed", str(exc))
        except GpuShopperError as exc:
            outcome = Outcome(action, "failed", str(exc))
        except Exception as exc:  # a bug in one action must not stop the others in a pass
            outcome = Outcome(action, "failed", f"{type(exc).__name__}: {exc}")
        self.on_outcome(outcome)
        return outcome

    def _confirmed_gone(self, action: Action) -> bool:
        """Absent from a list is not gone: the provider must answer for the instance."""
        if not action.instance_id:
            return True  # never created as far as we know; the policy waited out the create
        return self.client(action.provider).get_instance(action.instance_id) is None

    def _mark_ended(self, action: Action) -> bool:
        """Close the session the action was planned on, re-read under the lock: one that
        ended meanwhile, or that now records another instance (its boot went on), is left
        as it is (False); the provider said only that the planned instance is gone."""
        assert action.session_id
        with self.store.transaction() as state:
            record = state["sessions"].get(action.session_id)
            if record is None:
                return False
            session = Session.from_record(record)
            if not session.live or session.instance != action.instance_id:
                return False
            close_record(
                session,
                SessionStatus.FAILED if session.booting else SessionStatus.ENDED,
                "instance gone at the provider",
                self.runtime.clock(),
                keep_reason=True,
            )
            state["sessions"][action.session_id] = session.to_record()
        refresh_ssh_config(self.ssh_config_path, self.store)
        return True

    def tick(self, policy: Policy, *, destroy: bool = True) -> TickReport:
        report = TickReport()
        try:
            actions = self.evaluate(policy, report)
        except GpuShopperError as exc:
            report.provider_errors["state"] = str(exc)
            report.ok = False
            return report
        for outcome in self.execute_all(actions, destroy=destroy):
            report.outcomes.append(outcome)
            if outcome.result in FAILED:
                report.ok = False
        return report

    def execute_all(self, actions: list[Action], *, destroy: bool = True) -> list[Outcome]:
        """Destroys run side by side (one slow confirmation must not hold back another
        deadline); the rest run in order. Outcomes come back in the actions' order."""
        slow = {DESTROY_SESSION, DESTROY_ORPHAN}
        outcomes: list[Outcome | None] = [None] * len(actions)
        parallel = [i for i, a in enumerate(actions) if destroy and a.kind in slow]
        if len(parallel) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(DESTROY_WORKERS, len(parallel))) as pool:
                done = pool.map(lambda i: self.execute(actions[i], destroy=destroy), parallel)
                for i, outcome in zip(parallel, done, strict=True):
                    outcomes[i] = outcome
        return [
            o or self.execute(a, destroy=destroy) for a, o in zip(actions, outcomes, strict=True)
        ]

    def end_all(self, reason: str) -> list[Outcome]:
        """Destroy every live session (watch's shutdown rule), confirming each is gone."""
        outcomes: list[Action] = []
        for session_id, session in sorted(self.store.sessions().items()):
            if not session.live:
                continue
            action = Action(
                DESTROY_SESSION,
                reason,
                provider=session.provider or "?",
                session_id=session_id,
                instance_id=str(session.instance_id) if session.instance_id else None,
                label=session.label,
                price_per_hour=session.price_per_hour,
            )
            outcomes.append(action)
        return self.execute_all(outcomes)


def policy_from_settings(settings: SettingsReader, include_foreign: bool = False) -> Policy:
    """The policy's timings from settings; the install id is filled in by ``evaluate``."""
    return Policy(
        install_id=None,
        warn_before_s=settings.get("safety.warn_before"),
        provision_timeout_s=settings.get("safety.provision_timeout"),
        include_foreign=include_foreign,
        hard_max_s=settings.get("safety.hard_max_hours") * 3600.0,
    )
