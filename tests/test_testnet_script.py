"""`scripts/testnet`, the README's run command, as a person runs it: in a terminal, stopped with Ctrl-C.

The script runs on a pseudo-terminal of its own (its controlling terminal, as in a shell window); the
test types Ctrl-C there, so the terminal sends SIGINT to the script's foreground process group, and
then checks that the script stopped every node it started and said so.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from node_proc import LER

ROOT = Path(__file__).resolve().parent.parent
NODES = 5  # 4 authorities and 1 observer, the script's defaults


def free_ports(n: int) -> int:
    """A base port with `n` consecutive ports free on 127.0.0.1 right now."""
    for base in range(21000, 29000, 37):
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no free ports")


def read_until(fd: int, seen: bytearray, needle: bytes, timeout: float) -> bool:
    """Read the terminal into `seen` until `needle` appears (True) or the timeout or end of output."""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other side closed: the script ended
            return needle in seen
        if not chunk:
            return needle in seen
        seen += chunk
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_exit(pid: int, timeout: float) -> int | None:
    """The exit status of child `pid` once it ended, or None if it still runs after `timeout`."""
    deadline = time.monotonic() + timeout
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)
    return ended[1]


def in_session(sid: int) -> list[int]:
    """The running processes of session `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Those of `pids` still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and a Linux pseudo-terminal")
@pytest.mark.parametrize("how", ["ctrl-c", "terminal closed"])
def test_the_run_command_starts_the_network_and_stopping_it_stops_every_node(tmp_path: Path, how: str) -> None:
    """Ctrl-C typed at the terminal, or the terminal closed under it (its window shut: SIGHUP), stops
    every node the script started: none is left running without a terminal to stop it from."""
    data = tmp_path / "net"
    base = free_ports(NODES)
    env = dict(os.environ, LER_VENV=str(Path(sys.executable).parent.parent), TERM="dumb")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the script, with this pseudo-terminal as its terminal
        try:
            # As in a terminal window: Ctrl-C interrupts. (A test run started in the background by a
            # non-interactive shell inherits SIGINT ignored, and bash cannot trap a signal ignored on
            # entry.)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            os.execvpe("bash", ["bash", str(ROOT / "scripts" / "testnet"), "--dir", str(data),
                                "--base-port", str(base)], env)
        finally:
            os._exit(127)
    out = bytearray()
    pids: list[int] = []
    try:
        assert read_until(fd, out, b"Ctrl-C stops every node", 180), out.decode(errors="replace")[-3000:]
        manifest = json.loads((data / "testnet.json").read_text())
        pids = [n["pid"] for n in manifest["nodes"]]
        assert len(pids) == NODES and all(alive(p) for p in pids)
        assert [n["role"] for n in manifest["nodes"]].count("observer") == 1
        text = out.decode(errors="replace")
        assert f"http://127.0.0.1:{base}/v1/status" in text and "demo issuer" in text

        if how == "ctrl-c":
            os.write(fd, b"\x03")  # Ctrl-C, typed at the terminal
            read_until(fd, out, b"\x00never", 60)  # everything it prints until it ends
        else:
            os.close(fd)  # the terminal's window is shut: the kernel hangs the script's terminal up
            fd = -1
        session = pid  # the script leads its terminal's session, and everything it started is in it
        status = wait_exit(pid, 30)
        assert status is not None, f"the script still runs after {how}: " + out.decode(errors="replace")[-2000:]
        pid = 0
        text = out.decode(errors="replace")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, text[-2000:])
        if how == "ctrl-c":
            assert "stopping the network" in text and "stopped authority1" in text, text[-2000:]
        assert not wait_gone(pids, 10), f"nodes left running after {how}"
        assert not wait_gone(in_session(session), 10), f"processes of the script left after {how}"
        for node in manifest["nodes"]:  # each stopped cleanly, not killed
            assert "event=node_stopped" in (Path(node["data"]) / "node.log").read_text(), node["name"]
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if any(alive(p) for p in pids):
            subprocess.run([str(LER), "testnet", "down", "--dir", str(data)], capture_output=True, timeout=60)
        if fd >= 0:
            os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_interrupting_the_run_command_without_a_terminal_leaves_no_process_of_it(tmp_path: Path) -> None:
    """Run with no terminal (in the background, its output to a file) and stopped by SIGINT to its process
    group, as `kill -INT -PGID` or a supervisor does: no terminal hangs up on what is left, so the script
    itself must end everything it started, its waiting `sleep` too (which ignores SIGINT, as a script's
    background jobs do)."""
    data = tmp_path / "net"
    env = dict(os.environ, LER_VENV=str(Path(sys.executable).parent.parent))
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "testnet"), "--dir", str(data), "--base-port",
                                 str(free_ports(NODES))], stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while b"Ctrl-C stops every node" not in out.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        pids = [n["pid"] for n in json.loads((data / "testnet.json").read_text())["nodes"]]
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, out.read_text(errors="replace")[-2000:]
        assert not wait_gone(pids, 10), "nodes left running"
        assert not wait_gone(in_session(proc.pid), 10), "processes of the script left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in in_session(proc.pid):
            os.kill(pid, signal.SIGKILL)
        subprocess.run([str(LER), "testnet", "down", "--dir", str(data)], capture_output=True, timeout=60)
