"""scp upload/download over paramiko, with progress on stderr."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from gpushopper.model.errors import SshError, UsageError

if TYPE_CHECKING:  # imported where they copy (start-up stays light)
    from paramiko import Transport
    from scp import SCPClient  # untyped library: its names are Any to mypy

    from gpushopper.remote.ssh import Connection

#: What scp's progress callback is called with: (file name, its size, bytes sent so far).
Progress = Callable[[bytes | str, int, int], None]


class Copied(TypedDict):
    """One path copied: where from, where to, how many bytes."""

    local: str
    remote: str
    bytes: int


MAX_PATH = 4096
MAX_NAME = 255


def check_path(raw: str, side: str) -> None:
    """Refuse a transfer path no system takes (a usage error, before anything connects)."""
    if not raw or "\x00" in raw or any(c in raw for c in "\n\r"):
        raise UsageError(f"{side} path {raw[:80]!r} is empty or has a control character")
    if len(raw) > MAX_PATH:
        raise UsageError(f"{side} path is {len(raw)} characters long (at most {MAX_PATH})")
    longest = max((len(part) for part in raw.split("/")), default=0)
    if longest > MAX_NAME:
        raise UsageError(
            f"{side} path has a name of {longest} characters (at most {MAX_NAME} per name)"
        )


def _progress(report: Callable[[str], None] | None) -> Progress | None:
    if report is None:
        return None
    last: dict[str, int] = {}

    def progress(filename: bytes | str, size: int, sent: int) -> None:
        name = filename.decode(errors="replace") if isinstance(filename, bytes) else filename
        percent = int(100 * sent / size) if size else 100
        if last.get(name) is None or percent - last[name] >= 25 or sent == size:
            last[name] = percent
            report(f"{name}: {percent}% of {size} bytes")

    return progress


def upload(
    conn: Connection,
    local_paths: list[str],
    remote: str,
    *,
    recursive: bool = False,
    report: Callable[[str], None] | None = None,
) -> list[Copied]:
    """Copy local files (or folders with ``recursive``) to ``remote`` on the instance."""
    from scp import SCPClient, SCPException

    items = []
    for raw in local_paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UsageError(f"no such local file: {raw}")
        if path.is_dir() and not recursive:
            raise UsageError(f"{raw} is a folder: add --recursive")
        items.append(path)
    done: list[Copied] = []
    try:
        with SCPClient(conn.client.get_transport(), progress=_progress(report)) as scp:
            for path in items:
                scp.put(str(path), remote_path=remote, recursive=recursive)
                size = (
                    path.stat().st_size
                    if path.is_file()
                    else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                )
                done.append({"local": str(path), "remote": remote, "bytes": size})
    except SCPException as exc:
        raise SshError(f"upload failed: {exc}") from None
    return done


def _checked_name(cmd: bytes) -> None:
    """A name the instance's scp sends (``C<mode> <size> <name>`` or ``D<mode> 0 <name>``),
    refused unless it is one plain name: a ``..`` or ``/`` would climb out of the local
    folder (the scp library only asserts, and lets ``..`` through for folders), a control
    character would reach the terminal."""
    parts = cmd.split(b" ", 2)
    name = parts[2] if len(parts) == 3 else b""
    if name in (b"", b".", b"..") or b"/" in name or any(c < 32 or c == 127 for c in name):
        shown = name.decode(errors="replace")[:120]
        raise SshError(f"download refused: the instance sent the name {shown!r}")


def _checked_scp(transport: Transport | None, progress: Progress | None) -> SCPClient:
    """An SCPClient that checks every name the instance sends before it names a local file."""
    from scp import SCPClient

    # scp ships no types, so SCPClient is Any to mypy by import (no explicit Any here).
    class CheckedSCPClient(SCPClient):
        def _recv_file(self, cmd: bytes) -> None:
            _checked_name(cmd)
            super()._recv_file(cmd)

        def _recv_pushd(self, cmd: bytes) -> None:
            _checked_name(cmd)
            super()._recv_pushd(cmd)

    return CheckedSCPClient(transport, progress=progress)


def download(
    conn: Connection,
    remote_paths: list[str],
    local: str,
    *,
    recursive: bool = False,
    report: Callable[[str], None] | None = None,
) -> list[Copied]:
    """Copy files (or folders with ``recursive``) from the instance to ``local``."""
    from scp import SCPException

    target = Path(local).expanduser()
    if len(remote_paths) > 1 and not target.is_dir():
        raise UsageError(f"{local} must be an existing folder when downloading several paths")
    done: list[Copied] = []
    try:
        with _checked_scp(conn.client.get_transport(), _progress(report)) as scp:
            for remote in remote_paths:
                # scp's rule, decided before the copy: into a folder that exists the path
                # keeps its name; otherwise it becomes LOCAL (a folder's contents land in
                # LOCAL itself, which scp creates).
                into_folder = target.is_dir()
                scp.get(remote, local_path=str(target), recursive=recursive)
                landed = target / Path(remote.rstrip("/")).name if into_folder else target
                size = _size(landed)
                done.append({"remote": remote, "local": str(landed), "bytes": size})
    except (SCPException, AssertionError) as exc:  # the library asserts on what it is sent
        raise SshError(f"download failed: {exc or 'the instance broke the scp protocol'}") from None
    return done


def _size(path: Path) -> int:
    """Bytes in a file, or in every file under a folder (links not followed)."""
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
