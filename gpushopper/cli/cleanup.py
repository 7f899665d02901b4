"""``gpu-shopper cleanup-orphans``: find (and with --yes destroy) what should not be running."""

from __future__ import annotations

from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, render, warn

REPORTED = ("destroy_session", "destroy_orphan", "report_foreign", "report_malformed")


def orphan_json(outcome: Any) -> dict[str, Any]:
    action = outcome.action
    return {
        "provider": action.provider,
        "instance_id": action.instance_id,
        "label": action.label,
        "reason": action.reason,
        "age_seconds": None if action.age_seconds is None else round(action.age_seconds, 1),
        "price_per_hour": action.price_per_hour,
        "action": {
            "destroyed": "destroyed",
            "left": "left",
            "failed": "destroy_failed",
            "unrecorded": "destroyed_unrecorded",
        }.get(outcome.result, outcome.result),
        "session_id": action.session_id,
        "detail": outcome.error or action.detail,
    }


@click.command(
    "cleanup-orphans",
    epilog="""Examples:

\b
  gpu-shopper cleanup-orphans                 # list only; exit 3 if something is left
  gpu-shopper cleanup-orphans --yes --json    # for cron: destroy and report
""",
)
@click.option("--yes", "-y", is_flag=True, help="Destroy what is found (otherwise only list it).")
@click.option(
    "--include-foreign", is_flag=True, help="Also destroy instances labelled by another install id."
)
@json_option
@pass_app
def cleanup_orphans(app: App, yes: bool, include_foreign: bool, as_json: bool) -> int:
    """Instances of ours that are unknown to the state file, past their reservation or hard
    maximum, or belong to an ended session, or whose provision process died. Works with no
    state file and no daemon.

    Exit codes, for cron: 0 nothing labelled gpu-shopper is left running that should not
    be, and every provider was seen; 3 gpu-shopper-labelled instances are left running
    (no --yes, or another install's without --include-foreign); 1 not everything could be
    seen or done (a provider not listed, a broken session record, a failed destroy): blind
    is never "all clear".
    """
    from gpushopper.core.enforcer import FAILED, Enforcer, TickReport, policy_from_settings
    from gpushopper.core.runtime import Runtime

    enforcer = Enforcer(
        store=app.store,
        provider_factory=app.provider,
        providers=list(app.settings.get("defaults.providers")),
        runtime=Runtime.of(app, log=info),
        ssh_config_path=app.paths.ssh_config_file if app.store.exists() else None,
    )
    if not enforcer.configured():
        from gpushopper.model.errors import NoProviderConfigured

        raise NoProviderConfigured()
    report = TickReport()
    actions = enforcer.evaluate(policy_from_settings(app.settings, include_foreign), report)
    # With --yes, also close sessions whose instance is already gone (no row: nothing runs).
    chosen = [a for a in actions if a.kind in REPORTED or (yes and a.kind == "mark_ended")]
    outcomes = enforcer.execute_all(chosen, destroy=yes)
    blind = not report.ok or any(o.result in FAILED for o in outcomes)
    rows = [orphan_json(o) for o in outcomes if o.action.kind in REPORTED]
    for name, message in sorted(report.provider_errors.items()):
        warn(f"{name}: {message}")
    for session_id, why in sorted(report.bad_records.items()):
        warn(f"session {session_id} skipped: it {why}")
    for outcome in outcomes:
        if outcome.result in FAILED:
            what = outcome.action.session_id or outcome.action.instance_id
            warn(f"{outcome.action.provider} {what}: {outcome.error}")
    if report.install_id is None:
        info(
            "Note: no state file here, so no instance is known to be this install's; "
            "gpu-shopper-labelled instances are shown as foreign (--include-foreign destroys them)"
        )
    table = Table(
        ["PROVIDER", "INSTANCE", "LABEL", "REASON", "AGE", "$/h", "ACTION"],
        lambda r: (
            r["provider"],
            r["instance_id"],
            r["label"],
            r["reason"],
            None if r["age_seconds"] is None else f"{r['age_seconds'] / 60:.0f}m",
            r["price_per_hour"],
            r["action"],
        ),
        empty="Could not check everything (see the warnings above): not all clear."
        if blind
        else "Nothing of ours is running that should not be.",
    )
    render(as_json, rows, table=table)
    if blind:
        return 1
    left = [r for r in rows if r["action"] == "left"]
    if left:
        if not as_json:
            hint = (
                "rerun with --yes to destroy them"
                if not yes
                else "other installs' need --include-foreign; malformed labels are never destroyed"
            )
            info(f"{len(left)} gpu-shopper-labelled instance(s) left running; {hint}")
        return 3
    return 0
