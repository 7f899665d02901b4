"""Write a file so that readers see the old or the new content, never half of one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from gpushopper.state.fs import STALE_TEMP_S, private_dir, remove_stale_temps


def atomic_write_text(
    path: Path,
    text: str,
    mode: int = 0o600,
    *,
    make_parents: bool = True,
    stale_after: float = STALE_TEMP_S,
) -> None:
    """Write to a temporary file in the same folder, fsync, then ``os.replace``.

    Missing parent folders are made 0700 (``make_parents=False`` for paths the user
    named: they must exist). Temporaries a killed write left behind are removed first:
    those older than ``stale_after`` seconds, or all with ``stale_after=0`` (for callers
    holding the file's lock).
    """
    import tempfile

    if make_parents:
        private_dir(path.parent)
    elif not path.parent.is_dir():
        raise FileNotFoundError(2, f"no such folder: {path.parent}", str(path.parent))
    remove_stale_temps(path, stale_after)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
