"""Which process runs a node: for `ler testnet` (its nodes) and for a starting node (one already on its
folder). Read from /proc where there is one; elsewhere a process that exists is taken at its word."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from node.config import PID_FILE

#: No process id is larger (a pid_t is a signed 32-bit number); os.kill refuses a larger one with an
#: OverflowError, and a node.pid file may hold anything.
PID_MAX = 2**31 - 1


def alive(pid: Any) -> bool:
    if not isinstance(pid, int) or not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) still "exists"; treat it as dead. Our own child we can reap;
    # an orphan of an earlier `ler testnet up` only its new parent can, so look at its state.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc here: trust kill(pid, 0)


def runs_node(pid: int, data: Path) -> bool:
    """Whether process `pid` is `ler node run --data` of this node's folder: not another program, nor
    another node, that got the pid of a node that died since (a node killed, the machine restarted)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\x00")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return not Path("/proc/self").exists()  # no /proc here: trust kill(pid, 0)
    for i in range(len(args) - 3):
        if args[i:i + 2] != [b"node", b"run"]:
            continue
        for j, arg in enumerate(args[i + 2:], i + 2):
            given = args[j + 1] if arg == b"--data" and j + 1 < len(args) else (
                arg[len(b"--data="):] if arg.startswith(b"--data=") else None)
            if given is not None:
                return (cwd / os.fsdecode(given)).resolve() == data.resolve()
    return False


def node_running_on(data: Path) -> int | None:
    """The live `ler node run` of folder `data` that its node.pid names, or None (no file, a dead process,
    or a pid since taken by another program or another node)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((data / PID_FILE).read_text())
        if pid != os.getpid() and alive(pid) and runs_node(pid, data):
            return pid
    return None
