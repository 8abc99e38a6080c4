"""The console script `ler`. It imports the command line (a few tenths of a second) with Ctrl-C set to
end the process at once, so that Ctrl-C while it loads ends it quietly, as Ctrl-C does once a command
runs, not with a traceback.

A KeyboardInterrupt raised inside the import cannot be caught reliably: where it lands inside a class
definition (a dataclass field's `__set_name__`, say), Python wraps it in a RuntimeError. Nothing has been
read or written while the command line loads, so ending the process there loses nothing.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

#: What the command line says on Ctrl-C once it runs (node/cli.py), said here the same way.
ABORTED = b"error: aborted\n"


def _abort_while_loading(_signum: int, _frame: FrameType | None) -> None:
    os.write(2, ABORTED)
    os._exit(1)


def main() -> None:
    guard = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not if Ctrl-C is ignored
    if guard:
        signal.signal(signal.SIGINT, _abort_while_loading)
    try:
        from node.cli import main as run
    finally:
        if guard:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    run()
