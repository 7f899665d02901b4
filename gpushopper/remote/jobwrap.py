"""What runs on the instance for a job, and how bytes travel to and from it.

The job folder on the instance (``<jobs.remote_root>/<job>``) holds ``work/`` (the working
directory the command runs in; its ``out/`` is brought home) and ``ctl/``:

* ``run.sh``, the wrapper: started with ``setsid ... </dev/null >/dev/null 2>&1 &``, so the
  SSH call returns at once and the job survives the connection (``nohup`` kept SSH hanging
  in the field). No ``set -e``: the command's exit status is the point. It sources ``env``
  (0600, written over SFTP, removed once read: secrets never reach a command line), starts
  the command in its own session (its pid is its process group, written to ``pid``) with
  stdin from /dev/null and output appended to ``log``, waits, and writes the exit code to
  ``status`` atomically (write aside, rename).
* ``log``, ``pid``, ``status``: what the local side reads by SFTP, by offset.

Bulk bytes go through the OpenSSH client (``tar`` over ``ssh``), the same code path as
``scp`` and as fast; the control channel is paramiko.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpushopper.model.errors import SshError, UsageError

CTL = "ctl"
WORK = "work"


def wrapper_script(job_id: str, command: list[str]) -> str:
    """The wrapper (POSIX sh). ``command`` is an argv, quoted here, never re-split."""
    argv = shlex.join(command)
    return f"""#!/bin/sh
# gpu-shopper job wrapper for {job_id}. No 'set -e': the exit status is recorded, not lost.
C=$(cd "$(dirname "$0")" && pwd)
finish() {{ echo "$1" >"$C/status.new" && mv -f "$C/status.new" "$C/status"; }}
cd "$C/../{WORK}" || {{ finish 126; exit 0; }}
if [ -f "$C/env" ]; then . "$C/env"; rm -f "$C/env"; fi
GPU_SHOPPER_JOB={shlex.quote(job_id)}
export GPU_SHOPPER_JOB
mkdir -p out
date +%s >"$C/started"
setsid {argv} </dev/null >>"$C/log" 2>&1 &
echo $! >"$C/pid.new" && mv -f "$C/pid.new" "$C/pid"
wait $!
finish $?
"""


def env_file(env: dict[str, str]) -> str:
    """``export K='V'`` lines for the wrapper to source (shell-quoted, never evaluated)."""
    lines = [f"{name}={shlex.quote(value)}\nexport {name}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def start_command(job_dir: str) -> str:
    d = shlex.quote(job_dir)
    # Only setsid goes to the background, with every stream redirected: a backgrounded
    # list (cd && setsid ... &) would keep the SSH channel open until the job ends.
    return f"cd {d} || exit 1; setsid sh {CTL}/run.sh </dev/null >/dev/null 2>&1 & echo started"


def kill_command(job_dir: str, sig: str) -> str:
    """Signal the command's process group (its pid is the group: it runs under setsid)."""
    pid = shlex.quote(f"{job_dir}/{CTL}/pid")
    return f'p=$(cat {pid} 2>/dev/null) && [ -n "$p" ] && kill -{sig} -- "-$p" 2>/dev/null; true'


# -- bulk transfer through OpenSSH --------------------------------------------------------------
def ssh_argv(ssh: dict[str, Any]) -> list[str]:
    exe = shutil.which("ssh")
    if exe is None:
        raise SshError("the OpenSSH client (ssh) is not installed: install openssh-client")
    argv = [
        exe,
        "-F",
        "/dev/null",
        "-p",
        str(ssh["port"]),
        "-i",
        str(ssh["key_path"]),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=20",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "LogLevel=ERROR",
    ]
    known = ssh.get("known_hosts")
    if known and Path(known).is_file():
        argv += ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
    else:
        argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    return [*argv, f"{ssh.get('user') or 'root'}@{ssh['host']}"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}


def _tail(text: bytes) -> str:
    lines = text.decode(errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else "no message"


def upload_tree(
    ssh: dict[str, Any], local: Path, target: str, *, excludes: Iterable[str] = ()
) -> None:
    """Copy the file or folder ``local`` to the path ``target`` on the instance (tar over
    ssh into a staging folder beside it, then one rename: never half a file at ``target``)."""
    tar = ["tar", "-C", str(local.parent), "-cf", "-"]
    for pattern in [".git", *excludes]:
        tar.append(f"--exclude={pattern}")
    tar += ["--", local.name]
    t = shlex.quote(target)
    stage = shlex.quote(target + ".gs-partial")
    name = shlex.quote(local.name)
    remote = (
        f"rm -rf {stage} && mkdir -p {stage} && tar -C {stage} -xf - && "
        f"rm -rf {t} && mv -f {stage}/{name} {t} && rmdir {stage}"
    )
    _pipe(tar, [*ssh_argv(ssh), remote], "upload")


def upload_into(
    ssh: dict[str, Any], local: Path, remote_dir: str, *, excludes: Iterable[str]
) -> None:
    """Copy the contents of folder ``local`` into ``remote_dir`` (the working directory)."""
    tar = ["tar", "-C", str(local), "-cf", "-"]
    for pattern in [".git", *excludes]:
        tar.append(f"--exclude={pattern}")
    tar += ["--", "."]
    d = shlex.quote(remote_dir)
    _pipe(tar, [*ssh_argv(ssh), f"mkdir -p {d} && tar -C {d} -xf -"], "upload")


def download_tree(
    ssh: dict[str, Any], remote_dir: str, names: list[str], into: Path
) -> dict[str, tuple[int, str]]:
    """Copy ``names`` (relative to ``remote_dir``) into the local folder ``into`` with
    OpenSSH's scp (SFTP protocol: measured twice as fast as a tar stream over an exec
    channel on loopback), then hash what arrived: {path relative to ``into``: (bytes,
    sha256)}. Only regular files count; scp itself refuses names that climb out."""
    exe = shutil.which("scp")
    if exe is None:
        raise SshError("the OpenSSH client (scp) is not installed: install openssh-client")
    into.mkdir(parents=True, exist_ok=True)
    argv = ssh_argv(ssh)
    options = argv[1:-1]
    port_at = options.index("-p")
    options[port_at] = "-P"  # scp takes the port as -P, ssh as -p
    login = argv[-1]
    sources = [f"{login}:{remote_dir.rstrip('/')}/{name}" for name in names]
    proc = subprocess.run(
        [exe, "-q", "-r", *options, *sources, str(into)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise SshError(f"download failed: {_tail(proc.stderr)}")
    found: dict[str, tuple[int, str]] = {}
    for root, _dirs, files in os.walk(into):
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(into).as_posix()
            _safe_member(rel)
            found[rel] = (path.stat().st_size, sha256_file(path))
    return found


def _safe_member(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise SshError(f"download refused: the instance sent a path {name[:120]!r}")
    return "/".join(parts)


def _pipe(first: list[str], second: list[str], what: str) -> None:
    env = _env()
    with subprocess.Popen(
        first, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as producer:
        assert producer.stdout is not None
        consumer = subprocess.run(
            second,
            stdin=producer.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            check=False,
        )
        producer.stdout.close()
        err = producer.stderr.read() if producer.stderr else b""
        producer.wait()
    if producer.returncode != 0 or consumer.returncode != 0:
        detail = _tail(consumer.stderr or b"") if consumer.returncode else _tail(err)
        raise SshError(f"{what} failed: {detail}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_bytes(path: Path, excludes: Iterable[str] = ()) -> int:
    import fnmatch

    patterns = [".git", *excludes]
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not any(fnmatch.fnmatch(d, p) for p in patterns)]
        for name in files:
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                pass
    return total


def check_env_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or len(name) > 128:
        raise UsageError(f"{name[:80]!r} is not an environment variable name")
