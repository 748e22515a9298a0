"""Writing the workbench's files so that no reader, crash or second writer ever sees or makes half of one.

Judgments are read by ``cascade eval`` and ``cascade tune`` while the service may be
writing them, and two services (or a service and its restart) may share a judgments
folder. So every file is replaced whole (written beside it, flushed to disk, renamed
over it), and a read-modify-write holds an advisory lock on a file next to the data,
which serializes writers across processes, not just across the threads of one.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set back at once
    os.umask(mask)
    return mask


# Read once, at import: os.umask changes the whole process's mask for a moment, and writes run in threads.
_UMASK = _read_umask()


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step: readers see the old file or the new one, never a mix;
    after a crash, one of the two is on disk. The file gets the usual permissions (0666 less the umask), not
    the owner-only ones of a temporary file, so the tools run by another user can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the folder's writer lock (``folder/.lock``, created when missing) for the ``with`` block: one
    read-modify-write at a time across every process on this machine that shares the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
