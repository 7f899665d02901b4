"""``gpu-shopper cleanup-orphans``: find (and with --yes destroy) what should not be running."""

from __future__ import annotations

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, render, warn


def _table(blind: bool) -> Table:
    return Table(
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
    from gpushopper.core.cleanup import sweep
    from gpushopper.core.enforcer import Enforcer, policy_from_settings
    from gpushopper.core.runtime import Runtime

    enforcer = Enforcer(
        store=app.store,
        provider_factory=app.provider,
        providers=list(app.settings.get("defaults.providers")),
        runtime=Runtime.of(app, log=info),
        ssh_config_path=app.paths.ssh_config_file if app.store.exists() else None,
    )
    # With --yes, it also closes sessions whose instance is already gone (nothing runs).
    done = sweep(enforcer, policy_from_settings(app.settings, include_foreign), destroy=yes)
    for line in done.warnings():
        warn(line)
    if done.no_state:
        info(
            "Note: no state file here, so no instance is known to be this install's; "
            "gpu-shopper-labelled instances are shown as foreign (--include-foreign destroys them)"
        )
    render(as_json, done.rows, table=_table(done.blind))
    if done.left and not done.blind and not as_json:
        info(f"{len(done.left)} gpu-shopper-labelled instance(s) left running; {done.left_hint()}")
    return done.exit_code
