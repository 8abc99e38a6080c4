"""The console script `ler`. It imports the command line (a few tenths of a second) under a guard, so
that Ctrl-C while it loads ends it quietly, as Ctrl-C does once a command runs, not with a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from node.cli import main as run
    except KeyboardInterrupt:
        print("error: aborted", file=sys.stderr)  # what the command line says on Ctrl-C once it runs
        sys.exit(1)
    run()
