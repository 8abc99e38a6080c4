"""One bad authority must not hold up the others: gossip has its own queues, request and back-off per
peer (node/peers.py), so a slow, silent or refusing peer only delays what goes to it.

A real network: four authority processes A, B, C and D on 127.0.0.1, built here with `init_data_dir`
(as `ler testnet up` does). A, B and C do not reach D directly: their config gives D's URL as that of a
`FaultPeer`, a small TCP server in this module that stands in front of D and, by mode,

    slow        forwards every byte to D and back, each chunk `DELAY_S` after it arrived (D is alive,
                takes part and receives everything, late);
    black_hole  accepts connections and reads them, never answers a byte (D itself is killed);
    busy        answers every HTTP request with 503 and a JSON reason (D itself is killed).

D reaches A, B and C directly. A, B and C are three of four, more than 2/3, so they can decide every
height without D. Each test makes `HEIGHTS` heights one after another (submit to a healthy node with
?wait=1, the next batch only once the last committed) within `STEADY_DEADLINE`. That deadline is only an
"it did happen" bound: unhindered, a height takes well under a second here (a few seconds where D is
the round-0 proposer and they wait out the propose timeout). A node whose gossip waited on D would pay
at least one slow round trip (3 s through the slow proxy, the 5 s request timeout at a black hole) per
consensus message, several per height, and miss it by far. A 503 costs no waiting, so that test checks
instead that the refused gossip is offered again, with back-off (far fewer requests than a sender
retrying without pause makes), and that the peer counts as not connected. The last test restarts D
behind the slow proxy and checks it gets what it missed. Agreement is checked by comparing block hashes
at every height. Waiting is always polling a condition against a deadline; the proxy's delay is the
only sleep.

The tests share one network, in order; each sets the state it needs (D up or killed, the fault's mode),
so any one also runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from node_proc import NodeProc, free_port, wait_until

from ler import codec
from ler.block import GENESIS_FORMAT, Genesis, GenesisAuthority, GenesisIssuer
from ler.keys import KeyPair, write_key_file
from ler.tx import RecordAnchor, Tx, sign_tx
from node.config import PeerSpec, init_data_dir

pytestmark = pytest.mark.slow

DELAY_S = 1.5             # the slow proxy's delay of every chunk, each way
PROPOSE_TIMEOUT = 1.0     # short rounds where D is the round-0 proposer (the default is 3 s)
HEIGHTS = 8               # heights made one after another in each test
STEADY_DEADLINE = 40.0    # for all of them
CATCH_UP_TIMEOUT = 60.0
RTYPE = "degree"


# --- the fault in front of D ---------------------------------------------------------------------------

class FaultPeer:
    """A TCP server on 127.0.0.1 in its own thread and event loop; see the module docstring for modes.

    A mode applies to connections accepted after it is set; changing it also cuts every open connection
    (so a client's pooled keep-alive connection cannot carry on in the old mode).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "slow"
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.lock = threading.Lock()
        self.accepted: Counter[str] = Counter()      # connections per mode
        self.forwarded_to_target = 0                 # bytes delivered to D
        self.busy_requests: list[tuple[str, str, bytes]] = []  # (method, path, body) answered with 503
        self.thread = threading.Thread(target=self.loop.run_forever, name="fault-peer", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultPeer:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self.loop).result(10)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    def set_mode(self, mode: str) -> None:
        assert mode in ("slow", "black_hole", "busy"), mode

        async def switch() -> None:
            if mode == self.mode:
                return
            self.mode = mode
            for w in list(self.writers):
                w.close()

        asyncio.run_coroutine_threadsafe(switch(), self.loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for w in list(self.writers):
                w.close()
            # End the connections' tasks here, rather than leave them pending on a stopped loop.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def busy_posts(self) -> list[bytes]:
        with self.lock:
            return [body for method, path, body in self.busy_requests
                    if method == "POST" and path == "/peer/v1/gossip"]

    # --- connections -------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        self.accepted[mode] += 1
        self.writers.add(writer)
        try:
            if mode == "slow":
                await self._forward_slowly(reader, writer)
            elif mode == "black_hole":
                while await reader.read(65536):
                    pass  # read everything, answer nothing
            else:
                await self._answer_busy(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _forward_slowly(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            return  # D is not running: the client sees the connection closed
        self.writers.add(up_writer)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pipe(reader, up_writer, to_target=True))
                tg.create_task(self._pipe(up_reader, writer, to_target=False))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(up_writer)
            up_writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_target: bool) -> None:
        """Copy src to dst, each chunk delivered DELAY_S after it arrived (in order; a pipeline, so a
        long message is late by DELAY_S, not by DELAY_S per chunk). EOF either way closes both."""
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await chunks.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))  # the fault: a slow link
                dst.write(chunk)
                await dst.drain()
                if to_target:
                    self.forwarded_to_target += len(chunk)
            dst.close()

        delivering = asyncio.create_task(deliver())
        try:
            while chunk := await src.read(65536):
                chunks.put_nowait((time.monotonic() + DELAY_S, chunk))
        finally:
            chunks.put_nowait((time.monotonic() + DELAY_S, b""))
            await delivering

    async def _answer_busy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 keep-alive: read each request (Content-Length bodies, as aiohttp sends them), 503 it."""
        reply = json.dumps({"error": "this node is overloaded; retry later"}).encode()
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            with self.lock:
                self.busy_requests.append((method, path.split("?")[0], body))
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(reply) + reply)
            await writer.drain()


# --- the network ---------------------------------------------------------------------------------------

@dataclass
class Net:
    chain_id: str
    issuer: KeyPair
    nodes: list[NodeProc]  # A, B, C, D
    keys: list[KeyPair]
    fault: FaultPeer
    names: list[str] = field(default_factory=lambda: ["A", "B", "C", "D"])

    @property
    def healthy(self) -> list[NodeProc]:
        return self.nodes[:3]

    @property
    def d(self) -> NodeProc:
        return self.nodes[3]

    def anchors(self, n: int) -> list[Tx]:
        return [sign_tx(self.issuer, self.chain_id, RecordAnchor(
            record=os.urandom(16), issuer=self.issuer.did, holder=KeyPair.generate().did, rtype=RTYPE,
            commitment=os.urandom(32), expires=None)) for _ in range(n)]

    def make_heights(self, n: int = HEIGHTS, deadline_s: float = STEADY_DEADLINE) -> list[Tx]:
        """Commit n batches one after another on the healthy nodes (each batch needs a new height)."""
        deadline = time.monotonic() + deadline_s
        start = self.healthy[0].height()
        committed: list[Tx] = []
        for i in range(n):
            left = deadline - time.monotonic()
            assert left > 1, (f"only {i} of {n} heights committed within {deadline_s:g} s while D is faulty: "
                              "the healthy authorities are waiting on it")
            txs = self.anchors(2)
            node = self.healthy[i % 3]
            r = node.submit(txs, wait=True, timeout=max(1.0, min(left - 1, 25.0)))  # the API caps ?wait
            assert r.status in (200, 202), r
            try:
                node.wait_committed([tx.tx_id for tx in txs], timeout=max(0.0, deadline - time.monotonic()))
            except AssertionError:
                raise AssertionError(f"only {i} of {n} heights committed within {deadline_s:g} s while D is "
                                     f"faulty: the healthy authorities are waiting on it") from None
            committed += txs
        assert max(node.height() for node in self.healthy) >= start + n
        return committed

    def assert_agree(self, nodes: list[NodeProc]) -> int:
        """Every node has the same block at every height they all have; returns that height."""
        top = min(n.height() for n in nodes)
        for h in range(1, top + 1):
            hashes = {n.url: n.get_json(f"/v1/blocks/{h}")["hash"] for n in nodes}
            assert len(set(hashes.values())) == 1, f"nodes disagree at height {h}: {hashes}"
        return top

    def wait_height(self, nodes: list[NodeProc], height: int, timeout: float = CATCH_UP_TIMEOUT) -> None:
        wait_until(lambda: all(n.height() >= height for n in nodes), timeout,
                   f"{[self.names[self.nodes.index(n)] for n in nodes]} to reach height {height}")

    def kill_d(self) -> None:
        if self.d.running():
            self.d.kill()

    def start_d(self) -> None:
        if not self.d.running():
            self.d.start()


def status_peers(node: NodeProc) -> dict[str, int]:
    return dict(node.get_json("/v1/status")["peers"])


def metric(node: NodeProc, name: str) -> float:
    text = node.get("/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("slowpeer")
    chain_id = "slow-peer-test"
    node_keys = [KeyPair.generate() for _ in range(4)]
    issuer = KeyPair.generate()
    for i, key in enumerate(node_keys):
        write_key_file(root / f"node{i}.key", key)
    Genesis(format=GENESIS_FORMAT, chain_id=chain_id, genesis_time=int(time.time() * 1000) - 1000,
            authorities=tuple(GenesisAuthority(k.did, f"Authority {'ABCD'[i]}") for i, k in enumerate(node_keys)),
            issuers=(GenesisIssuer(did=issuer.did, name="Slow Peer University", scopes=(RTYPE,)),),
            ).save(root / "genesis.json")
    ports: list[int] = []
    while len(ports) < 4:
        p = free_port()
        if p not in ports:
            ports.append(p)
    fault = FaultPeer(target_port=ports[3]).start()
    direct = [f"http://127.0.0.1:{p}" for p in ports]
    nodes: list[NodeProc] = []
    for i in range(4):
        # A, B and C reach D only through the fault; D reaches everyone directly.
        peers = tuple(PeerSpec(fault.url if j == 3 else direct[j], node_keys[j].did) for j in range(4) if j != i)
        data = root / "ABCD"[i]
        init_data_dir(data, root / "genesis.json", root / f"node{i}.key", f"127.0.0.1:{ports[i]}", peers=peers,
                      consensus={"propose": PROPOSE_TIMEOUT})
        nodes.append(NodeProc(data))
    network = Net(chain_id, issuer, nodes, node_keys, fault)
    try:
        for node in nodes:
            node.start()
        # Everyone has reached everyone (D through the proxy) before any fault matters.
        wait_until(lambda: all(status_peers(n)["connected"] == 3 for n in nodes), 30, "every node to reach 3 peers")
        yield network
    finally:
        for node in nodes:
            node.close()
        fault.stop()


# --- the tests -----------------------------------------------------------------------------------------

def test_a_slow_authority_delays_no_one_else_and_gets_the_same_chain(net: Net) -> None:
    net.fault.set_mode("slow")
    net.start_d()
    forwarded = net.fault.forwarded_to_target
    txs = net.make_heights()
    top = max(n.height() for n in net.healthy)
    net.wait_height(net.healthy, top)
    net.assert_agree(net.healthy)
    # D really was slow but alive, not cut off: gossip reached it through the proxy all along.
    assert net.fault.forwarded_to_target > forwarded
    assert net.d.running()
    # And it ends up with the same chain and every transaction.
    net.wait_height([net.d], top)
    assert net.assert_agree(net.nodes) >= top
    net.d.wait_committed([tx.tx_id for tx in txs], timeout=CATCH_UP_TIMEOUT)


def test_a_black_hole_in_place_of_an_authority_stops_no_one(net: Net) -> None:
    net.kill_d()
    net.fault.set_mode("black_hole")
    before = net.fault.accepted["black_hole"]
    net.make_heights()
    top = max(n.height() for n in net.healthy)
    net.wait_height(net.healthy, top)
    net.assert_agree(net.healthy)
    # They did try D's address (and were kept waiting: a black hole never answers) ...
    assert net.fault.accepted["black_hole"] > before
    # ... and each healthy node reports it as the one peer of three it cannot reach.
    wait_until(lambda: all(status_peers(n) == {"connected": 2, "known": 3} for n in net.healthy), 30,
               "the healthy nodes to count D's address as not connected")
    for node in net.healthy:
        assert metric(node, "ler_peers_connected") == 2
        assert metric(node, "ler_peers_known") == 3


def test_a_peer_answering_503_is_retried_with_back_off_and_stops_no_one(net: Net) -> None:
    net.kill_d()
    net.fault.set_mode("busy")
    began = time.monotonic()
    seen = len(net.fault.busy_posts())
    net.make_heights()
    top = max(n.height() for n in net.healthy)
    net.wait_height(net.healthy, top)
    net.assert_agree(net.healthy)

    def envelopes() -> list[dict[str, Any]]:
        out = []
        for raw in net.fault.busy_posts()[seen:]:
            env = codec.decode(raw)
            out.append({"from": env["from"], **codec.decode(env["body"])})
        return out

    # Every healthy node kept offering D its gossip, and offered the same votes again: a 503 is not
    # taken as delivery.
    senders = {k.public_key for k in net.keys[:3]}

    def retried() -> bool:
        got = envelopes()
        votes = Counter((e["from"], v) for e in got for v in e["votes"])
        return {e["from"] for e in got} == senders and any(c >= 2 for c in votes.values())

    wait_until(retried, 30, "the healthy nodes to retry gossip refused with 503")
    # With back-off: a sender retrying without pause would make hundreds of requests a second on this
    # machine; backing off (50 ms doubling to backoff_max_s, two queues per peer) makes a few.
    elapsed = time.monotonic() - began
    posts = len(envelopes())
    assert posts <= 3 * 2 * (10 + elapsed / 0.5), f"{posts} gossip requests in {elapsed:.1f} s: no back-off"
    # A node reports the refusing peer as not connected and logs it going down.
    wait_until(lambda: all(status_peers(n) == {"connected": 2, "known": 3} for n in net.healthy), 30,
               "the healthy nodes to count D's address as not connected")
    for node in net.healthy:
        assert f"event=peer_down url={net.fault.url}" in node.log(tail=None)
        assert metric(node, "ler_gossip_failed_total") >= 2  # the node counts its own retries too


def test_the_slow_authority_restarted_catches_up(net: Net) -> None:
    """After the outages, D comes back behind the slow proxy and gets what it missed."""
    net.fault.set_mode("slow")
    net.start_d()
    txs = net.anchors(3)
    net.healthy[0].commit(txs, timeout=30)
    top = max(n.height() for n in net.healthy)
    net.wait_height([net.d], top)
    net.assert_agree(net.nodes)
    net.d.wait_committed([tx.tx_id for tx in txs], timeout=CATCH_UP_TIMEOUT)
    wait_until(lambda: all(status_peers(n)["connected"] == 3 for n in net.healthy), 30,
               "the healthy nodes to reach D again through the slow proxy")
