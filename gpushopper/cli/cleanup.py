"""``gpu-shopper cleanup-orphans``: find (and with --yes destroy) what should not be running."""

from __future__ import annotations

from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import emit_json, info, json_option, print_table, warn

REPORTED = ("destroy_session", "destroy_orphan", "report_foreign")


def orphan_json(outcome: Any) -> dict[str, Any]:
    action = outcome.action
    return {
        "provider": action.provider,
        "instance_id": action.instance_id,
        "label": action.label,
        "reason": action.reason,
        "age_seconds": None if action.age_seconds is None else round(action.age_seconds, 1),
        "price_per_hour": action.price_per_hour,
        "action": {"destroyed": "destroyed", "left": "left", "failed": "destroy_failed"}.get(
            outcome.result, outcome.result
        ),
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
    maximum, or belong to an ended session. Works with no state file and no daemon.

    Exit codes: 0 nothing left running; 3 found and left (no --yes); 1 an error.
    Instances of another install id are reported and left alone unless --include-foreign.
    """
    from gpushopper.core.enforcer import Enforcer, TickReport, policy_from_settings

    enforcer = Enforcer(
        store=app.store,
        provider_factory=app.provider,
        providers=list(app.settings.get("defaults.providers")),
        clock=app.clock,
        sleep=app.sleep,
        mono=app.mono,
        ssh_config_path=app.paths.ssh_config_file if app.store.exists() else None,
        log=info,
    )
    if not enforcer.configured():
        from gpushopper.core.errors import NoProviderConfigured

        raise NoProviderConfigured()
    report = TickReport()
    actions = enforcer.evaluate(policy_from_settings(app.settings, include_foreign), report)
    # With --yes, also close sessions whose instance is already gone (no row: nothing runs).
    chosen = [a for a in actions if a.kind in REPORTED or (yes and a.kind == "mark_ended")]
    outcomes = [o for o in enforcer.execute_all(chosen, destroy=yes) if o.action.kind in REPORTED]
    rows = [orphan_json(o) for o in outcomes]
    for name, message in report.provider_errors.items():
        warn(f"{name}: {message}")
    if report.install_id is None:
        info(
            "Note: no state file here, so no instance is known to be this install's; "
            "gpu-shopper-labelled instances are shown as foreign (--include-foreign destroys them)"
        )
    if as_json:
        emit_json(rows)
    else:
        print_table(
            ["PROVIDER", "INSTANCE", "LABEL", "REASON", "AGE", "$/h", "ACTION"],
            [
                (
                    r["provider"],
                    r["instance_id"],
                    r["label"],
                    r["reason"],
                    None if r["age_seconds"] is None else f"{r['age_seconds'] / 60:.0f}m",
                    r["price_per_hour"],
                    r["action"],
                )
                for r in rows
            ],
            empty="Nothing of ours is running that should not be.",
        )
    if report.provider_errors or any(r["action"] == "destroy_failed" for r in rows):
        return 1
    left = [r for r in rows if r["action"] == "left" and r["reason"] != "foreign"]
    if left:
        if not as_json:
            info(f"{len(left)} found and left running; rerun with --yes to destroy them")
        return 3
    return 0
