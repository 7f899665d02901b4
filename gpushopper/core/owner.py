"""Which process owns a booting session, and whether it is still alive.

A session in ``creating``/``provisioning``/``verifying`` records its owner: pid, host name,
boot id and the process start time (``/proc/<pid>/stat`` field 22, clock ticks since boot).
A SIGKILLed ``provision`` leaves such a session behind; ``watch`` and ``cleanup-orphans``
on the same host see that its owner is gone and destroy the instance on their next pass
instead of waiting for the provisioning timeout. A pid reused by another process does not
pass for the owner: its start time differs. On another host, or in another pid namespace
of this one (a container beside ours shares the host name and boot id, but not the pids),
nothing can be told, and the provisioning timeout decides as before.
"""

from __future__ import annotations

import os
import socket

from gpushopper.model.jsontypes import JSONObject, JSONValue

ALIVE = "alive"
GONE = "gone"
UNKNOWN = "unknown"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def boot_id() -> str | None:
    text = (_read("/proc/sys/kernel/random/boot_id") or "").strip()
    return text or None


def pid_namespace() -> str | None:
    """Which pid namespace this process sees pids in (``pid:[4026531836]``), or None."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of ``pid`` from /proc, or None without /proc or process."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ')'
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def process_start(pid: int) -> str | None:
    found = _stat(pid)
    return found[1] if found else None


def current_owner() -> JSONObject:
    """What a session records about the process that boots it."""
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pid_ns": pid_namespace(),
        "started": process_start(pid),
    }


def owner_state(owner: JSONValue) -> str:
    """``alive``, ``gone`` (provably: same host, no such process) or ``unknown``."""
    if not isinstance(owner, dict):
        return UNKNOWN
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return UNKNOWN
    if owner.get("host") != socket.gethostname():
        return UNKNOWN
    if owner.get("pid_ns") and owner["pid_ns"] != pid_namespace():
        return UNKNOWN  # its pid means nothing here (another container on this host)
    recorded_boot = owner.get("boot_id")
    if recorded_boot and boot_id() and recorded_boot != boot_id():
        return GONE  # this machine rebooted since: no process of then survives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return GONE
    except PermissionError:
        pass  # exists, owned by someone else: the start time says whether it is ours
    except OSError:
        return UNKNOWN
    found = _stat(pid)
    if found is None:
        return ALIVE  # no /proc (macOS): the pid exists, assume it is the owner
    state, started = found
    if state in ("Z", "X"):
        return GONE  # killed, not yet reaped by its parent
    if owner.get("started") and owner["started"] != started:
        return GONE  # the pid was reused by another process
    return ALIVE
