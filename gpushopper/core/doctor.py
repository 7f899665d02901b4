"""``doctor``'s checks: is this machine ready to shop, rent and clean up?

Each check is a :class:`Check` (name, ok|warn|skip|fail, one line of detail); the
report is ok when none failed (warnings and skipped providers are fine). The command
(``cli/doctor.py``) renders the report; ``to_json`` is the ``doctor --json`` document
(CLI.md pins it). What a check asks of the world (the provider factory, ``crontab -l``,
the user's home) is passed in, so each verdict is tested here without a network.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.model.errors import GpuShopperError, MissingCredentials

if TYPE_CHECKING:
    from gpushopper.providers.base import Provider
    from gpushopper.state.config import Settings
    from gpushopper.state.paths import Paths
    from gpushopper.state.store import StateStore

CRON_SWEEP_WORDS = ("cleanup-orphans", "watch --once")
CRONTAB_TIMEOUT_S = 5.0
NO_PROVIDER = "no provider has credentials: set VASTAI_API_KEY or TENSORDOCK_API_TOKEN"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | skip | fail
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing failed: warnings and skipped providers are fine."""
        return all(c.status != "fail" for c in self.checks)

    def to_json(self) -> dict[str, bool | list[dict[str, str]]]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}


def run_checks(
    settings: Settings,
    paths: Paths,
    store: StateStore,
    provider_factory: Callable[[str], Provider],
    *,
    crontab: Callable[[], list[str] | None] | None = None,
    user_home: Path | None = None,
) -> Report:
    """Every check, in the order ``doctor`` prints them."""
    checks = [config_check(settings, paths), state_check(store, paths), writable_check(paths)]
    checks += provider_checks(provider_factory)
    checks += ssh_tool_checks()
    checks.append(ssh_include_check(paths, Path.home() if user_home is None else user_home))
    checks.append(safety_net_check(paths, crontab or crontab_lines))
    return Report(checks)


def config_check(settings: Settings, paths: Paths) -> Check:
    """The config file and every setting's type."""
    from gpushopper.state.config import SETTINGS

    try:
        settings.file_data()
        for key in SETTINGS:
            settings.get(key)
    except GpuShopperError as exc:
        return Check("config", "fail", str(exc))
    where = paths.config_file
    return Check("config", "ok", f"{where}" if where.exists() else f"{where} (not created yet)")


def state_check(store: StateStore, paths: Paths) -> Check:
    try:
        state = store.read()
        detail = (
            f"{paths.state_file}: {len(state['sessions'])} sessions"
            if store.exists()
            else f"{paths.state_file} (not created yet)"
        )
    except GpuShopperError as exc:
        return Check("state", "fail", str(exc))
    return Check("state", "ok", detail)


def writable_check(paths: Paths) -> Check:
    """Can the state be written? Without it, no destroy could be recorded."""
    import os
    import tempfile

    from gpushopper.state.fs import private_dir

    folder = paths.data_dir
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
        return Check(
            "home writable",
            "fail",
            f"cannot write in {folder}: {exc.strerror or exc}; sessions could not be "
            "recorded (fix it, or point GPU_SHOPPER_HOME at a writable folder)",
        )
    return Check("home writable", "ok", str(folder))


def provider_checks(provider_factory: Callable[[str], Provider]) -> list[Check]:
    """Credentials and one cheap authenticated call per provider; a fail when none has
    credentials (nothing could be rented, nothing guarded)."""
    from gpushopper.providers.registry import provider_names

    checks: list[Check] = []
    configured = 0
    for name in provider_names():
        try:
            provider = provider_factory(name)
        except MissingCredentials as exc:
            checks.append(Check(f"{name} credentials", "skip", str(exc)))
            continue
        except GpuShopperError as exc:
            checks.append(Check(f"{name} credentials", "fail", str(exc)))
            continue
        configured += 1
        checks.append(Check(f"{name} credentials", "ok", "configured"))
        try:
            checks.append(Check(f"{name} reachable", "ok", provider.check()))
        except GpuShopperError as exc:
            checks.append(Check(f"{name} reachable", "fail", str(exc)))
    if configured == 0:
        checks.append(Check("providers", "fail", NO_PROVIDER))
    return checks


def ssh_tool_checks() -> list[Check]:
    """The OpenSSH client (a fail: no hand-off without it) and server (the test suite's)."""
    ssh = shutil.which("ssh")
    client = (
        Check("ssh client", "ok", ssh)
        if ssh
        else Check("ssh client", "fail", "OpenSSH client not found: apt-get install openssh-client")
    )
    sshd = shutil.which("sshd") or (
        "/usr/sbin/sshd" if shutil.which("sshd", path="/usr/sbin") else None
    )
    server = (
        Check("sshd (test suite)", "ok", sshd)
        if sshd
        else Check(
            "sshd (test suite)",
            "warn",
            "OpenSSH server not found; only the test suite needs it: apt-get install openssh-server",
        )
    )
    return [client, server]


def ssh_include_check(paths: Paths, user_home: Path) -> Check:
    """Does the user's ssh config include ours (so ``ssh gpu-<session>`` works)?"""
    ours = paths.ssh_config_file
    user_config = user_home / ".ssh" / "config"
    try:
        text = user_config.read_text(encoding="utf-8")
    except OSError:
        text = ""
    if str(ours) in text:
        return Check("ssh include", "ok", f"{user_config} includes {ours}")
    return Check(
        "ssh include",
        "warn",
        f"to use 'ssh gpu-<session>', add this line at the top of {user_config}: Include {ours}",
    )


def crontab_lines() -> list[str] | None:
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
    return sweep_lines(out.stdout)


def sweep_lines(crontab_text: str) -> list[str]:
    """The uncommented lines of a crontab that run a sweep."""
    return [
        line.strip()
        for line in crontab_text.splitlines()
        if not line.lstrip().startswith("#") and any(w in line for w in CRON_SWEEP_WORDS)
    ]


def safety_net_check(paths: Paths, crontab: Callable[[], list[str] | None]) -> Check:
    """Is anything here enforcing deadlines: a running ``watch`` or a cron sweep?"""
    from gpushopper.core.watcher import START_WATCH_HINT
    from gpushopper.state.pidlock import holder

    pid = holder(paths.pid_file)
    if pid is not None:
        return Check(
            "safety net", "ok", f"watch is running for this home (pid {pid or 'starting'})"
        )
    lines = crontab()
    if lines:
        return Check("safety net", "ok", f"cron sweep: {lines[0][:160]}")
    cron = (
        "crontab -l is not available here"
        if lines is None
        else "no crontab line runs cleanup-orphans or watch --once"
    )
    return Check(
        "safety net", "warn", f"watch is not running for this home and {cron}; {START_WATCH_HINT}"
    )
