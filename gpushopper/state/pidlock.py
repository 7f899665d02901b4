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
