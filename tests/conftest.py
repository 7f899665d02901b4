"""Shared fixtures: every test gets its own home, environment and working directory."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_SCRUB_PREFIXES = ("VASTAI_", "VAST_", "TENSORDOCK_", "GPU_SHOPPER_", "NO_COLOR")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point gpu-shopper (and HOME/XDG) at a temporary folder; scrub provider env vars."""
    for name in list(os.environ):
        if name.startswith(_SCRUB_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "gs-home"
    home.mkdir()
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("GPU_SHOPPER_HOME", str(home))
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user_home / ".config"))
    # The fake instances are this machine: keep on-instance deadline files in the sandbox.
    monkeypatch.setenv("GPU_SHOPPER_DEADLINE_FILE", str(tmp_path / "instance-deadline"))
    # ...and the jobs that `run` starts there.
    monkeypatch.setenv("GPU_SHOPPER_JOBS_REMOTE_ROOT", str(tmp_path / "instance-jobs"))
    monkeypatch.chdir(work)
    return home


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self):  # noqa: ANN201
        import json

        return json.loads(self.stdout)


@pytest.fixture
def gs(request):
    """Run ``gpu-shopper ARGS`` in-process through the real error handling.

    A crash (an exception the tool would report as ``internal``) is re-raised: it fails the
    test, rather than passing an assertion that expects exit 1 (the simonw/llm pattern).
    A test of the crash path itself says so with ``@pytest.mark.internal_errors``."""
    from click.testing import CliRunner

    from gpushopper.cli import cli
    from gpushopper.cli.output import run

    reraise = request.node.get_closest_marker("internal_errors") is None

    def invoke(args: str | Sequence[str], input: str | None = None) -> CliResult:
        argv = shlex.split(args) if isinstance(args, str) else list(args)
        runner = CliRunner()
        with runner.isolation(input=input) as streams:
            code = run(cli, argv, reraise_internal=reraise)
            out = streams[0].getvalue().decode()
            err = streams[1].getvalue().decode()
        return CliResult(code, out, err)

    return invoke


# -- provider emulators wired to the real sshd pool and to the tool's settings -----------------
from gpushopper.sandbox.tensordock import TensorDockEmulator  # noqa: E402
from gpushopper.sandbox.vastai import VastEmulator  # noqa: E402
from tests.fakes.fixtures import sshd_pool, tensordock_emulator, vast_emulator  # noqa: E402,F401


@pytest.fixture
def fast_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off in milliseconds in tests."""
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_HTTP_BACKOFF", "0.01")
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_HTTP_TIMEOUT", "5")


def _market(
    name: str,
    make: Callable[..., Any],
    seed: Callable[[Any], object],
    env: Callable[[Any, str], dict[str, str]],
    doc: str,
) -> Any:
    """A fixture: a started, seeded emulator whose instances are real sshds, and the tool's
    environment (``env(emulator, ssh_user)``) pointed at it; stopped at teardown."""

    def market(monkeypatch: pytest.MonkeyPatch, sshd_pool, fast_http):  # noqa: F811
        emu = make(ssh_backend=sshd_pool)
        emu.start()
        try:
            seed(emu)
            for var, value in env(emu, sshd_pool.login_user).items():
                monkeypatch.setenv(var, value)
            yield emu
        finally:
            emu.stop()

    market.__doc__ = doc
    return pytest.fixture(market, name=name)


tensordock = _market(
    "tensordock",
    TensorDockEmulator,
    TensorDockEmulator.seed_default,
    lambda emu, user: {
        "TENSORDOCK_API_TOKEN": emu.api_token,
        "TENSORDOCK_API_URL": emu.url,
        "TENSORDOCK_SSH_USER": user,
    },
    "A seeded TensorDock emulator whose VMs are real sshds; the tool is configured for it.",
)
vast = _market(
    "vast",
    VastEmulator,
    VastEmulator.seed_default_offers,
    lambda emu, user: {
        "VASTAI_API_KEY": emu.api_key,
        "VASTAI_API_URL": emu.url,
        "VASTAI_SSH_USER": user,
    },
    "A seeded Vast.ai emulator whose instances are real sshds; the tool is configured for it.",
)


class FakeTime:
    """A monotonic clock that moves only when the tool sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def mono(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        self.slept += max(0.0, seconds)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """Boot timeouts, SSH retries and destroy confirmations of in-process commands run on
    this clock: a 3-second timeout is tested without waiting 3 seconds."""
    from gpushopper.cli import App

    clock = FakeTime()
    monkeypatch.setattr(App, "mono", staticmethod(clock.mono))
    monkeypatch.setattr(App, "sleep", staticmethod(clock.sleep))
    return clock
