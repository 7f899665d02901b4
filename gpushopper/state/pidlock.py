"""The watch daemon's pid lock: one ``gpu-shopper watch`` per home folder."""

from __future__ import annotations

import os
from pathlib import Path

from gpushopper.model.errors import StateError


class PidLock:
    """One watch per home folder: an exclusive lock on the pidfile for our lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        from gpushopper.state.fs import LinkRefused, open_nofollow, private_dir

        try:
            private_dir(self.path.parent)
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except LinkRefused:
            raise StateError(
                f"pidfile {self.path} is a symbolic link; gpu-shopper does not follow links "
                "in its own folders (another user may have planted it): move it away"
            ) from None
        except OSError as exc:
            raise StateError(
                f"cannot write the watch pidfile {self.path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"another 'gpu-shopper watch' is running for this home (pid {holder}, pidfile {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            finally:
                os.close(self.fd)
                self.fd = None


def holder(path: Path) -> int | None:
    """The pid of the ``watch`` holding ``path``'s lock now (0 while its pid is not written
    yet), or None when none does.

    Asked with a shared, non-blocking lock on a descriptor of our own: it fails exactly
    while a watch holds its exclusive one (in this process too: flock locks belong to the
    open file, not the process). Never creates the file and never follows a link."""
    import errno
    import fcntl

    from gpushopper.state.fs import open_nofollow

    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except OSError:
        return None  # no pidfile (or a link, which acquire refuses): no watch holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() and int(text) > 0 else 0
        return None
    finally:
        os.close(fd)
