"""The on-instance deadline: the generated scripts run for real against the emulators."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gpushopper.core import deadline
from gpushopper.model.units import iso, parse_iso, utcnow
from tests.fakes.records import read_state
from tests.waiting import wait_for

MARKER = deadline.MARKER


def _parent(pid: int) -> int | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat_line[stat_line.rfind(")") + 2 :].split()[1])


def watchers_of(deadline_file: Path) -> list[int]:
    """Pids of live watcher processes for ``deadline_file`` (zombies excluded).

    The watcher shell forks for ``$(cat ...)``, ``$(date ...)`` and ``sleep``: until the
    child execs, it has the watcher's very command line. Such a child (its parent is a
    watcher) is not a second watcher; counting it made the "no second watcher" tests fail
    about 3 runs in 19.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if MARKER.encode() in argv and str(deadline_file).encode() in argv:
            found.append(int(entry.name))
    parents = {pid: _parent(pid) for pid in found}
    # A vanished process (no stat any more) was a short-lived child, not the watcher.
    return [pid for pid, parent in parents.items() if parent is not None and parent not in found]


class Runner:
    """Runs generated snippets with ``sh`` in their own process group; kills them all after."""

    def __init__(self) -> None:
        self.groups: list[int] = []
        self.files: list[Path] = []

    def run(self, script: str, path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        path.write_text(script)
        proc = subprocess.Popen(
            ["sh", str(path)],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.groups.append(proc.pid)
        if "GS_DEADLINE_FILE" in env:
            self.files.append(Path(env["GS_DEADLINE_FILE"]))
        # Returns at once (the watcher is in the background, its output in <file>.log):
        # a launcher holding the pipes open would hang here.
        out, err = proc.communicate(timeout=10)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def close(self) -> None:
        pids = {pid for f in self.files for pid in watchers_of(f)}
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner()
    try:
        yield r
    finally:
        r.close()


def live_ids(emu: Any) -> set[int]:
    return {int(i["id"]) for i in emu.live_instances()}


# -- Vast.ai ----------------------------------------------------------------------------------
def test_vast_onstart_destroys_its_own_instance_at_a_2s_deadline(
    vast, gs, isolated_home, tmp_path, runner
):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    iid = int(session["instance_id"])
    onstart = vast.instances[iid]["onstart"]
    saved = read_state(isolated_home)["sessions"][session["id"]]
    assert saved["deadline_on_instance"] is True
    assert (
        saved["deadline_file"] == os.environ["GPU_SHOPPER_DEADLINE_FILE"]
    )  # sandboxed by conftest
    # the snippet carries the API base and the instance's own key variables, never ours
    assert onstart.startswith("# gpu-shopper:")
    assert vast.api_key not in onstart
    assert f"{vast.url}/api/v0/instances/" in onstart
    assert "CONTAINER_API_KEY" in onstart and "CONTAINER_ID" in onstart
    assert len(onstart) < 1600  # room left for a template's onstart under Vast's 4096

    dfile = tmp_path / "vast" / "deadline"
    dfile.parent.mkdir()
    due = int(time.time()) + 2
    dfile.write_text(f"{due}\n")  # as if an extend had written it: the snippet keeps it
    env = {
        "CONTAINER_ID": str(iid),
        "CONTAINER_API_KEY": vast.instance_key_for(iid),
        "GS_DEADLINE_FILE": str(dfile),
    }
    done = runner.run(onstart, tmp_path / "onstart.sh", env)
    assert done.returncode == 0, done.stderr
    assert iid in live_ids(vast)  # the launcher returned before the deadline
    assert dfile.read_text().strip() == str(due)
    wait_for(lambda: iid not in live_ids(vast), 15, "the instance to destroy itself")
    assert time.time() >= due - 1
    deletes = [r for r in vast.requests if r["method"] == "DELETE"]
    assert deletes and all(r["auth_ok"] for r in deletes)
    assert deletes[-1]["path"].rstrip("/") == f"/api/v0/instances/{iid}"
    log = Path(f"{dfile}.log").read_text()
    assert "deadline" in log and vast.instance_key_for(iid) not in log


def test_another_instances_key_cannot_destroy_this_one(vast, gs, tmp_path, runner):
    mine = vast.create_instance_directly(label="mine")
    other = vast.create_instance_directly(label="other")
    script = deadline.render_script(
        "vastai",
        path="/nonexistent/deadline",
        hard_epoch=int(time.time()) - 1,
        relative_s=0,
        api_url=vast.url,
    )
    dfile = tmp_path / "deadline"
    env = {
        "CONTAINER_ID": str(mine["id"]),
        "CONTAINER_API_KEY": vast.instance_key_for(other["id"]),
        "GS_DEADLINE_FILE": str(dfile),
    }
    assert runner.run(script, tmp_path / "s.sh", env).returncode == 0

    def refused() -> list[dict[str, Any]]:
        return [
            r
            for r in list(vast.requests)
            if r["method"] == "DELETE" and r["path"].rstrip("/").endswith(f"/{mine['id']}")
        ]

    tries = wait_for(refused, 10, "the watcher's DELETE")
    assert not any(r["auth_ok"] for r in tries)
    assert {int(mine["id"]), int(other["id"])} <= live_ids(vast)


@pytest.mark.parametrize("broken", [("curl",), ("curl", "wget")])
def test_without_curl_it_falls_back_to_wget_then_python(vast, tmp_path, runner, broken):
    instance = vast.create_instance_directly(label="fallback")
    iid = int(instance["id"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in broken:  # present but failing, like a curl without TLS support
        fake = bin_dir / name
        fake.write_text("#!/bin/sh\nexit 7\n")
        fake.chmod(0o755)
    script = deadline.render_script(
        "vastai", path="/x", hard_epoch=int(time.time()) - 1, relative_s=0, api_url=vast.url
    )
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CONTAINER_ID": str(iid),
        "CONTAINER_API_KEY": vast.instance_key_for(iid),
        "GS_DEADLINE_FILE": str(tmp_path / "deadline"),
    }
    assert runner.run(script, tmp_path / "s.sh", env).returncode == 0
    wait_for(lambda: iid not in live_ids(vast), 10, "the fallback DELETE")


def test_running_the_snippet_again_starts_no_second_watcher(vast, tmp_path, runner):
    from gpushopper.cli import App

    instance = vast.create_instance_directly(label="twice")
    iid = int(instance["id"])
    now = utcnow()
    record = {
        "provider": "vastai",
        "created_at": iso(now),
        "reservation_s": 3600.0,
        "reservation_ends_at": iso(now + timedelta(hours=1)),
        "hard_max_at": iso(now + timedelta(seconds=2)),  # the hard maximum comes first
    }
    script = deadline.deadline_script_for(App(), type("P", (), {"NAME": "vastai"}), record)
    assert script is not None
    assert record["deadline_file"] == os.environ["GPU_SHOPPER_DEADLINE_FILE"]
    dfile = tmp_path / "deadline"
    env = {
        "CONTAINER_ID": str(iid),
        "CONTAINER_API_KEY": vast.instance_key_for(iid),
        "GS_DEADLINE_FILE": str(dfile),
    }
    assert runner.run(script, tmp_path / "a.sh", env).returncode == 0
    first = wait_for(lambda: watchers_of(dfile), 5, "the watcher")
    written = dfile.read_text()
    assert int(written) == int((now + timedelta(seconds=2)).timestamp())
    assert runner.run(script, tmp_path / "b.sh", env).returncode == 0  # a container restart
    assert watchers_of(dfile) == first and len(first) == 1
    assert Path(f"{dfile}.pid").read_text().strip() == str(first[0])
    assert dfile.read_text() == written
    wait_for(lambda: iid not in live_ids(vast), 15, "the hard maximum to destroy it")


def test_template_onstart_runs_after_the_snippet(vast, gs):
    session = gs(
        ["provision", "--provider", "vastai", "--template", "PyTorch (Vast)", "--yes", "--json"]
    )
    assert session.exit_code == 0, session.stderr
    onstart = vast.instances[int(session.json()["instance_id"])]["onstart"]
    assert onstart.startswith("# gpu-shopper:")
    assert onstart.rstrip().endswith("entrypoint.sh")


# -- TensorDock -------------------------------------------------------------------------------
def test_tensordock_runcmd_powers_off_at_the_deadline(tensordock, gs, tmp_path, runner):
    session = gs("provision --provider tensordock --gpu 4090 --yes --json").json()
    assert session["status"] == "running"
    body = next(r["json"] for r in tensordock.requests if r["method"] == "POST")
    runcmd = body["data"]["attributes"]["cloud_init"]["runcmd"]
    snippet = runcmd[-1]
    assert snippet.startswith("# gpu-shopper:") and "poweroff" in snippet
    assert any("/home/user/.ssh" in c for c in runcmd[:-1])

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "powered-off"
    for name in ("poweroff", "shutdown"):  # never the real ones
        fake = bin_dir / name
        # records the time, then ends the watcher (its parent) as a real power-off would
        fake.write_text(f'#!/bin/sh\necho "{name} $(date +%s)" >>"{marker}"\nkill $PPID\n')
        fake.chmod(0o755)
    boot_dir = tmp_path / "per-boot"
    boot_dir.mkdir()
    dfile = tmp_path / "td" / "deadline"
    dfile.parent.mkdir()
    dfile.write_text(f"{int(time.time()) + 1}\n")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GS_POWEROFF": str(bin_dir / "poweroff"),
        "GS_DEADLINE_FILE": str(dfile),
        "GS_BOOT_DIR": str(boot_dir),
    }
    assert runner.run(snippet, tmp_path / "runcmd.sh", env).returncode == 0
    extended = int(time.time()) + 3
    swap = dfile.with_name("deadline.new")
    swap.write_text(f"{extended}\n")
    swap.replace(dfile)  # an extend moved it before it fired (written aside, then renamed)
    # a reboot runs the per-boot launcher: it finds the watcher and starts no second one
    boot = boot_dir / "gpu-shopper-deadline"
    assert boot.stat().st_mode & stat.S_IXUSR
    again = subprocess.run(["sh", str(boot)], env={**os.environ, **env}, timeout=10)
    assert again.returncode == 0
    assert len(watchers_of(dfile)) == 1
    line = wait_for(lambda: marker.exists() and marker.read_text(), 15, "the fake poweroff")
    name, when = line.split()[:2]
    assert name == "poweroff" and int(when) >= extended
    wait_for(lambda: not watchers_of(dfile), 5, "the watcher to end with the power-off")


def test_tensordock_falls_back_to_poweroff_on_path(tmp_path, runner):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "powered-off"
    for name in ("poweroff", "shutdown"):
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\necho {name} >>"{marker}"\nkill $PPID\n')
        fake.chmod(0o755)
    script = deadline.render_script(
        "tensordock", path="/x", hard_epoch=int(time.time()) - 1, relative_s=0
    )
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GS_DEADLINE_FILE": str(tmp_path / "deadline"),
        "GS_BOOT_DIR": "",
    }
    assert runner.run(script, tmp_path / "s.sh", env).returncode == 0
    assert wait_for(lambda: marker.exists() and marker.read_text(), 5, "poweroff") == "poweroff\n"


def test_unknown_provider_gets_no_script():
    assert deadline.deadline_script_for(object(), type("P", (), {"NAME": "other"}), {}) is None


def test_generated_scripts_are_valid_posix_sh(tmp_path):
    for name in ("vastai", "tensordock"):
        script = deadline.render_script(
            name, path="/x/deadline", hard_epoch=2_000_000_000, relative_s=60, api_url="https://a.b"
        )
        path = tmp_path / f"{name}.sh"
        path.write_text(script)
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0


# -- extend moves it over SSH -----------------------------------------------------------------
def test_extend_pushes_the_deadline_and_a_failed_push_only_warns(
    vast, gs, isolated_home, tmp_path, monkeypatch, sshd_pool
):
    remote = tmp_path / "remote" / "deadline"
    monkeypatch.setenv("GPU_SHOPPER_DEADLINE_FILE", str(remote))
    session = gs("provision --provider vastai --gpu 4090 --hours 1h --yes --json").json()
    sid = session["id"]
    assert read_state(isolated_home)["sessions"][sid]["deadline_file"] == str(remote)

    ok = gs(f"sessions extend {sid} --hours 2h --json")
    assert ok.exit_code == 0, ok.stderr
    saved = read_state(isolated_home)["sessions"][sid]
    ends = parse_iso(saved["reservation_ends_at"])
    hard = parse_iso(saved["hard_max_at"])
    assert ends and hard
    expected = int(min(ends + timedelta(minutes=15), hard).timestamp())
    assert remote.read_text().strip() == str(expected)
    assert saved["deadline_pushed_at"] and not saved.get("deadline_push_error")

    sshd_pool.stop(f"vastai:{session['instance_id']}")  # the instance is unreachable now
    monkeypatch.setattr(deadline, "PUSH_TIMEOUT_S", 1.0)
    failed = gs(f"sessions extend {sid} --hours 1h --json")
    assert failed.exit_code == 0, failed.stderr
    assert "could not move the on-instance deadline" in failed.stderr
    assert remote.read_text().strip() == str(expected)  # unchanged
    saved = read_state(isolated_home)["sessions"][sid]
    assert saved["deadline_push_error"]
    assert failed.json()["reservation_ends_at"] > ok.json()["reservation_ends_at"]


def test_default_deadline_files_without_the_test_override(monkeypatch):
    from gpushopper.cli import App

    monkeypatch.delenv("GPU_SHOPPER_DEADLINE_FILE")
    assert deadline.deadline_file_for(App(), "vastai") == "/root/.gpu-shopper/deadline"
    assert deadline.deadline_file_for(App(), "tensordock") == "/var/lib/gpu-shopper/deadline"


def test_unreadable_deadline_file_is_retried_quickly(tmp_path, runner):
    """A half-written or garbled file must not park the watcher on its 30 s nap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "powered-off"
    fake = bin_dir / "poweroff"
    fake.write_text(f'#!/bin/sh\necho poweroff >>"{marker}"\nkill $PPID\n')
    fake.chmod(0o755)
    dfile = tmp_path / "deadline"
    dfile.write_text("garbage\n")
    script = deadline.render_script(
        "tensordock", path="/x", hard_epoch=int(time.time()) + 3600, relative_s=3600
    )
    env = {"GS_POWEROFF": str(fake), "GS_DEADLINE_FILE": str(dfile), "GS_BOOT_DIR": ""}
    started = time.monotonic()
    assert runner.run(script, tmp_path / "s.sh", env).returncode == 0
    swap = tmp_path / "deadline.new"
    swap.write_text(f"{int(time.time()) + 1}\n")
    swap.replace(dfile)
    wait_for(lambda: marker.exists(), 10, "poweroff after the file became readable")
    assert time.monotonic() - started < 10
