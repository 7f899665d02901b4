"""Careful file handling for our own folders: private, never through a planted link.

Another local user who can write into one of our folders can plant a symbolic link
(``watch.pid`` -> ``~/.bashrc``) and have us truncate or append to its target. So our
folders are made 0700 whatever the umask, our files are opened with ``O_NOFOLLOW``, and
lock files are 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
STALE_TEMP_S = 600.0  # a temporary older than this is a killed write's leftover


class LinkRefused(OSError):
    """One of our files is a symbolic link: refused, never followed."""


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as 0700, whatever the umask.

    Folders that already exist keep their mode: they may be shared ones such as /tmp.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists() and not probe.is_symlink():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)


def refuse_link(path: Path, what: str) -> None:
    """Raise :class:`LinkRefused` when ``path`` is a symbolic link (dangling or not)."""
    if path.is_symlink():
        raise LinkRefused(
            errno.ELOOP,
            f"{what} {path} is a symbolic link; gpu-shopper does not follow links in its "
            "own folders (another user may have planted it): move it away and run again",
        )


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symbolic link at ``path`` (ELOOP instead)."""
    try:
        return os.open(path, flags | NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkRefused(
                errno.ELOOP, f"{path} is a symbolic link; refusing to follow it"
            ) from None
        raise


def read_bytes_nofollow(path: Path) -> bytes:
    fd = open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def temp_pattern(name: str) -> re.Pattern[str]:
    """The names :func:`~gpushopper.state.atomic.atomic_write_text` gives its temporaries."""
    return re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]+\.tmp")


def remove_stale_temps(path: Path, older_than: float = STALE_TEMP_S) -> int:
    """Remove leftover temporaries of ``path`` (from killed writes). ``older_than`` 0 is
    for callers that hold the file's lock: no other writer can be mid-write."""
    pattern = temp_pattern(path.name)
    now = time.time()
    removed = 0
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return 0
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if older_than and now - info.st_mtime < older_than:
                continue
            os.unlink(entry.path)  # unlink never follows a link
            removed += 1
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def file_lock(lock_path: Path, timeout: float) -> Iterator[None]:
    """An exclusive lock shared by every gpu-shopper process; the lock file is 0600.

    Raises ``filelock.Timeout`` when another process holds it for ``timeout`` seconds.
    """
    from filelock import FileLock

    private_dir(lock_path.parent)
    refuse_link(lock_path, "lock file")
    with FileLock(str(lock_path), timeout=timeout, mode=0o600):
        yield
