"""``gpu-shopper doctor``: is this machine ready to shop, rent and clean up?"""

from __future__ import annotations

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, json_option, render


@click.command(
    epilog="Example: gpu-shopper doctor --json | jq '.checks[] | select(.status==\"fail\")'"
)
@json_option
@pass_app
def doctor(app: App, as_json: bool) -> int:
    """Check config, credentials, the state file, provider reachability and SSH tools.

    Exits 0 only when nothing failed (warnings and skipped providers are fine).
    """
    from gpushopper.core.doctor import run_checks

    report = run_checks(app.settings, app.paths, app.store, app.provider)
    table = Table(
        ["CHECK", "STATUS", "DETAIL"],
        rows=lambda doc: [(c["check"], c["status"], c["detail"]) for c in doc["checks"]],
    )
    render(as_json, report.to_json(), table=table)
    return 0 if report.ok else 1
