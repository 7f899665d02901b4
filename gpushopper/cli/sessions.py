"""``gpu-shopper sessions`` and ``shutdown``."""

from __future__ import annotations

import os
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, render
from gpushopper.cli.params import HOURS, SESSION_ID, ConfiguredHelp
from gpushopper.providers.registry import PROVIDERS

REFRESH_HELP = (
    "Also ask each provider about the instance (PROVIDER SAYS: running, exited, gone, "
    "unreachable...)."
)


def _views(
    app: App, show_all: bool, consumer: str | None, refresh: bool = False
) -> list[dict[str, Any]]:
    from gpushopper.core.sessions import session_views

    return session_views(
        app.sessions().values(),
        app.clock(),
        show_all=show_all,
        consumer=consumer,
        refresh=(lambda record, view: _refresh(app, record, view)) if refresh else None,
    )


def _refresh(app: App, record: Any, view: dict[str, Any]) -> None:
    """Ask the provider about the session's instance; say on stderr where it disagrees
    with what we recorded, or could not be asked."""
    from gpushopper.cli.output import warn
    from gpushopper.core.sessions import refresh_view

    disagreement = refresh_view(record, view, app.provider)
    if disagreement:
        warn(disagreement)


@click.group(
    invoke_without_command=True,
    epilog="""Examples:

\b
  gpu-shopper sessions
  gpu-shopper sessions list --all --json | jq '.[] | {id, status, cost_usd}'
  gpu-shopper sessions done 3fa9c2
""",
)
@click.option("--all", "show_all", is_flag=True, help="Include ended and failed sessions.")
@click.option("--consumer", metavar="NAME", help="Only sessions for this consumer.")
@click.option("--refresh", is_flag=True, help=REFRESH_HELP)
@json_option
@pass_app
@click.pass_context
def sessions(
    ctx: click.Context,
    app: App,
    show_all: bool,
    consumer: str | None,
    refresh: bool,
    as_json: bool,
) -> None:
    """Rentals this machine made: list, inspect, extend, end."""
    if ctx.invoked_subcommand is None:
        _list(app, show_all, consumer, as_json, refresh)


def _list(
    app: App, show_all: bool, consumer: str | None, as_json: bool, refresh: bool = False
) -> None:
    from gpushopper.core.sessions import ends_in

    views = _views(app, show_all, consumer, refresh)
    columns = ["SESSION", "STATUS", "PROVIDER", "GPU", "$/h", "COST $", "ENDS IN", "CONSUMER"]
    columns += ["SSH TO"] + (["PROVIDER SAYS"] if refresh else [])
    table = Table(
        columns,
        lambda v: (
            (
                v["id"],
                v["status"],
                v["provider"],
                f"{v.get('gpu_name')} x{v.get('num_gpus')}",
                None if v.get("price_per_hour") is None else f"{v['price_per_hour']:.3f}",
                f"{v.get('cost_usd') or 0:.4f}",
                ends_in(v, app.clock()),
                v.get("consumer"),
                f"gpu-{v['id']}"  # the Host of our ssh_config: `ssh gpu-<id>`
                if (v.get("ssh") or {}).get("command") and v["status"] == "running"
                else None,
            )
            + ((v.get("provider_status"),) if refresh else ())
        ),
        empty="No sessions." if show_all else "No live sessions (--all shows ended ones).",
    )
    render(as_json, views, table=table)


@sessions.command(
    "list",
    epilog="""Examples:

\b
  gpu-shopper sessions list --all
  gpu-shopper sessions list --refresh --json | jq '.[] | {id, status, provider_status}'
""",
)
@click.option("--all", "show_all", is_flag=True, help="Include ended and failed sessions.")
@click.option("--consumer", metavar="NAME", help="Only sessions for this consumer.")
@click.option("--refresh", is_flag=True, help=REFRESH_HELP)
@json_option
@pass_app
def sessions_list(
    app: App, show_all: bool, consumer: str | None, refresh: bool, as_json: bool
) -> None:
    """Live sessions (with --all, every session) with cost so far.

    With --refresh each provider is asked about its instances too: one that exited or
    vanished is marked (and named on stderr); a provider that cannot be reached is said
    so, never taken for "gone". Without it nothing leaves this machine."""
    _list(app, show_all, consumer, as_json, refresh)


@sessions.command(
    "stats",
    epilog="""Examples:

\b
  gpu-shopper sessions stats
  gpu-shopper sessions stats --provider vastai --gpu 4090 --json
""",
)
@click.option("--provider", type=click.Choice(PROVIDERS), help="Only this provider's sessions.")
@click.option("--template", metavar="NAME", help="Only this template (or TensorDock image).")
@click.option("--gpu", metavar="MODEL", help="Only this GPU model (loose: 4090, RTX 4090).")
@json_option
@pass_app
def sessions_stats(
    app: App, provider: str | None, template: str | None, gpu: str | None, as_json: bool
) -> None:
    """Boot and teardown times and failure rates from every recorded session.

    Per provider, template (or image) and GPU model: count, failure rate by stage, median
    and 90th percentile of the create call, time to running, time to SSH, setup, and
    destroy to gone. Five recorded boots of a provider/template pair set its default
    provisioning timeout (90th percentile x 1.5; see provision --dry-run).
    """
    from gpushopper.core import stats

    rows = stats.group_stats(app.sessions().values(), stats.Filters(provider, template, gpu))
    table = Table(stats.TABLE_COLUMNS, rows=stats.table_rows, empty="No recorded sessions.")
    render(as_json, rows, table=table)


@sessions.command(
    "logs",
    epilog="""Examples:

\b
  gpu-shopper sessions logs 3fa9c2
  gpu-shopper sessions logs 3fa9c2 --tail 50 --json | jq -r '.lines[]'
""",
)
@click.argument("session_id", type=SESSION_ID)
@click.option(
    "--tail",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    metavar="N",
    help="The last N lines.",
)
@json_option
@pass_app
def sessions_logs(app: App, session_id: str, tail: int, as_json: bool) -> None:
    """The instance's own log from its provider (Vast.ai: the container's output).

    Vast.ai's request_logs answers a URL, which is checked (https only) and fetched
    without the API key. TensorDock's API has no log endpoint: this exits 1 and names the
    SSH command that reads the VM's boot log. Terminal escapes are removed and secrets
    masked; a job's own output is in jobs logs.
    """
    from gpushopper.core.sessions import job_secrets, session_logs
    from gpushopper.core.teardown import get_session_or_fail

    record = get_session_or_fail(app.store, session_id)
    # A job's --secret-env values are masked too, on top of every key the settings hold.
    secrets = job_secrets(app.store, record.id, os.environ)
    provider = app.provider(record.provider)
    doc = session_logs(provider, record, tail, secrets)
    render(as_json, doc, text=_print_lines)


def _print_lines(doc: dict[str, Any]) -> None:
    for line in doc["lines"]:
        click.echo(line)


@sessions.command(
    "show",
    epilog="""Examples:

\b
  gpu-shopper sessions show 3fa9c2 --json
  gpu-shopper sessions show 3fa --refresh
""",
)
@click.argument("session_id", type=SESSION_ID)
@click.option("--refresh", is_flag=True, help=REFRESH_HELP)
@json_option
@pass_app
def sessions_show(app: App, session_id: str, refresh: bool, as_json: bool) -> None:
    """One session in full (never any key material).

    What was recorded; with --refresh also what the provider says of the instance now
    (provider_status). SESSION_ID may be a unique prefix."""
    from gpushopper.cli.views import print_session
    from gpushopper.core.sessions import public_view
    from gpushopper.core.teardown import get_session_or_fail

    record = get_session_or_fail(app.store, session_id)
    view = public_view(record, app.clock())
    if refresh:
        _refresh(app, record, view)
    render(as_json, view, text=print_session)


def _end(app: App, session_id: str, reason: str, as_json: bool) -> None:
    from gpushopper.cli.views import print_session
    from gpushopper.core.runtime import Runtime
    from gpushopper.core.sessions import public_view
    from gpushopper.core.teardown import end_session

    record = end_session(
        app.store,
        app.provider,
        session_id,
        reason,
        runtime=Runtime.of(app, log=info),
        ssh_config_path=app.paths.ssh_config_file,
    )
    view = public_view(record, app.clock())

    def ended(view: dict[str, Any]) -> None:
        print_session(view)
        info(f"Session {session_id} {view['status']}; cost ${view.get('cost_usd') or 0:.4f}")

    render(as_json, view, text=ended)


@sessions.command("done", epilog="Example: gpu-shopper sessions done 3fa9c2")
@click.argument("session_id", type=SESSION_ID)
@json_option
@pass_app
def sessions_done(app: App, session_id: str, as_json: bool) -> None:
    """Finished: destroy the instance, confirm it is gone, finalise the cost."""
    _end(app, session_id, "done", as_json)


@sessions.command("delete", epilog="Example: gpu-shopper sessions delete 3fa9c2")
@click.argument("session_id", type=SESSION_ID)
@json_option
@pass_app
def sessions_delete(app: App, session_id: str, as_json: bool) -> None:
    """Force shutdown (same as 'gpu-shopper shutdown ID')."""
    _end(app, session_id, "deleted", as_json)


@click.command("shutdown", epilog="Example: gpu-shopper shutdown 3fa9c2 --json")
@click.argument("session_id", type=SESSION_ID)
@json_option
@pass_app
def shutdown(app: App, session_id: str, as_json: bool) -> None:
    """Destroy a session's instance now and finalise its cost."""
    _end(app, session_id, "shutdown", as_json)


@sessions.command(
    "extend", cls=ConfiguredHelp, epilog="Example: gpu-shopper sessions extend 3fa9c2 --hours 1h"
)
@click.argument("session_id", type=SESSION_ID)
@click.option(
    "--hours",
    type=HOURS,
    required=True,
    metavar="DURATION",
    help="Add this much time, e.g. 30m, 2h or 1 (hours).",
)
@click.option("--override", is_flag=True, help="Allow going past the hard maximum (recorded).")
@json_option
@pass_app
def sessions_extend(app: App, session_id: str, hours: float, override: bool, as_json: bool) -> None:
    """Push the reservation end out; refused past the {hard_max} without --override."""
    from gpushopper.core import rules
    from gpushopper.core.sessions import public_view

    now = app.clock()
    updated = rules.extend_session(app, session_id, hours, override, now, log=info)
    view = public_view(updated, now)
    render(
        as_json,
        view,
        text=lambda v: info(
            f"Session {session_id} now ends at {v['reservation_ends_at']} (hard maximum {v['hard_max_at']})"
        ),
    )


@sessions.command("diagnostics", epilog="Example: gpu-shopper sessions diagnostics 3fa9c2 --json")
@click.argument("session_id", type=SESSION_ID)
@json_option
@pass_app
def sessions_diagnostics(app: App, session_id: str, as_json: bool) -> None:
    """SSH in and report nvidia-smi, CUDA, disk and uptime."""
    import time

    from gpushopper.cli.output import print_kv
    from gpushopper.core.sessions import diagnostics
    from gpushopper.core.teardown import live_session_or_fail

    record = live_session_or_fail(
        app.store, session_id, ("running", "verifying"), "there is nothing to inspect"
    )
    report = diagnostics(record, time.monotonic)

    def for_people(report: dict[str, Any]) -> None:
        print_kv([(k, v) for k, v in report.items() if k != "nvidia_smi_output"])
        raw = report.get("nvidia_smi_output")
        if raw:
            click.echo(raw)

    render(as_json, report, text=for_people)


@sessions.command(
    "ssh",
    context_settings={"ignore_unknown_options": True},
    epilog="Examples: gpu-shopper sessions ssh 3fa9c2    gpu-shopper sessions ssh 3fa9c2 -- nvidia-smi",
)
@click.argument("session_id", type=SESSION_ID)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def sessions_ssh(app: App, session_id: str, command: tuple[str, ...]) -> None:
    """Open OpenSSH with the session's key (runs COMMAND when given after --)."""
    from gpushopper.core.sessions import ssh_argv
    from gpushopper.core.teardown import live_session_or_fail

    record = live_session_or_fail(
        app.store, session_id, ("running", "verifying"), "there is nothing to SSH into"
    )
    argv = ssh_argv(record, command)
    os.execvp(argv[0], argv)
