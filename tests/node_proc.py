"""Real node processes for tests: make a single-authority chain in a folder, start `ler node run` on it,
wait until it answers, talk HTTP to it, stop it with SIGTERM or kill it with SIGKILL.

A plain module (not a conftest): the process tests import it. Nothing here fakes anything: the node is
`python -m node.cli node run --data DIR` with its own LevelDB, listening on a free port of 127.0.0.1.
Waiting is always polling a condition against a deadline, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import http.client as httpclient
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ler import codec
from ler.block import GENESIS_FORMAT, Genesis, GenesisAuthority, GenesisIssuer
from ler.keys import KeyPair, write_key_file
from ler.tx import Tx
from node.config import init_data_dir

T = TypeVar("T")

START_TIMEOUT = 30.0
LER = Path(sys.executable).parent / "ler"


def full_disk(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn for a child process: no file it writes may grow past `max_bytes` (RLIMIT_FSIZE), and
    a write past that fails (EFBIG) instead of killing it (SIGXFSZ): the failure a full disk gives."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return limit


def free_port() -> int:
    """A port nothing listens on right now (the kernel's choice for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], T | None], timeout: float, what: str, poll: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    delay = poll
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


# --- HTTP ----------------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    content_type: str  # the media type, without parameters
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


def http(url: str, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
         timeout: float = 30.0) -> Reply:
    """One request on a fresh connection. Raises OSError if nothing answers."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Reply(resp.status, ctype, resp.read(), dict(resp.headers.items()))
    finally:
        conn.close()


def tx_json_body(txs: Sequence[Tx]) -> bytes:
    return json.dumps({"txs": [t.to_json() for t in txs]}).encode()


def tx_msgpack_body(txs: Sequence[Tx]) -> bytes:
    """The msgpack batch form: a canonical array of each transaction's canonical bytes."""
    return codec.encode([t.raw for t in txs])


# --- a chain in a folder --------------------------------------------------------------------------------

@dataclass
class Chain:
    """Keys and genesis of a single-authority test chain, written under `root`."""

    root: Path
    chain_id: str
    authority: KeyPair
    issuer: KeyPair          # accredited in genesis for "degree"
    genesis: Genesis

    @property
    def genesis_path(self) -> Path:
        return self.root / "genesis.json"

    @property
    def authority_key_path(self) -> Path:
        return self.root / "authority.key"


def make_chain(root: Path, chain_id: str = "test-chain", issuer_scopes: tuple[str, ...] = ("degree",)) -> Chain:
    root.mkdir(parents=True, exist_ok=True)
    authority, issuer = KeyPair.generate(), KeyPair.generate()
    write_key_file(root / "authority.key", authority)
    write_key_file(root / "issuer.key", issuer)
    genesis = Genesis(format=GENESIS_FORMAT, chain_id=chain_id, genesis_time=int(time.time() * 1000) - 1000,
                      authorities=(GenesisAuthority(authority.did, "Test Authority"),),
                      issuers=(GenesisIssuer(did=issuer.did, name="Genesis University", scopes=issuer_scopes),))
    genesis.save(root / "genesis.json")
    return Chain(root=root, chain_id=chain_id, authority=authority, issuer=issuer, genesis=genesis)


def init_node(chain: Chain, data: Path, port: int | None = None, limits: dict[str, int | float] | None = None,
              blocks: dict[str, int | float] | None = None) -> Path:
    """`ler node init` for the chain's authority, then the given [limits] and [blocks] settings."""
    port = free_port() if port is None else port
    init_data_dir(data, chain.genesis_path, chain.authority_key_path, f"127.0.0.1:{port}")
    cfg = data / "config.toml"
    text = cfg.read_text()
    for table, values in (("limits", limits), ("blocks", blocks)):
        if values:
            lines = "".join(f"{k} = {v!r}\n" for k, v in values.items())
            text = text.replace(f"[{table}]\n", f"[{table}]\n{lines}", 1)
    cfg.write_text(text)
    return data


class NodeProc:
    """One `ler node run --data DIR` process (its own session, so signals reach only it)."""

    def __init__(self, data: Path, command: Sequence[str] | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        from node.config import load_config

        self.data = data
        config = load_config(data if cwd is None else cwd / data)
        self.url = config.url
        self.log_path = log_path or config.data / "node.log"
        self.command = list(command) if command else [sys.executable, "-m", "node.cli", "node", "run",
                                                      "--data", str(data)]
        self.cwd = cwd
        # The node's environment: ours without any LER_ setting, plus what the test gives.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")} | (env or {})
        self.preexec_fn = preexec_fn  # run in the child before the command (e.g. `full_disk`)
        self.proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> NodeProc:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.cwd, start_new_session=True,
                                         preexec_fn=self.preexec_fn)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        def answered() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode} before answering:\n{self.log()}")
            try:
                r = http(self.url, "GET", "/v1/status", timeout=2.0)
            except OSError:
                return None
            return r.json() if r.status == 200 else None

        return wait_until(answered, timeout, f"the node at {self.url} to answer /v1/status")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal_term(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit; its exit code. Kills and fails if it does not stop in time."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"node did not stop within {timeout:g} s of SIGTERM:\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a power cut of the process."""
        assert self.proc is not None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        """For fixtures' teardown: stop it whatever state it is in."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self, tail: int | None = 4000) -> str:
        """The node's log (stderr), by default its last `tail` characters."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text

    # --- requests ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float = 30.0) -> Reply:
        return http(self.url, method, path, body, content_type, timeout)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def get_json(self, path: str) -> Any:
        r = self.get(path)
        assert r.status == 200, (path, r)
        return r.json()

    def post_json(self, path: str, obj: Any) -> Reply:
        return self.request("POST", path, json.dumps(obj).encode(), "application/json")

    def submit(self, txs: Sequence[Tx], wait: bool = False, timeout: float = 30.0) -> Reply:
        query = "?wait=1&timeout=%d" % int(timeout) if wait else ""
        return self.request("POST", "/v1/txs" + query, tx_json_body(txs), "application/json",
                            timeout=timeout + 10)

    def commit(self, txs: Sequence[Tx], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Submit with ?wait=1 and insist every transaction is committed; the results."""
        r = self.submit(txs, wait=True, timeout=timeout)
        results = r.json()["results"]
        assert r.status == 200 and all(x["status"] == "committed" for x in results), r
        return results

    def height(self) -> int:
        return int(self.get_json("/v1/status")["height"])

    def tx_status(self, tx_id: bytes | str) -> dict[str, Any] | None:
        r = self.get(f"/v1/txs/{tx_id if isinstance(tx_id, str) else tx_id.hex()}")
        if r.status == 404:
            return None
        assert r.status == 200, r
        return r.json()

    def wait_committed(self, tx_ids: Iterable[bytes], timeout: float = 30.0) -> dict[bytes, dict[str, Any]]:
        """Poll until every id is committed; {id: status}. Fails on a rejection or at the deadline."""
        left = list(tx_ids)
        done: dict[bytes, dict[str, Any]] = {}

        def settled() -> bool:
            for tx_id in list(left):
                st = self.tx_status(tx_id)
                if st is not None and st["status"] == "rejected":
                    raise AssertionError(f"tx {tx_id.hex()} was rejected: {st}")
                if st is not None and st["status"] == "committed":
                    done[tx_id] = st
                    left.remove(tx_id)
            return not left

        wait_until(settled, timeout, f"{len(left)} transaction(s) to commit")
        return done
