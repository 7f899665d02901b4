"""The practice market: start, use, stop, as a real detached process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from gpushopper.sandbox import server


def _gs(args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gpushopper", *shlex.split(args)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_start_exports_status_inventory_then_stop_leaves_nothing(tmp_path, isolated_home):
    root = tmp_path / "sandbox"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VASTAI_", "TENSORDOCK_"))}
    env["GPU_SHOPPER_SANDBOX_DIR"] = str(root)
    started = _gs("sandbox start", env)
    try:
        assert started.returncode == 0, started.stderr
        exported = dict(shlex.split(line)[1].split("=", 1) for line in started.stdout.splitlines())
        assert exported["GPU_SHOPPER_HOME"] == str(root / "home")
        assert exported["GPU_SHOPPER_SANDBOX"] == str(root)
        assert exported["VASTAI_API_URL"].startswith("http://127.0.0.1:")
        assert "SANDBOX" in started.stderr
        pid = server.running_pid(root)
        assert pid is not None
        env.update(exported)
        again = _gs("sandbox start", env)  # idempotent: the same market, the same exports
        assert again.returncode == 0 and again.stdout == started.stdout
        status = _gs("sandbox status --json", env)
        doc = json.loads(status.stdout)
        assert doc["running"] is True and doc["pid"] == pid and doc["sandbox"] is True
        offers = _gs("inventory --provider vastai --limit 3 --json", env)
        assert offers.returncode == 0, offers.stderr
    finally:
        stopped = _gs("sandbox stop", env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("unset GPU_SHOPPER_SANDBOX")
    assert not root.exists()
    assert not server.is_server(pid)


def test_stop_refuses_to_delete_a_folder_that_is_not_a_sandbox(tmp_path, gs, monkeypatch):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    monkeypatch.setenv("GPU_SHOPPER_SANDBOX_DIR", str(root))
    result = gs("sandbox stop")
    assert result.exit_code == 0
    assert (root / "precious.txt").read_text() == "keep me"
    assert "not a sandbox folder" in result.stderr
