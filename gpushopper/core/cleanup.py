"""What ``cleanup-orphans`` decides: which planned actions it carries out, what it reports,
what it warns about and its exit code (0 all clear, 3 left running, 1 blind).

The enforcer plans and executes (core/lifecycle.py, core/enforcer.py); this module picks
the actions a one-off sweep takes, turns the outcomes into the report's rows (CLI.md pins
their shape) and says whether the sweep saw everything. The command only renders.
Tested on a fake clock against the in-process fake provider (tests/test_cleanup.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpushopper.core.enforcer import FAILED, Enforcer, Outcome, TickReport
from gpushopper.core.lifecycle import (
    DESTROY_ORPHAN,
    DESTROY_SESSION,
    MARK_ENDED,
    REPORT_FOREIGN,
    REPORT_MALFORMED,
    Policy,
)
from gpushopper.model.errors import NoProviderConfigured
from gpushopper.model.jsontypes import JSONObject

# The action kinds a sweep reports as rows (mark_ended closes a record: no row, nothing runs).
REPORTED = (DESTROY_SESSION, DESTROY_ORPHAN, REPORT_FOREIGN, REPORT_MALFORMED)

# An outcome's result as the report's "action" column names it.
ACTION_NAMES = {
    "destroyed": "destroyed",
    "left": "left",
    "failed": "destroy_failed",
    "unrecorded": "destroyed_unrecorded",
}

# Exit codes, for cron.
ALL_CLEAR, BLIND, LEFT_RUNNING = 0, 1, 3


def orphan_json(outcome: Outcome) -> JSONObject:
    """One row of the report (tests/test_json_contract.py pins its keys)."""
    action = outcome.action
    return {
        "provider": action.provider,
        "instance_id": action.instance_id,
        "label": action.label,
        "reason": action.reason,
        "age_seconds": None if action.age_seconds is None else round(action.age_seconds, 1),
        "price_per_hour": action.price_per_hour,
        "action": ACTION_NAMES.get(outcome.result, outcome.result),
        "session_id": action.session_id,
        "detail": outcome.error or action.detail,
    }


@dataclass
class Sweep:
    """One cleanup-orphans pass: what was seen, done and left."""

    report: TickReport
    outcomes: list[Outcome]
    destroy: bool

    @property
    def rows(self) -> list[JSONObject]:
        return [orphan_json(o) for o in self.outcomes if o.action.kind in REPORTED]

    @property
    def blind(self) -> bool:
        """Not everything could be seen or done: never "all clear"."""
        return not self.report.ok or any(o.result in FAILED for o in self.outcomes)

    @property
    def left(self) -> list[JSONObject]:
        """The reported gpu-shopper-labelled instances still running."""
        return [r for r in self.rows if r["action"] == "left"]

    @property
    def exit_code(self) -> int:
        if self.blind:
            return BLIND
        return LEFT_RUNNING if self.left else ALL_CLEAR

    @property
    def no_state(self) -> bool:
        """No state file: no instance is known to be this install's (all count as foreign)."""
        return self.report.install_id is None

    def warnings(self) -> list[str]:
        """What could not be seen or done, one line each: providers, records, destroys."""
        lines = [
            f"{name}: {message}" for name, message in sorted(self.report.provider_errors.items())
        ]
        lines += [
            f"session {sid} skipped: it {why}"
            for sid, why in sorted(self.report.bad_records.items())
        ]
        for outcome in self.outcomes:
            if outcome.result in FAILED:
                what = outcome.action.session_id or outcome.action.instance_id
                lines.append(f"{outcome.action.provider} {what}: {outcome.error}")
        return lines

    def left_hint(self) -> str:
        """What to do about what was left running."""
        if not self.destroy:
            return "rerun with --yes to destroy them"
        return "other installs' need --include-foreign; malformed labels are never destroyed"


def sweep(enforcer: Enforcer, policy: Policy, *, destroy: bool) -> Sweep:
    """Plan a pass and carry out what a one-off sweep takes: the reported actions (each
    destroy only with ``destroy``; otherwise left and listed) and, with ``destroy``, the
    closing of sessions whose instance is already gone. Raises NoProviderConfigured when
    no provider has credentials (nothing could be seen)."""
    if not enforcer.configured():
        raise NoProviderConfigured()
    report = TickReport()
    actions = enforcer.evaluate(policy, report)
    chosen = [a for a in actions if a.kind in REPORTED or (destroy and a.kind == MARK_ENDED)]
    outcomes = enforcer.execute_all(chosen, destroy=destroy)
    return Sweep(report, outcomes, destroy)
