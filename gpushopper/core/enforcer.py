"""Carry out lifecycle actions: the I/O half of ``watch`` and ``cleanup-orphans``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gpushopper.core.errors import GpuShopperError, MissingCredentials
from gpushopper.core.lifecycle import (
    DESTROY_ORPHAN,
    DESTROY_SESSION,
    MARK_ENDED,
    REPORT_FOREIGN,
    WARN,
    Action,
    Policy,
    plan,
)
from gpushopper.core.models import Instance
from gpushopper.core.provisioner import destroy_and_confirm
from gpushopper.core.sessions import close_record, refresh_ssh_config
from gpushopper.core.teardown import end_session
from gpushopper.core.units import iso

DESTROY_WORKERS = 8


@dataclass
class Outcome:
    action: Action
    result: str  # destroyed | marked_ended | warned | left | failed
    error: str | None = None


@dataclass
class TickReport:
    outcomes: list[Outcome] = field(default_factory=list)
    provider_errors: dict[str, str] = field(default_factory=dict)
    providers_listed: list[str] = field(default_factory=list)
    instances: dict[str, list[Instance]] = field(default_factory=dict)
    install_id: str | None = None
    ok: bool = True


class Enforcer:
    def __init__(
        self,
        *,
        store: Any,
        provider_factory: Callable[[str], Any],
        providers: list[str],
        clock: Callable[[], datetime],
        ssh_config_path: Path | None = None,
        log: Callable[[str], None] = lambda message: None,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
        sleep: Callable[[float], None] = time.sleep,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.provider_factory = provider_factory
        self.providers = providers
        self.clock = clock
        self.ssh_config_path = ssh_config_path
        self.log = log
        self.on_outcome = on_outcome
        self.sleep = sleep
        self.mono = mono
        self._clients: dict[str, Any] = {}

    def client(self, name: str) -> Any:
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
        instances: dict[str, list[Instance]] = {}
        for name in self.configured():
            try:
                instances[name] = self.client(name).list_instances()
                report.providers_listed.append(name)
            except GpuShopperError as exc:
                report.provider_errors[name] = str(exc)
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
        return plan(state["sessions"], instances, self.clock(), policy)

    def execute(self, action: Action, *, destroy: bool = True) -> Outcome:
        try:
            if action.kind == WARN:
                if action.session_id:
                    self.store.update_session(action.session_id, warned_at=iso(self.clock()))
                outcome = Outcome(action, "warned")
            elif action.kind == REPORT_FOREIGN or not destroy:
                outcome = Outcome(action, "left")
            elif action.kind == MARK_ENDED:
                self._mark_ended(action)
                outcome = Outcome(action, "marked_ended")
            elif action.kind == DESTROY_SESSION:
                assert action.session_id
                end_session(
                    self.store,
                    self.client,
                    action.session_id,
                    action.reason,
                    clock=self.clock,
                    ssh_config_path=self.ssh_config_path,
                    sleep=self.sleep,
                    mono=self.mono,
                )
                outcome = Outcome(action, "destroyed")
            elif action.kind == DESTROY_ORPHAN:
                assert action.instance_id
                destroy_and_confirm(
                    self.client(action.provider),
                    action.instance_id,
                    sleep=self.sleep,
                    mono=self.mono,
                )
                outcome = Outcome(action, "destroyed")
            else:
                outcome = Outcome(action, "left")
        except GpuShopperError as exc:
            outcome = Outcome(action, "failed", str(exc))
        except Exception as exc:  # a bug in one action must not stop the others in a pass
            outcome = Outcome(action, "failed", f"{type(exc).__name__}: {exc}")
        self.on_outcome(outcome)
        return outcome

    def _mark_ended(self, action: Action) -> None:
        assert action.session_id
        with self.store.transaction() as state:
            record = state["sessions"].get(action.session_id)
            if record is None:
                return
            booting = record.get("status") in ("creating", "provisioning", "verifying")
            close_record(
                record,
                "failed" if booting else "ended",
                "instance gone at the provider",
                self.clock(),
                keep_reason=True,
            )
        refresh_ssh_config(self.ssh_config_path, self.store)

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
            if outcome.result == "failed":
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
        from gpushopper.core.sessions import LIVE

        outcomes: list[Action] = []
        for session_id, record in sorted(self.store.sessions().items()):
            if record.get("status") not in LIVE:
                continue
            action = Action(
                DESTROY_SESSION,
                reason,
                provider=record.get("provider") or "?",
                session_id=session_id,
                instance_id=str(record.get("instance_id")) if record.get("instance_id") else None,
                label=record.get("label"),
                price_per_hour=record.get("price_per_hour"),
            )
            outcomes.append(action)
        return self.execute_all(outcomes)


def policy_from_settings(settings: Any, include_foreign: bool = False) -> Policy:
    """The policy's timings from settings; the install id is filled in by ``evaluate``."""
    return Policy(
        install_id=None,
        warn_before_s=settings.get("safety.warn_before"),
        provision_timeout_s=settings.get("safety.provision_timeout"),
        include_foreign=include_foreign,
    )
