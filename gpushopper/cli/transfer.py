"""``gpu-shopper transfer``: copy files to and from a session's instance with scp."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, render
from gpushopper.cli.params import SESSION_ID
from gpushopper.model.errors import SshError


def _connect(app: App, session_id: str) -> Any:
    from gpushopper.core.teardown import live_session_or_fail
    from gpushopper.remote import ssh

    record = live_session_or_fail(
        app.store, session_id, ("running",), "only running sessions take transfers"
    )
    endpoint = record.ssh
    if not endpoint.get("host"):
        raise SshError(f"session {session_id} has no SSH endpoint (status running)")
    return ssh.connect(
        endpoint["host"],
        int(endpoint["port"]),
        endpoint["user"],
        Path(endpoint["key_path"]),
        deadline=time.monotonic() + 30,
    )


@click.group(
    epilog="""Examples:

\b
  gpu-shopper transfer upload 3fa9c2 dataset/ /workspace/ --recursive
  gpu-shopper transfer download 3fa9c2 /workspace/output/lora.safetensors .
""",
)
def transfer() -> None:
    """Copy files to and from a running session (scp over the session's SSH key)."""


@transfer.command(
    "upload", epilog="Example: gpu-shopper transfer upload 3fa9c2 train.yaml /workspace/"
)
@click.argument("session_id", type=SESSION_ID)
@click.argument("paths", nargs=-1, required=True, metavar="LOCAL... REMOTE")
@click.option("--recursive", "-r", is_flag=True, help="Copy folders.")
@json_option
@pass_app
def transfer_upload(
    app: App, session_id: str, paths: tuple[str, ...], recursive: bool, as_json: bool
) -> None:
    """Upload LOCAL files (or folders with --recursive) to REMOTE on the instance."""
    from gpushopper.model.errors import UsageError
    from gpushopper.remote.transfer import check_path, upload

    if len(paths) < 2:
        raise UsageError("give at least one LOCAL path and the REMOTE destination")
    for path in paths[:-1]:
        check_path(path, "local")
    check_path(paths[-1], "remote")
    conn = _connect(app, session_id)
    try:
        done = upload(
            conn, list(paths[:-1]), paths[-1], recursive=recursive, report=None if as_json else info
        )
    finally:
        conn.close()
    rows = [
        {"from": d["local"], "to": f"{session_id}:{d['remote']}", "bytes": d["bytes"]} for d in done
    ]
    _print(rows, as_json)


@transfer.command(
    "download", epilog="Example: gpu-shopper transfer download 3fa9c2 /workspace/out . -r"
)
@click.argument("session_id", type=SESSION_ID)
@click.argument("paths", nargs=-1, required=True, metavar="REMOTE... LOCAL")
@click.option("--recursive", "-r", is_flag=True, help="Copy folders.")
@json_option
@pass_app
def transfer_download(
    app: App, session_id: str, paths: tuple[str, ...], recursive: bool, as_json: bool
) -> None:
    """Download REMOTE files (or folders with --recursive) from the instance to LOCAL."""
    from gpushopper.model.errors import UsageError
    from gpushopper.remote.transfer import check_path, download

    if len(paths) < 2:
        raise UsageError("give at least one REMOTE path and the LOCAL destination")
    for path in paths[:-1]:
        check_path(path, "remote")
    check_path(paths[-1], "local")
    conn = _connect(app, session_id)
    try:
        done = download(
            conn, list(paths[:-1]), paths[-1], recursive=recursive, report=None if as_json else info
        )
    finally:
        conn.close()
    rows = [
        {"from": f"{session_id}:{d['remote']}", "to": d["local"], "bytes": d["bytes"]} for d in done
    ]
    _print(rows, as_json)


COPIED_TABLE = Table(["FROM", "TO", "BYTES"], lambda r: (r["from"], r["to"], r["bytes"]))


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    render(as_json, rows, table=COPIED_TABLE)
