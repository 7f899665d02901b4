"""``gpu-shopper sandbox``: a practice market on 127.0.0.1 that needs no account.

``eval "$(gpu-shopper sandbox start)"`` starts a detached server (gpushopper/sandbox/server.py)
and prints the ``export`` lines that point gpu-shopper at it; ``sandbox stop`` destroys every
instance, stops every process it started and deletes its folder.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import info, json_option, print_kv, render, sandbox_active, warn
from gpushopper.model.errors import GpuShopperError
from gpushopper.sandbox import server

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
ENV_NAMES = (
    "GPU_SHOPPER_SANDBOX",
    "GPU_SHOPPER_HOME",
    "VASTAI_API_URL",
    "VASTAI_API_KEY",
    "VASTAI_SSH_USER",
    "TENSORDOCK_API_URL",
    "TENSORDOCK_API_TOKEN",
    "TENSORDOCK_SSH_USER",
)


class SandboxError(GpuShopperError):
    type = "sandbox"
    exit_code = 1


def sandbox_root(environ: dict[str, str]) -> Path:
    """The sandbox folder: GPU_SHOPPER_SANDBOX_DIR, else the one this shell points at, else
    ``$XDG_STATE_HOME/gpu-shopper-sandbox`` (``~/.local/state/...``)."""
    for name in ("GPU_SHOPPER_SANDBOX_DIR", "GPU_SHOPPER_SANDBOX"):
        if environ.get(name, "").strip():
            return Path(environ[name]).expanduser().resolve()
    base = environ.get("XDG_STATE_HOME") or str(
        Path(environ.get("HOME") or str(Path.home())) / ".local" / "state"
    )
    return (Path(base) / "gpu-shopper-sandbox").resolve()


def _export_text(root: Path, info_data: dict[str, Any]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in server.exports(root, info_data))


@click.group(
    invoke_without_command=True,
    epilog="""Examples:

\b
  eval "$(gpu-shopper sandbox start)"
  gpu-shopper inventory --profile flux-lora --limit 5
  gpu-shopper sandbox status
  eval "$(gpu-shopper sandbox stop)"
""",
)
@click.pass_context
def sandbox(ctx: click.Context) -> None:
    """A practice market (simulated Vast.ai and TensorDock on 127.0.0.1): no account, no money.

    Instances are real local sshd processes when OpenSSH's server is installed, so
    provision, sessions ssh and transfer work end to end. Prices are simulated.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@sandbox.command()
@click.option(
    "--faults",
    is_flag=True,
    help="Rehearse trouble: slow boots, a container that exits while booting, a 429 now and then.",
)
@pass_app
def start(app: App, faults: bool) -> None:
    """Start the sandbox in the background; print the export lines (eval them)."""
    root = sandbox_root(app.environ)
    pid = server.running_pid(root)
    if pid is None:
        try:
            server.prepare_root(root)
        except (OSError, ValueError) as exc:
            raise SandboxError(f"cannot use {root}: {exc}") from None
        _spawn(root, faults)
    data = server.read_info(root)
    if data is None:  # a server holds the folder but has not said where it listens yet
        raise SandboxError(f"the sandbox in {root} is starting: try again in a moment")
    if pid is not None:
        info(f"sandbox already running (pid {data['pid']}), folder {root}")
    else:
        info(f"sandbox started (pid {data['pid']}), folder {root}")
    if not data.get("ssh"):
        warn(server.NO_SSHD)
    if not sandbox_active():  # a shell already pointed here had the banner line just now
        info("SANDBOX: simulated prices, nothing is real; 'gpu-shopper sandbox stop' ends it all")
    click.echo(_export_text(root, data), nl=False)


def _spawn(root: Path, faults: bool) -> None:
    argv = [sys.executable, "-m", server.SERVER_MODULE, str(root)] + (
        ["--faults"] if faults else []
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    with open(root / server.LOG_FILE, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own module, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # detached: survives this shell's exit and its Ctrl-C
            env=env,
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        data = server.read_info(root)
        if data is not None and data.get("pid") == proc.pid:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # a real child process starting: no injected clock applies
    if proc.poll() is None:
        proc.terminate()
    tail = (root / server.LOG_FILE).read_text(errors="replace").strip().splitlines()[-3:]
    raise SandboxError("the sandbox did not start: " + " | ".join(tail))


@sandbox.command()
@json_option
@pass_app
def status(app: App, as_json: bool) -> None:
    """Is the sandbox running, where, and how many instances it holds."""
    root = sandbox_root(app.environ)
    pid = server.running_pid(root)
    data = server.read_info(root) if pid is not None else None
    doc: dict[str, Any] = {"sandbox": True, "running": data is not None, "folder": str(root)}
    if data is not None:
        doc.update(
            pid=pid,
            faults=bool(data.get("faults")),
            ssh=bool(data.get("ssh")),
            markets=server.markets(data),
        )
        try:
            doc["instances"] = server.live_instances(data)
        except Exception as exc:  # noqa: BLE001 - a status line, not a failure
            doc["instances"] = None
            warn(f"could not count instances: {exc}")
        doc["pointed_here"] = app.environ.get("GPU_SHOPPER_SANDBOX") == str(root)
    render(as_json, doc, text=_print_status)


def _print_status(doc: dict[str, Any]) -> None:
    root = doc["folder"]
    if not doc["running"]:
        info(
            f'sandbox not running (folder {root}); start it with: eval "$(gpu-shopper sandbox start)"'
        )
        return
    counts = doc["instances"] or {}
    print_kv(
        [
            ("status", f"running (pid {doc['pid']})"),
            ("folder", root),
            *sorted(doc["markets"].items()),
            ("ssh", "real local sshd per instance" if doc["ssh"] else "none (sshd not installed)"),
            ("faults", "on" if doc["faults"] else "off"),
            ("instances", ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"),
            ("this shell", "pointed at it" if doc["pointed_here"] else "not pointed at it"),
        ]
    )


@sandbox.command()
@json_option
@pass_app
def stop(app: App, as_json: bool) -> None:
    """Destroy every sandbox instance, stop its processes, delete its folder.

    Prints the ``unset`` lines (``eval "$(gpu-shopper sandbox stop)"``)."""
    root = sandbox_root(app.environ)
    fd = server.open_pid_file(root)
    pid = server.holder(fd) if fd is not None else None
    try:
        if fd is not None and pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it ended a moment ago (a 2nd stop)
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            # Our descriptor keeps the pid file's lock in view even once the server unlinks
            # the file: it is free exactly when the server process has ended.
            while server.held(fd) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)  # a real process exiting: no injected clock applies
            if server.held(fd):
                raise SandboxError(
                    f"sandbox server {pid} did not stop within {STOP_TIMEOUT_S:.0f}s"
                )
            _reap(pid)
    finally:
        if fd is not None:
            os.close(fd)
    removed = False
    if (root / server.MARKER).is_file():
        import shutil

        from gpushopper.sandbox.sshd import kill_strays

        kill_strays(root / "sshd")  # a server that was SIGKILLed left its instances' sshd
        shutil.rmtree(root)
        removed = True
    elif root.exists():
        warn(f"{root} is not a sandbox folder: left alone")
    doc = {"sandbox": True, "stopped": pid is not None, "removed": removed, "folder": str(root)}
    render(as_json, doc, text=_print_stopped)


def _print_stopped(doc: dict[str, Any]) -> None:
    if not doc["stopped"] and not doc["removed"]:
        info("sandbox not running: nothing to stop")
    else:
        info(f"sandbox stopped: every instance destroyed, {doc['folder']} deleted")
    click.echo("unset " + " ".join(ENV_NAMES))


def _reap(pid: int) -> None:
    """Collect the exit of a server this very process started (tests), so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
