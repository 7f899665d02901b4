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

Bulk bytes go through the OpenSSH client, as fast as ``scp``: uploads as ``tar`` over
``ssh``; downloads as one ``cat`` per big file (hashed while it lands) and one ``tar``
stream for the small rest. The control channel (and the listing of what to fetch) is
paramiko.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from gpushopper.model.errors import SshError, UsageError

if TYPE_CHECKING:
    from paramiko import SFTPClient

    # ``ssh`` below is a session's "ssh" record (host, port, user, key_path, known_hosts)
    # as the state file holds it: read key by key, each turned into text for ssh's argv.
    from gpushopper.model.jsontypes import JSONMapping

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
def ssh_argv(ssh: JSONMapping) -> list[str]:
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
    ssh: JSONMapping, local: Path, target: str, *, excludes: Iterable[str] = ()
) -> None:
    """Copy the file or folder ``local`` to the path ``target`` on the instance (into a
    staging folder beside it, then one rename: never half a file at ``target``). A folder
    travels as a tar stream; a single file is ssh's own stdin (no tar, no local pipe: the
    path scp takes), its mode bits kept."""
    t = shlex.quote(target)
    stage = shlex.quote(target + ".gs-partial")
    name = shlex.quote(local.name)
    if local.is_file() and not local.is_symlink():
        mode = f"{local.stat().st_mode & 0o7777:o}"
        remote = (
            f"rm -rf {stage} && mkdir -p {stage} && cat > {stage}/{name} && "
            f"chmod {mode} {stage}/{name} && "
            f"rm -rf {t} && mv -f {stage}/{name} {t} && rmdir {stage}"
        )
        _send_file(local, [*ssh_argv(ssh), remote])
        return
    tar = ["tar", "-C", str(local.parent), "-cf", "-"]
    for pattern in [".git", *excludes]:
        tar.append(f"--exclude={pattern}")
    tar += ["--", local.name]
    remote = (
        f"rm -rf {stage} && mkdir -p {stage} && tar -C {stage} -xf - && "
        f"rm -rf {t} && mv -f {stage}/{name} {t} && rmdir {stage}"
    )
    _pipe(tar, [*ssh_argv(ssh), remote], "upload")


def upload_into(ssh: JSONMapping, local: Path, remote_dir: str, *, excludes: Iterable[str]) -> None:
    """Copy the contents of folder ``local`` into ``remote_dir`` (the working directory)."""
    tar = ["tar", "-C", str(local), "-cf", "-"]
    for pattern in [".git", *excludes]:
        tar.append(f"--exclude={pattern}")
    tar += ["--", "."]
    d = shlex.quote(remote_dir)
    _pipe(tar, [*ssh_argv(ssh), f"mkdir -p {d} && tar -C {d} -xf -"], "upload")


#: Regular files at least this big come home as their own stream, hashed while they land.
STREAM_MIN_BYTES = 8 << 20
#: How long the digest waits when it has caught up with a streamed file still being written:
#: from the first, doubled while nothing new arrives, up to the second (a stalled connection
#: costs a few wake-ups a second, not hundreds; ssh itself gives up on a dead one).
FOLLOW_MIN_S = 0.001
FOLLOW_MAX_S = 0.05


def plan_download(
    sftp: SFTPClient, remote_dir: str, names: list[str]
) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """What ``names`` (relative to ``remote_dir``) hold, listed over SFTP: (folders, regular
    files with their sizes, names left out), paths relative to ``remote_dir``. A name itself
    may be a link (followed, as scp does); inside folders links and special files are left
    out, and so are names with a control character (said, not fatal). A path that climbs out
    is refused: every path the instance sends is checked before it can name a local file."""
    import stat as st

    folders: list[str] = []
    files: list[tuple[str, int]] = []
    skipped: list[str] = []
    base = remote_dir.rstrip("/") or "/"

    def full(rel: str) -> str:
        return f"{base}/{rel}" if base != "/" else f"/{rel}"

    def walk(rel: str, depth: int) -> None:
        if depth > 64:
            raise SshError(f"download refused: {rel[:120]!r} is nested deeper than 64 folders")
        folders.append(rel)
        for entry in sftp.listdir_attr(full(rel)):
            if any(ord(c) < 32 or ord(c) == 127 for c in entry.filename):
                skipped.append(f"{rel}/{entry.filename!r}")
                continue
            child = _safe_name(f"{rel}/{entry.filename}")
            mode = entry.st_mode or 0
            if st.S_ISDIR(mode):
                walk(child, depth + 1)
            elif st.S_ISREG(mode):
                files.append((child, int(entry.st_size or 0)))

    for name in names:
        rel = _safe_name(name)
        attrs = sftp.stat(full(rel))
        if st.S_ISDIR(attrs.st_mode or 0):
            walk(rel, 0)
        elif st.S_ISREG(attrs.st_mode or 0):
            files.append((rel, int(attrs.st_size or 0)))
    return folders, files, skipped


def download_tree(
    ssh: JSONMapping,
    remote_dir: str,
    folders: list[str],
    files: list[tuple[str, int]],
    into: Path,
) -> dict[str, tuple[int, str]]:
    """Copy ``folders`` and ``files`` (from ``plan_download``) into the local folder ``into``
    and return {path relative to ``into``: (bytes, sha256)}, each digest taken in the same
    pass as the bytes landed (no second read of what arrived).

    Big files each travel as one ``cat`` over OpenSSH's ssh, straight into their file (as
    fast as scp); the digest follows the file as it grows, which is exact because that
    writer only appends. (scp's SFTP client may write blocks out of order, so it cannot be
    followed.) The small rest travels as one tar stream, read and hashed here; only the
    listed regular files are written, under names already checked."""
    into.mkdir(parents=True, exist_ok=True)
    for rel in sorted(folders):
        (into / rel).mkdir(parents=True, exist_ok=True)
    found: dict[str, tuple[int, str]] = {}
    small = [(rel, size) for rel, size in files if size < STREAM_MIN_BYTES]
    for rel, size in files:
        if size >= STREAM_MIN_BYTES:
            found[rel] = _stream_file(ssh, remote_dir, rel, into / rel)
    if small:
        found.update(_tar_files(ssh, remote_dir, [rel for rel, _ in small], into))
    return found


def _remote_cd(remote_dir: str) -> str:
    return f"cd {shlex.quote(remote_dir.rstrip('/') or '/')}"


def _stream_file(ssh: JSONMapping, remote_dir: str, rel: str, dest: Path) -> tuple[int, str]:
    import tempfile
    import time

    dest.parent.mkdir(parents=True, exist_ok=True)
    command = f"{_remote_cd(remote_dir)} && exec cat -- {shlex.quote('./' + rel)}"
    digest = hashlib.sha256()
    seen = 0
    with tempfile.TemporaryFile() as errors, dest.open("wb") as sink:
        proc = subprocess.Popen(
            [*ssh_argv(ssh), command],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=errors,
            env=_env(),
        )
        try:
            with dest.open("rb", buffering=0) as follow:
                buf = bytearray(1 << 20)
                view = memoryview(buf)
                pause = FOLLOW_MIN_S
                while True:
                    finished = proc.poll() is not None  # before the read: then nothing is left
                    n = follow.readinto(buf)
                    if n:
                        digest.update(view[:n])
                        seen += n
                        pause = FOLLOW_MIN_S
                    elif finished:
                        break
                    else:  # caught up with a writer still running: wait, longer each time
                        time.sleep(pause)
                        pause = min(pause * 2, FOLLOW_MAX_S)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if proc.returncode != 0:
            errors.seek(0)
            raise SshError(f"download of {rel[:200]} failed: {_tail(errors.read())}")
    return seen, digest.hexdigest()


def _tar_files(
    ssh: JSONMapping, remote_dir: str, rels: list[str], into: Path
) -> dict[str, tuple[int, str]]:
    import tarfile
    import tempfile
    import threading

    # The names go in on stdin, one a line, each ./-prefixed (never read as an option);
    # plan_download refused names with a line break.
    listing = "".join(f"./{rel}\n" for rel in rels).encode()
    wanted = set(rels)
    found: dict[str, tuple[int, str]] = {}
    # -h: a listed name that is a link (only a top-level name can be) travels as its target.
    command = f"{_remote_cd(remote_dir)} && tar -chf - -T -"
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [*ssh_argv(ssh), command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None

        def feed() -> None:
            with contextlib.suppress(OSError):
                proc.stdin.write(listing)  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        complete = False
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|", bufsize=1 << 20) as archive:
                for member in archive:
                    name = _safe_member(member.name)
                    if name not in wanted or name in found:
                        continue
                    if member.islnk():  # tar sends a file's second hard link by name only
                        first = _safe_member(member.linkname)
                        if first in found:
                            (into / name).parent.mkdir(parents=True, exist_ok=True)
                            shutil.copyfile(into / first, into / name)
                            found[name] = found[first]
                        continue
                    if not member.isfile():
                        continue
                    source = archive.extractfile(member)
                    assert source is not None
                    found[name] = _write_hashed(source, into / name)
            while proc.stdout.read(1 << 16):  # the padding after the end marker
                pass
            complete = True
        except tarfile.TarError as exc:
            raise SshError(f"download failed: the instance sent a broken archive ({exc})") from None
        finally:
            feeder.join(timeout=5)
            proc.stdout.close()
            if not complete and proc.poll() is None:
                proc.kill()
            proc.wait()
        if proc.returncode != 0:
            errors.seek(0)
            raise SshError(f"download failed: {_tail(errors.read())}")
    missing = wanted - set(found)
    if missing:
        raise SshError(f"download failed: {sorted(missing)[0][:200]!r} did not arrive")
    return found


def _write_hashed(source: IO[bytes], dest: Path) -> tuple[int, str]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as sink:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            sink.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _safe_name(name: str) -> str:
    """A relative path from the instance, checked: no climbing, no control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise SshError(f"download refused: the instance sent a path {name[:120]!r}")
    return _safe_member(name)


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


def _send_file(local: Path, argv: list[str]) -> None:
    import tempfile

    with local.open("rb") as source, tempfile.TemporaryFile() as errors:
        proc = subprocess.run(
            argv, stdin=source, stdout=subprocess.DEVNULL, stderr=errors, env=_env(), check=False
        )
        if proc.returncode != 0:
            errors.seek(0)
            raise SshError(f"upload failed: {_tail(errors.read())}")


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
