"""The practice market: the Vast.ai and TensorDock emulators on 127.0.0.1, in one detached
process, with its own folder (``root``) that holds everything it makes.

``root`` holds ``sandbox.pid`` (the server's pid, locked while it lives), ``sandbox.json`` (written once both
markets listen: urls, keys, ssh user; the file ``gpu-shopper sandbox start`` waits for),
``sandbox.log``, ``sshd/`` (one real OpenSSH sshd per instance when sshd is installed) and
``home/`` (the ``GPU_SHOPPER_HOME`` the tool uses while pointed at the sandbox, so real state
is never touched). ``MARKER`` proves a folder is ours before ``stop`` deletes it.

Stdlib only, like the emulators: ``python -m gpushopper.sandbox.server ROOT [--faults]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

MARKER = ".gpu-shopper-sandbox"
PID_FILE = "sandbox.pid"
INFO_FILE = "sandbox.json"
LOG_FILE = "sandbox.log"
SERVER_MODULE = "gpushopper.sandbox.server"
NO_SSHD = (
    "OpenSSH server (sshd) not found: sandbox instances have no SSH, so provision stops at "
    "SSH verification (and destroys the instance); install openssh-server for the full path"
)
# --faults: what a rehearsal meets on a real market.
SLOW_BOOT_S = 20.0
RATE_LIMIT_EVERY_S = 15.0


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def prepare_root(root: Path) -> None:
    """Create ``root`` (0700) with its marker; refuse a non-empty folder that is not ours."""
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise ValueError(f"{root} exists and is not a gpu-shopper sandbox folder")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / MARKER).write_text("gpu-shopper sandbox: everything here is deleted by stop\n")
    (root / "home").mkdir(mode=0o700, exist_ok=True)


def read_info(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def held(fd: int) -> bool:
    """True while some live process holds the server's exclusive lock on this pid file.

    The lock goes with the server's life (the kernel drops it when the process exits, however
    it exits), so a pid file left by a SIGKILL or a reboot never names a live server."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def open_pid_file(root: Path) -> int | None:
    """A read-only descriptor on ``root``'s pid file (for ``holder``/``held``), or None."""
    try:
        return os.open(root / PID_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None


def holder(fd: int) -> int | None:
    """The pid of the live sandbox server that holds this pid file, else None.

    Three proofs before a pid may be signalled: the lock is held (the writer is alive), the
    pid is a plain positive number (never 0 or -1, which ``kill`` reads as a whole process
    group or every process), and, where /proc exists, its command line is the server's."""
    if not held(fd):
        return None
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if not text.isdigit() or int(text) <= 1:
        return None
    pid = int(text)
    return pid if pid != os.getpid() and is_server(pid) else None


def is_server(pid: int) -> bool:
    """True when ``pid`` is alive and is a sandbox server (its command line says so)."""
    if pid <= 1:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc: the pid file's lock (``holder``) is the proof
    return SERVER_MODULE.encode() in cmdline


def running_pid(root: Path) -> int | None:
    fd = open_pid_file(root)
    if fd is None:
        return None
    try:
        return holder(fd)
    finally:
        os.close(fd)


def _lock_pid_file(root: Path) -> int:
    """Take the pid file's exclusive lock for this process's lifetime and write our pid."""
    import fcntl

    fd = os.open(root / PID_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another sandbox server is running in {root}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    return fd  # never closed: the kernel releases the lock when this process ends


def exports(root: Path, info: dict[str, Any]) -> list[tuple[str, str]]:
    """The environment that points gpu-shopper at this sandbox."""
    return [
        ("GPU_SHOPPER_SANDBOX", str(root)),
        ("GPU_SHOPPER_HOME", str(root / "home")),
        ("VASTAI_API_URL", info["vastai"]["url"]),
        ("VASTAI_API_KEY", info["vastai"]["key"]),
        ("VASTAI_SSH_USER", info["ssh_user"]),
        ("TENSORDOCK_API_URL", info["tensordock"]["url"]),
        ("TENSORDOCK_API_TOKEN", info["tensordock"]["key"]),
        ("TENSORDOCK_SSH_USER", info["ssh_user"]),
    ]


def markets(info: dict[str, Any]) -> dict[str, str]:
    """Market name -> base URL, for status lines."""
    return {name: info[name]["url"] for name in ("vastai", "tensordock")}


def _get_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 - 127.0.0.1 only
        return json.loads(reply.read().decode())


def live_instances(info: dict[str, Any]) -> dict[str, int]:
    """How many instances each market holds now (asked over HTTP, as a client would)."""
    vast = _get_json(info["vastai"]["url"] + "/api/v1/instances/", info["vastai"]["key"])
    tensor = _get_json(info["tensordock"]["url"] + "/instances", info["tensordock"]["key"])
    td_rows = (tensor.get("data") or {}).get("instances") or [] if isinstance(tensor, dict) else []
    return {"vastai": len(vast.get("instances") or []), "tensordock": len(td_rows)}


def serve(root: Path, faults: bool) -> int:
    from gpushopper.sandbox.sshd import SshdPool, find_sshd, login_user
    from gpushopper.sandbox.tensordock import TensorDockEmulator
    from gpushopper.sandbox.vastai import VastEmulator

    prepare_root(root)
    _lock_pid_file(root)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal that started us may close

    pool = SshdPool(root / "sshd") if find_sshd() else None
    vast = VastEmulator(api_key="sandbox-vast-" + secrets.token_hex(12), ssh_backend=pool)
    tensor = TensorDockEmulator(api_token="sandbox-td-" + secrets.token_hex(12), ssh_backend=pool)
    vast.seed_default_offers()
    vast.generate_offers(60, seed=14)
    tensor.seed_default()
    if faults:
        vast.boot = {"mode": "ok", "loading_after": 3.0, "running_after": SLOW_BOOT_S}
        tensor.boot = {"mode": "ok", "running_after": SLOW_BOOT_S}
        # One cheap, reliable-looking RTX 4090 whose container exits while booting.
        vast.add_offer(
            gpu_name="RTX 4090",
            dph_base=0.31,
            reliability=0.991,
            geolocation="Ohio, US",
            boot={"mode": "exited", "loading_after": 2.0, "running_after": 6.0},
        )
    vast.start()
    tensor.start()
    info = {
        "pid": os.getpid(),
        "started": time.time(),
        "faults": faults,
        "ssh": pool is not None,
        "ssh_user": login_user(),
        "vastai": {"url": vast.url, "key": vast.api_key},
        "tensordock": {"url": tensor.url, "key": tensor.api_token},
    }
    _write_atomic(root / INFO_FILE, json.dumps(info, indent=2))
    print(f"sandbox {os.getpid()} serving: vastai {vast.url}, tensordock {tensor.url}", flush=True)
    if pool is None:
        print(NO_SSHD, flush=True)
    try:
        while not stop.wait(RATE_LIMIT_EVERY_S if faults else 3600.0):
            if faults:  # a 429 now and then, as busy real APIs answer
                vast.rate_limit_next(1, retry_after=1)
                tensor.rate_limit_next(1, retry_after=1)
    finally:
        vast.stop()
        tensor.stop()
        if pool is not None:
            pool.close()
        for name in (INFO_FILE, PID_FILE):
            with contextlib.suppress(OSError):
                (root / name).unlink()
        print(f"sandbox {os.getpid()} stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m " + SERVER_MODULE)
    parser.add_argument("root", type=Path)
    parser.add_argument("--faults", action="store_true")
    args = parser.parse_args(argv)
    return serve(args.root.resolve(), args.faults)


if __name__ == "__main__":
    sys.exit(main())
