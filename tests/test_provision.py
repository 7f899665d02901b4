"""Provisioning end to end: emulators + a real sshd, OpenSSH's ssh for the hand-off."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from gpushopper.state.store import StateStore


def ssh_run(command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run the printed ssh command (plus BatchMode, so a refused key fails fast)."""
    argv = shlex.split(command)
    argv[1:1] = ["-o", "BatchMode=yes", "-F", "/dev/null"]
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=30, env=env)


def state(home: Path) -> dict:
    return StateStore(home / "state.json").read()


@pytest.mark.parametrize("provider_fixture, flags", [("vast", "--provider vastai"), ("tensordock", "--provider tensordock")])
def test_provision_ssh_done_leaves_nothing(request, gs, isolated_home, provider_fixture, flags):
    emu = request.getfixturevalue(provider_fixture)
    result = gs(f"provision {flags} --gpu 4090 --hours 1h --yes --json")
    assert result.exit_code == 0, result.stderr
    session = result.json()
    assert session["status"] == "running"
    assert session["instance_id"]
    assert session["label"].startswith("gpu-shopper:")
    assert len(emu.live_instances()) == 1
    # the hand-off: OpenSSH logs in with the printed command and sees the GPU
    login = ssh_run(session["ssh"]["command"], "nvidia-smi", "-L")
    assert login.returncode == 0, login.stderr
    assert "4090" in login.stdout
    # key file private; never printed
    key_path = Path(session["ssh"]["key_path"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    private = key_path.read_text()
    assert private.strip().splitlines()[1] not in result.stdout + result.stderr
    shown = gs(f"sessions show {session['id']} --json")
    assert private.strip().splitlines()[1] not in shown.stdout
    assert shown.json()["timings"]["time_to_ssh_s"] >= shown.json()["timings"]["time_to_running_s"]
    # done: destroyed, confirmed, costed
    done = gs(f"sessions done {session['id']} --json")
    assert done.exit_code == 0, done.stderr
    assert done.json()["status"] == "ended"
    assert done.json()["cost_usd"] > 0
    assert emu.live_instances() == []
    assert state(isolated_home)["sessions"][session["id"]]["status"] == "ended"
