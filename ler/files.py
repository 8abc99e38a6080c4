"""Files read and written with care.

Reading is bounded: a reader given a huge file (by mistake or on purpose) reads only a little more than
it would ever accept, never the whole file. Writing a file that must survive (a validator's record of
what it signed, a holder's record file) is durable and whole: written beside its place, synced, renamed
over it, the folder synced; a failure leaves what was there before and no stray file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def read_capped(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The file's bytes, but never more than max_bytes + 1 of them: enough to tell a file over the limit
    (which the caller then refuses) without reading it whole. OSError as `open` raises it."""
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def write_durably(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`, whole and synced to disk before this returns. OSError on failure, with
    `path` as it was."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself made durable
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # a filesystem that cannot sync a folder
            raise
    finally:
        os.close(folder)
