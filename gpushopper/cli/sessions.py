"""``gpu-shopper sessions`` and ``shutdown``."""

from __future__ import annotations

import os
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, render
from gpushopper.cli.params import HOURS, SESSION_ID, ConfiguredHelp
from gpushopper.model.errors import SshError
from gpushopper.model.units import format_duration, parse_iso
from gpushopper.providers.registry import PROVIDERS

REFRESH_HELP = (
    "Also ask each provider about the instance (PROVIDER SAYS: running, exited, gone, "
    "unreachable...)."
)


def _views(
    app: App, show_all: bool, consumer: str | None, refresh: bool = False
) -> list[dict[str, Any]]:
    from gpushopper.core.sessions import public_view

    now = app.clock()
    out = []
    for record in app.sessions().values():
        if not show_all and record.done:
            continue
        if consumer and record.consumer != consumer:
            continue
        view = public_view(record, now)
        if refresh:
            _refresh(app, record, view)
        out.append(view)
    return sorted(out, key=lambda v: v.get("created_at") or "")


def _refresh(app: App, record: Any, view: dict[str, Any]) -> None:
    """Ask the provider about the session's instance; say on stderr where it disagrees
    with what we recorded, or could not be asked."""
    from gpushopper.cli.output import warn
    from gpushopper.core.sessions import observe

    seen = observe(record, app.provider)
    view.update(seen)
    said, sid = seen.get("provider_status"), view["id"]
    if said == "unreachable":
        warn(f"session {sid}: {view['provider']} could not be asked: {seen['provider_detail']}")
    elif said in ("gone", "exited", "stopped") and view["status"] in ("running", "verifying"):
        warn(
            f"session {sid} is {view['status']} here but {view['provider']} says {said}"
            f" ({seen['provider_detail']}); 'gpu-shopper sessions done {sid}' ends it"
        )


def _ends_in(view: dict[str, Any], app: App) -> str | None:
    end = parse_iso(view.get("reservation_ends_at"))
    if end is None or view.get("status") in ("ended", "failed"):
        return None
    seconds = (end - app.clock()).total_seconds()
    return format_duration(seconds) if seconds > 0 else "overdue"


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
                _ends_in(v, app),
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
    from gpushopper.core.sessions import session_logs
    from gpushopper.core.teardown import get_session_or_fail

    record = get_session_or_fail(app.store, session_id)
    # A job's --secret-env values (read here from the environment, as run read them) are
    # masked too, on top of every key the settings hold.
    names = {
        n
        for job in (app.store.read().get("jobs") or {}).values()
        if isinstance(job, dict) and job.get("session_id") == record.id
        for n in job.get("secret_names") or []
        if isinstance(n, str)
    }
    secrets = [os.environ[n] for n in sorted(names) if os.environ.get(n)]
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
    from pathlib import Path

    from gpushopper.cli.output import print_kv
    from gpushopper.core.teardown import live_session_or_fail
    from gpushopper.remote import ssh as remote

    record = live_session_or_fail(
        app.store, session_id, ("running", "verifying"), "there is nothing to inspect"
    )
    info_ = record.ssh
    if not info_.get("host"):
        raise SshError(f"session {session_id} has no SSH endpoint yet (status {record.status})")
    conn = remote.connect(
        info_["host"],
        int(info_["port"]),
        info_["user"],
        Path(info_["key_path"]),
        deadline=time.monotonic() + 30,
    )
    try:
        report = {"session": session_id, **remote.diagnostics(conn)}
    finally:
        conn.close()

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
    import shlex
    import shutil

    from gpushopper.core.sessions import ssh_command
    from gpushopper.core.teardown import live_session_or_fail

    record = live_session_or_fail(
        app.store, session_id, ("running", "verifying"), "there is nothing to SSH into"
    )
    line = ssh_command(record)
    if not line:
        raise SshError(f"session {session_id} has no SSH endpoint (status {record.status})")
    if shutil.which("ssh") is None:
        raise SshError("OpenSSH client not found: apt-get install openssh-client")
    argv = shlex.split(line) + list(command)
    os.execvp(argv[0], argv)
