"""Reading files of bounded size: a reader given a huge file (by mistake or on purpose) reads only a little
more than it would ever accept, never the whole file."""

from __future__ import annotations

import os


def read_capped(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The file's bytes, but never more than max_bytes + 1 of them: enough to tell a file over the limit
    (which the caller then refuses) without reading it whole. OSError as `open` raises it."""
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)
