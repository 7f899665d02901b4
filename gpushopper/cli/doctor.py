"""``gpu-shopper doctor``: is this machine ready to shop, rent and clean up?"""

from __future__ import annotations

import shutil

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, json_option, render
from gpushopper.model.errors import GpuShopperError, MissingCredentials


def _check(name: str, status: str, detail: str) -> dict[str, str]:
    return {"check": name, "status": status, "detail": detail}


def run_checks(app: App) -> list[dict[str, str]]:
    from gpushopper.providers.registry import provider_names
    from gpushopper.state.config import SETTINGS

    checks: list[dict[str, str]] = []
    # Config file and every setting's type.
    try:
        app.settings.file_data()
        for key in SETTINGS:
            app.settings.get(key)
        where = app.paths.config_file
        checks.append(
            _check("config", "ok", f"{where}" if where.exists() else f"{where} (not created yet)")
        )
    except GpuShopperError as exc:
        checks.append(_check("config", "fail", str(exc)))

    # State file.
    try:
        state = app.store.read()
        detail = (
            f"{app.paths.state_file}: {len(state['sessions'])} sessions"
            if app.store.exists()
            else f"{app.paths.state_file} (not created yet)"
        )
        checks.append(_check("state", "ok", detail))
    except GpuShopperError as exc:
        checks.append(_check("state", "fail", str(exc)))

    checks.append(_writable_check(app))

    # Credentials and one cheap authenticated call per provider.
    configured = 0
    for name in provider_names():
        try:
            provider = app.provider(name)
        except MissingCredentials as exc:
            checks.append(_check(f"{name} credentials", "skip", str(exc)))
            continue
        except GpuShopperError as exc:
            checks.append(_check(f"{name} credentials", "fail", str(exc)))
            continue
        configured += 1
        checks.append(_check(f"{name} credentials", "ok", "configured"))
        try:
            detail = provider.check()
            checks.append(_check(f"{name} reachable", "ok", detail))
        except GpuShopperError as exc:
            checks.append(_check(f"{name} reachable", "fail", str(exc)))
    if configured == 0:
        checks.append(
            _check(
                "providers",
                "fail",
                "no provider has credentials: set VASTAI_API_KEY or TENSORDOCK_API_TOKEN",
            )
        )

    # SSH tools.
    ssh = shutil.which("ssh")
    checks.append(
        _check("ssh client", "ok", ssh)
        if ssh
        else _check(
            "ssh client", "fail", "OpenSSH client not found: apt-get install openssh-client"
        )
    )
    sshd = shutil.which("sshd") or (
        "/usr/sbin/sshd" if shutil.which("sshd", path="/usr/sbin") else None
    )
    checks.append(
        _check("sshd (test suite)", "ok", sshd)
        if sshd
        else _check(
            "sshd (test suite)",
            "warn",
            "OpenSSH server not found; only the test suite needs it: apt-get install openssh-server",
        )
    )
    checks.append(_ssh_include_check(app))
    checks.append(_safety_net_check(app))
    return checks


CRON_SWEEP_WORDS = ("cleanup-orphans", "watch --once")
CRONTAB_TIMEOUT_S = 5.0


def _crontab_lines() -> list[str] | None:
    """This user's crontab lines that run a gpu-shopper sweep; None when ``crontab -l``
    cannot be asked (no cron installed, no crontab, not allowed, too slow)."""
    import subprocess

    crontab = shutil.which("crontab")
    if crontab is None:
        return None
    try:
        out = subprocess.run(  # noqa: S603 - a fixed argv
            [crontab, "-l"],
            capture_output=True,
            text=True,
            timeout=CRONTAB_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return []  # "no crontab for USER"
    return [
        line.strip()
        for line in out.stdout.splitlines()
        if not line.lstrip().startswith("#") and any(w in line for w in CRON_SWEEP_WORDS)
    ]


def _safety_net_check(app: App) -> dict[str, str]:
    """Is anything here enforcing deadlines: a running ``watch`` or a cron sweep?"""
    from gpushopper.cli.watch import watch_holder
    from gpushopper.core.watcher import START_WATCH_HINT

    pid = watch_holder(app)
    if pid is not None:
        return _check(
            "safety net", "ok", f"watch is running for this home (pid {pid or 'starting'})"
        )
    lines = _crontab_lines()
    if lines:
        return _check("safety net", "ok", f"cron sweep: {lines[0][:160]}")
    cron = (
        "crontab -l is not available here"
        if lines is None
        else "no crontab line runs cleanup-orphans or watch --once"
    )
    return _check(
        "safety net",
        "warn",
        f"watch is not running for this home and {cron}; {START_WATCH_HINT}",
    )


def _writable_check(app: App) -> dict[str, str]:
    """Can the state be written? Without it, no destroy could be recorded."""
    import os
    import tempfile

    from gpushopper.state.fs import private_dir

    folder = app.paths.data_dir
    try:
        private_dir(folder)  # 0700, as every command makes it: doctor may be the first
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=folder)
        try:
            os.write(fd, b"gpu-shopper doctor write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return _check(
            "home writable",
            "fail",
            f"cannot write in {folder}: {exc.strerror or exc}; sessions could not be "
            "recorded (fix it, or point GPU_SHOPPER_HOME at a writable folder)",
        )
    return _check("home writable", "ok", str(folder))


def _ssh_include_check(app: App) -> dict[str, str]:
    from pathlib import Path

    ours = app.paths.ssh_config_file
    user_config = Path.home() / ".ssh" / "config"
    line = f"Include {ours}"
    try:
        text = user_config.read_text(encoding="utf-8")
    except OSError:
        text = ""
    if str(ours) in text:
        return _check("ssh include", "ok", f"{user_config} includes {ours}")
    return _check(
        "ssh include",
        "warn",
        f"to use 'ssh gpu-<session>', add this line at the top of {user_config}: {line}",
    )


@click.command(
    epilog="Example: gpu-shopper doctor --json | jq '.checks[] | select(.status==\"fail\")'"
)
@json_option
@pass_app
def doctor(app: App, as_json: bool) -> int:
    """Check config, credentials, the state file, provider reachability and SSH tools.

    Exits 0 only when nothing failed (warnings and skipped providers are fine).
    """
    checks = run_checks(app)
    ok = all(c["status"] != "fail" for c in checks)
    table = Table(
        ["CHECK", "STATUS", "DETAIL"],
        rows=lambda doc: [(c["check"], c["status"], c["detail"]) for c in doc["checks"]],
    )
    render(as_json, {"ok": ok, "checks": checks}, table=table)
    return 0 if ok else 1
