"""The practice market: start, use, stop, as a real detached process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpushopper.sandbox import server
from tests.fakes.tool import run_tool


def _gs(args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The tool pointed at a sandbox by ``env`` alone: no provider settings of the test's."""
    unset = ("VASTAI_", "TENSORDOCK_")
    return run_tool(*shlex.split(args), env=env, unset=unset, timeout=120)


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Iterator[Path]:
    """The folder a test's sandbox lives in; a server still holding it at teardown (a test
    that failed before its stop, or a stop that failed) is killed, so none outlives pytest."""
    root = tmp_path / "sandbox"
    yield root
    pid = server.running_pid(root)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.is_server(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not the sandbox server, though its argv names the module."""
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, server.SERVER_MODULE], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    yield proc
    proc.kill()
    proc.wait()


def test_start_exports_status_inventory_then_stop_leaves_nothing(sandbox_dir, isolated_home):
    root = sandbox_dir
    env = {"GPU_SHOPPER_SANDBOX_DIR": str(root)}
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


def test_stop_never_signals_a_process_that_does_not_hold_the_pid_file(
    tmp_path, gs, sleeper, monkeypatch
):
    root = tmp_path / "sandbox"
    server.prepare_root(root)  # left by a server that was SIGKILLed (or a reboot)
    (root / server.PID_FILE).write_text(f"{sleeper.pid}\n")
    assert server.running_pid(root) is None
    monkeypatch.setenv("GPU_SHOPPER_SANDBOX_DIR", str(root))
    result = gs("sandbox stop --json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["stopped"] is False and not root.exists()
    with pytest.raises(subprocess.TimeoutExpired):  # a SIGTERM would end it well within 1s
        sleeper.wait(timeout=1)


@contextlib.contextmanager
def held_pid_file(root: Path, text: str) -> Iterator[None]:
    """This process holds ``root``'s pid file lock, as a live server would, with ``text``."""
    server.prepare_root(root)
    fd = os.open(root / server.PID_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, text.encode())
        yield
    finally:
        os.close(fd)


@pytest.mark.parametrize("text", ["-1", "0", "1", " ", "12x", "SELF"])
def test_a_held_pid_file_with_a_pid_kill_would_misread_names_no_server(tmp_path, text):
    root = tmp_path / "sandbox"
    with held_pid_file(root, str(os.getpid()) if text == "SELF" else text):
        assert server.running_pid(root) is None  # kill(-1) or kill(0) would hit every process


def test_a_held_pid_file_names_its_server(tmp_path, sleeper):
    root = tmp_path / "sandbox"
    with held_pid_file(root, f"{sleeper.pid}\n"):
        assert server.running_pid(root) == sleeper.pid
    assert server.running_pid(root) is None  # the lock went with its holder


@pytest.mark.parametrize("argv", [["--help"], ["sessions", "list", "--json"], ["costs", "--json"]])
def test_ordinary_commands_never_load_the_sandbox(argv, isolated_home):
    code = (
        "import sys; from gpushopper.cli import cli; from gpushopper.cli.output import run\n"
        f"try:\n    run(cli, {argv!r})\nfinally:\n"
        "    print('LOADED:' + ','.join(m for m in sys.modules if m.startswith('gpushopper.sandbox')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "LOADED:", out.stdout + out.stderr


def test_stop_ends_the_sshd_of_a_server_that_was_killed(tmp_path, gs, monkeypatch):
    from gpushopper.sandbox.sshd import SshdPool, find_sshd, make_keypair

    if find_sshd() is None:
        pytest.skip("no sshd")
    root = tmp_path / "sandbox"
    server.prepare_root(root)
    pool = SshdPool(root / "sshd")  # as the server's pool; the server "dies" without close()
    other = SshdPool(tmp_path / "elsewhere")  # not this sandbox's: left alone
    try:
        _private, public = make_keypair(tmp_path / "k")
        pool.start("i-1", [public])
        other.start("i-2", [public])
        ours, theirs = pool.instance("i-1").process, other.instance("i-2").process
        monkeypatch.setenv("GPU_SHOPPER_SANDBOX_DIR", str(root))
        assert gs("sandbox stop").exit_code == 0
        assert ours.wait(timeout=10) is not None and not root.exists()
        assert theirs.poll() is None
    finally:
        pool.close()
        other.close()


def _processes_under(root: Path) -> list[str]:
    """Every live process whose command line names a path inside ``root`` (Linux /proc)."""
    prefix = str(root) + os.sep
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if prefix in cmdline or cmdline.rstrip().endswith(str(root)):
                found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.parametrize("server_end", ["stop", "SIGKILL"])
def test_stop_with_instances_still_rented_leaves_no_process(sandbox_dir, isolated_home, server_end):
    """The user forgets to destroy: ``sandbox stop`` ends the server and every instance's
    sshd on both markets, whether the server shuts down (its emulators and pool stop them)
    or was SIGKILLed before ``stop`` ran (``kill_strays`` finds what it left)."""
    from gpushopper.sandbox.sshd import find_sshd

    if find_sshd() is None or not Path("/proc").is_dir():
        pytest.skip("needs sshd and /proc")
    root = sandbox_dir
    env = {"GPU_SHOPPER_SANDBOX_DIR": str(root)}
    started = _gs("sandbox start", env)
    try:
        assert started.returncode == 0, started.stderr
        env.update(shlex.split(line)[1].split("=", 1) for line in started.stdout.splitlines())
        for provider in ("vastai", "tensordock"):
            rented = _gs(f"provision --provider {provider} --hours 1h --yes", env)
            assert rented.returncode == 0, rented.stderr
        status = json.loads(_gs("sandbox status --json", env).stdout)
        assert status["instances"] == {"vastai": 1, "tensordock": 1}
        assert len([p for p in _processes_under(root) if "sshd_config" in p]) == 2
        if server_end == "SIGKILL":
            pid = server.running_pid(root)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while server.is_server(pid) and time.monotonic() < deadline:
                time.sleep(0.05)  # a real process exiting: no injected clock applies
            assert len([p for p in _processes_under(root) if "sshd_config" in p]) == 2
    finally:
        stopped = _gs("sandbox stop", env)
    try:
        assert stopped.returncode == 0, stopped.stderr
        assert not root.exists()
        assert _processes_under(root) == []
    finally:
        # A failing stop (or a mutant of it) must not leave this test's sshd running.
        from gpushopper.sandbox.sshd import kill_strays

        kill_strays(root)


def test_stop_of_a_server_that_ends_just_before_its_signal_is_a_clean_stop(
    tmp_path, gs, sleeper, monkeypatch
):
    """Two ``sandbox stop`` at once: the server checked alive is gone when its SIGTERM is
    sent (ProcessLookupError). That is the stop it was asked for, never a traceback."""
    root = tmp_path / "sandbox"
    server.prepare_root(root)
    fd = os.open(root / server.PID_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{sleeper.pid}\n".encode())
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid != sleeper.pid or sig != signal.SIGTERM:
            real_kill(pid, sig)
            return
        monkeypatch.setattr(os, "kill", real_kill)
        os.close(fd)  # the server ended an instant ago: its lock is gone with it
        raise ProcessLookupError(pid)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setenv("GPU_SHOPPER_SANDBOX_DIR", str(root))
    result = gs("sandbox stop --json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["removed"] is True and not root.exists()


def test_stop_says_what_it_did_in_both_modes(tmp_path, gs, monkeypatch):
    """A folder left by a server that died is removed: said as stopped (not "nothing to
    stop"), and the --json twin says removed; a second stop has nothing to do."""
    root = tmp_path / "sandbox"
    monkeypatch.setenv("GPU_SHOPPER_SANDBOX_DIR", str(root))
    server.prepare_root(root)
    out = gs("sandbox stop")
    assert out.exit_code == 0 and "sandbox stopped: every instance destroyed" in out.stderr
    assert out.stdout.startswith("unset ") and not root.exists()
    again = gs("sandbox stop")
    assert "sandbox not running: nothing to stop" in again.stderr
    server.prepare_root(root)
    doc = gs("sandbox stop --json").json()
    assert (doc["stopped"], doc["removed"], doc["folder"]) == (False, True, str(root.resolve()))
