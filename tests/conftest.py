"""Shared fixtures: every test gets its own home, environment and working directory."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
def gs():
    """Run ``gpu-shopper ARGS`` in-process through the real error handling."""
    from click.testing import CliRunner

    from gpushopper.cli import cli
    from gpushopper.cli.output import run

    def invoke(args: str | Sequence[str], input: str | None = None) -> CliResult:
        argv = shlex.split(args) if isinstance(args, str) else list(args)
        runner = CliRunner()
        with runner.isolation(input=input) as streams:
            code = run(cli, argv)
            out = streams[0].getvalue().decode()
            err = streams[1].getvalue().decode()
        return CliResult(code, out, err)

    return invoke
