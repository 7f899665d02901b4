"""The owner check: is the process that boots a session still alive (on this host)?"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from gpushopper.core.owner import ALIVE, GONE, UNKNOWN, current_owner, owner_state


def test_this_process_is_alive():
    assert owner_state(current_owner()) == ALIVE


def test_a_process_that_exited_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = {**current_owner(), "pid": child.pid}
    child.wait()
    assert owner_state(owner) == GONE


def test_a_killed_process_not_yet_reaped_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from gpushopper.core.owner import process_start

        owner = {**current_owner(), "pid": child.pid, "started": process_start(child.pid)}
        assert owner_state(owner) == ALIVE
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, still a zombie
        assert owner_state(owner) == GONE
    finally:
        child.kill()
        child.wait()


def test_a_reused_pid_is_not_the_owner():
    owner = {**current_owner(), "started": "1"}  # our pid, but another start time
    assert owner_state(owner) == GONE


def test_another_host_or_a_reboot():
    assert owner_state({**current_owner(), "host": "some-other-machine"}) == UNKNOWN
    rebooted = {**current_owner(), "boot_id": "00000000-0000-0000-0000-000000000000"}
    assert owner_state(rebooted) == (GONE if current_owner()["boot_id"] else ALIVE)


def test_nothing_is_concluded_from_a_missing_or_odd_owner():
    for owner in (None, {}, {"pid": "12"}, {"pid": True}, {"pid": -4}, "me"):
        assert owner_state(owner) == UNKNOWN


def test_an_owner_in_another_pid_namespace_is_never_called_gone():
    """A provision in a container beside watch's (same host name, same boot id): its pid
    is not one watch can look up, so a missing pid proves nothing."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer exists here
    owner = {**current_owner(), "pid": child.pid}
    assert owner_state(owner) == GONE  # in our own namespace it is provably gone
    assert owner_state({**owner, "pid_ns": "pid:[1]"}) == UNKNOWN
    assert owner_state({**owner, "pid_ns": None}) == GONE  # records from before keep working
