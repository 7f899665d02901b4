"""``gpu-shopper costs``: what rentals cost, per session and per month."""

from __future__ import annotations

from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, print_table, render
from gpushopper.cli.params import SESSION_ID
from gpushopper.providers.registry import PROVIDERS


@click.group(
    invoke_without_command=True,
    epilog="""Examples:

\b
  gpu-shopper costs --since 2026-11-01
  gpu-shopper costs --consumer alice --json | jq .total_usd
  gpu-shopper costs summary --month 2026-11
""",
)
@click.option("--session", "session_id", type=SESSION_ID, metavar="ID", help="Only this session.")
@click.option("--consumer", metavar="NAME", help="Only this consumer.")
@click.option("--provider", type=click.Choice(PROVIDERS), help="Only this provider.")
@click.option("--since", metavar="DATE", help="Sessions created on or after DATE (YYYY-MM-DD).")
@json_option
@pass_app
@click.pass_context
def costs(
    ctx: click.Context,
    app: App,
    session_id: str | None,
    consumer: str | None,
    provider: str | None,
    since: str | None,
    as_json: bool,
) -> None:
    """Cost per session (price x running time, by the second) and the total."""
    if ctx.invoked_subcommand is not None:
        return
    from gpushopper.core.costs import cost_report, parse_since

    start = parse_since(since) if since else None
    report = cost_report(
        app.sessions().values(),
        app.clock(),
        session_id=session_id,
        consumer=consumer,
        provider=provider,
        since=start,
    )
    rows, total = report.rows, report.total
    table = Table(
        ["SESSION", "PROVIDER", "CONSUMER", "GPU", "STATUS", "HOURS", "$/h", "COST $"],
        rows=lambda doc: [
            (
                r["session_id"],
                r["provider"],
                r["consumer"],
                f"{r['gpu_name']} x{r['num_gpus']}",
                r["status"],
                f"{r['billed_hours']:.3f}",
                None if r["price_per_hour"] is None else f"{r['price_per_hour']:.3f}",
                f"{r['cost_usd']:.4f}",
            )
            for r in doc["sessions"]
        ],
        empty="No sessions match.",
        total=("total", "", "", "", "", "", "", f"{total:.4f}"),
    )
    render(as_json, {"total_usd": total, "sessions": rows}, table=table)


@costs.command("summary", epilog="Example: gpu-shopper costs summary --month 2026-11 --json")
@click.option("--month", metavar="YYYY-MM", help="Calendar month (UTC); default this month.")
@json_option
@pass_app
def costs_summary(app: App, month: str | None, as_json: bool) -> None:
    """Spend in a month by provider and consumer, against safety.monthly_budget_usd."""
    from gpushopper.core.costs import month_summary

    budget = app.settings.get("safety.monthly_budget_usd")
    result = month_summary(app.sessions().values(), month, app.clock(), budget)
    total = result.total

    def for_people(summary: dict[str, Any]) -> None:
        rows: list[tuple[Any, ...]] = [
            ("provider", k, f"{v:.4f}") for k, v in summary["by_provider"].items()
        ]
        rows += [("consumer", k, f"{v:.4f}") for k, v in summary["by_consumer"].items()]
        rows.append(("total", summary["month"], f"{total:.4f}"))
        print_table(["BY", "NAME", "COST $"], rows)
        if budget:
            info(f"Budget: ${budget:.2f}; used {100 * total / budget:.1f}%")

    render(as_json, result.to_json(), text=for_people)
