"""A real network: 4 authorities and 1 observer as separate processes on 127.0.0.1, started with
`ler testnet up`, broken with kill -9, healed with `ler node run --data DIR`, changed by governance votes.

One network is shared by the tests of this module, in order (each leaves it whole again, except the
last). Waiting is always polling a condition against a deadline; the one negative check (nothing
commits while two of four authorities are down) watches for a fixed window, since "never" has no end.
Agreement is checked by comparing every node's block hash at every height.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from node_proc import LER, NodeProc, Reply, free_port, http, make_chain, tx_json_body, wait_until

from consensus import Proposal, proposer_of
from ler import codec, keys
from ler.block import PRECOMMIT, PREVOTE, Vote
from ler.keys import KeyPair, read_key_file, write_key_file
from ler.tx import Action, GovVote, RecordAnchor, Tx, sign_tx
from node.config import SIGNED_FILE, init_data_dir
from node.peers import parse_held, sign_envelope
from node.signed_file import read_signed_file

pytestmark = pytest.mark.slow

COMMIT_TIMEOUT = 60.0


# --- the network ---------------------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@dataclass
class Node:
    name: str
    url: str
    role: str
    data: Path
    key_path: Path
    pid: int | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def key(self) -> KeyPair:
        return read_key_file(self.key_path)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float = 30.0) -> Reply:
        """Every request the tests make of this node goes through here."""
        return http(self.url, method, path, body, content_type, timeout)

    def get(self, path: str) -> Any:
        r = self.request("GET", path, timeout=10)
        assert r.status == 200, (self.name, path, r)
        return r.json()

    def try_get(self, path: str) -> Any | None:
        try:
            r = self.request("GET", path, timeout=5)
        except OSError:
            return None
        return r.json() if r.status == 200 else None

    def height(self) -> int:
        return int(self.get("/v1/status")["height"])

    def block_hash(self, h: int) -> str:
        return str(self.get(f"/v1/blocks/{h}")["hash"])

    def submit(self, txs: list[Tx]) -> list[dict[str, Any]]:
        r = self.request("POST", "/v1/txs", tx_json_body(txs), "application/json")
        assert r.status == 202, (self.name, r)
        return list(r.json()["results"])

    def tx_status(self, tx: Tx) -> str | None:
        st = self.try_get(f"/v1/txs/{tx.tx_id.hex()}")
        return st["status"] if st else None

    def alive(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    def kill(self) -> None:
        """kill -9, and wait until the process is gone."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        wait_until(lambda: not self.alive(), 10, f"{self.name} to die")

    def start(self, env: dict[str, str] | None = None) -> None:
        """`ler node run --data DIR`, as an operator restarts a node, then wait until it answers.
        `env`: variables added to the node's environment."""
        assert not self.alive()
        with open(self.data / "node.log", "ab") as log:
            self.proc = subprocess.Popen([str(LER), "node", "run", "--data", str(self.data)], stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, **(env or {})})
        self.pid = self.proc.pid
        wait_until(lambda: self.try_get("/health"), 30, f"{self.name} to answer")

    def log(self) -> str:
        return (self.data / "node.log").read_text(errors="replace")


@dataclass
class Net:
    root: Path
    chain_id: str
    nodes: list[Node]
    issuer: KeyPair
    rtype: str
    extra: list[Node] = field(default_factory=list)  # nodes the tests add

    @property
    def authorities(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "authority"]

    @property
    def observer(self) -> Node:
        return next(n for n in self.nodes if n.role == "observer")

    def live(self) -> list[Node]:
        return [n for n in self.nodes + self.extra if n.alive()]

    def anchors(self, n: int) -> list[Tx]:
        return [sign_tx(self.issuer, self.chain_id, RecordAnchor(
            record=os.urandom(16), issuer=self.issuer.did, holder=KeyPair.generate().did, rtype=self.rtype,
            commitment=os.urandom(32), expires=None)) for _ in range(n)]

    def vote(self, voter: Node | KeyPair, action: Action) -> Tx:
        key = voter.key if isinstance(voter, Node) else voter
        return sign_tx(key, self.chain_id, GovVote(action=action))

    def wait_committed(self, txs: list[Tx], nodes: Sequence[Node], timeout: float = COMMIT_TIMEOUT) -> None:
        def done() -> bool:
            for node in nodes:
                for tx in txs:
                    st = node.tx_status(tx)
                    assert st != "rejected", (node.name, tx.tx_id.hex(), node.try_get(f"/v1/txs/{tx.tx_id.hex()}"))
                    if st != "committed":
                        return False
            return True

        wait_until(done, timeout, f"{len(txs)} transaction(s) to commit on {[n.name for n in nodes]}")

    def wait_height(self, nodes: Sequence[Node], height: int, timeout: float = COMMIT_TIMEOUT) -> None:
        wait_until(lambda: all(n.height() >= height for n in nodes), timeout,
                   f"{[n.name for n in nodes]} to reach height {height}")

    def assert_agree(self, nodes: Sequence[Node]) -> int:
        """Every node has the same block at every height they all have; returns that height."""
        top = min(n.height() for n in nodes)
        for h in range(1, top + 1):
            hashes = {n.name: n.block_hash(h) for n in nodes}
            assert len(set(hashes.values())) == 1, f"nodes disagree at height {h}: {hashes}"
        return top

    def next_proposer(self, via: Node) -> Node:
        """The node that proposes round 0 of the next height."""
        h = via.height() + 1
        validators = [keys.public_key_from_did(d) for d in via.get("/v1/authorities")["validators"]]
        key = proposer_of(sorted(validators), h, 0)
        return next(n for n in self.nodes + self.extra if n.key.public_key == key)


PROPOSE_TIMEOUT = "1"  # seconds: short rounds when a proposer is down (the default is 3)


def short_timeouts(data: Path) -> None:
    """Give a node made by `ler node init` the network's propose timeout (as `ler testnet up` did)."""
    cfg = data / "config.toml"
    cfg.write_text(cfg.read_text().replace("[consensus]\n", f"[consensus]\npropose = {PROPOSE_TIMEOUT}.0\n", 1))


def ler(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    return subprocess.run([str(LER), *args], capture_output=True, text=True, timeout=timeout, env=env)


@contextlib.contextmanager
def running_testnet(root: Path, chain_id: str) -> Iterator[Net]:
    """`ler testnet up` of 4 authorities and 1 observer in `root`; on leaving, every node is stopped."""
    r = ler("testnet", "up", "--dir", str(root), "--authorities", "4", "--observers", "1",
            "--base-port", str(free_port()), "--chain-id", chain_id, "--propose-timeout", PROPOSE_TIMEOUT)
    assert r.returncode == 0, r.stderr + r.stdout
    manifest = json.loads((root / "testnet.json").read_text())
    assert set(manifest) >= {"chain_id", "genesis", "nodes", "demo_issuer_key", "demo_record_type"}
    nodes = [Node(n["name"], n["url"], n["role"], Path(n["data"]), Path(n["key"]), n["pid"])
             for n in manifest["nodes"]]
    network = Net(root, manifest["chain_id"], nodes, read_key_file(manifest["demo_issuer_key"]),
                  manifest["demo_record_type"])
    try:
        yield network
    finally:
        for extra in network.extra:
            if extra.alive():
                extra.kill()
        # Nodes the tests restarted with `ler node run --data` are not those `up` started: `down` finds
        # them by their node.pid, and every one of them must be gone.
        r = ler("testnet", "down", "--dir", str(root))
        assert r.returncode == 0, r.stderr
        for n in network.nodes:
            if n.proc is not None:
                n.proc.wait(15)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with running_testnet(tmp_path_factory.mktemp("testnet"), "net-test") as network:
        yield network


# --- the tests, in order -------------------------------------------------------------------------------

def test_network_commits_records_and_every_node_agrees(net: Net) -> None:
    a = net.authorities
    # testnet.json's demo issuer is accredited for its record type from the genesis on.
    demo = a[0].get(f"/v1/issuers/{net.issuer.did}")
    assert demo["status"] == "active" and net.rtype in demo["scopes"] and demo["accredited"] == 0
    other = KeyPair.generate()
    accredit = Action(kind="accredit", subject=other.did, name="Net University", scopes=(net.rtype,), until=None)
    votes = [net.vote(node, accredit) for node in a[:3]]  # 3 of 4: more than 2/3
    for node, vote in zip(a, votes, strict=False):  # each vote to a different node: gossip brings them together
        node.submit([vote])
    net.wait_committed(votes, net.nodes)
    assert a[3].get(f"/v1/issuers/{other.did}")["status"] == "active"
    txs = net.anchors(30)
    for i, node in enumerate(net.nodes):  # the observer takes submissions too and passes them on
        node.submit(txs[i * 6:(i + 1) * 6])
    net.wait_committed(txs, net.nodes)
    record = txs[0].body.record.hex()  # type: ignore[union-attr]
    assert net.observer.get(f"/v1/records/{record}")["standing"] == "accredited"
    net.wait_height(net.nodes, max(n.height() for n in net.nodes))
    top = net.assert_agree(net.nodes)
    assert top >= 2
    # Blocks are made only for transactions: an idle network starts no height and makes no block.
    # (A negative: watched over a window longer than a round's propose timeout.)
    started = [n.log().count("event=height_started") for n in net.authorities]
    time.sleep(1.5)
    assert [n.log().count("event=height_started") for n in net.authorities] == started
    for node in net.nodes:
        health = node.get("/health")
        assert health == {"ok": True, "status": "ok", "warnings": [], "height": top, "role": node.role,
                          "syncing": False, "sync_lag": 0, "peers": health["peers"],
                          "last_block_age_s": health["last_block_age_s"]}  # idle, no heartbeat: no warning
        assert node.get("/v1/status")["round"] == 0
    metrics = http(a[0].url, "GET", "/metrics").body.decode()
    for name in ("ler_height", "ler_round", "ler_commit_latency_seconds_count", "ler_mempool_txs",
                 "ler_mempool_bytes", "ler_peers_connected", "ler_votes_received_total", "ler_sync_lag_blocks",
                 "ler_blocks_committed_total", "ler_txs_committed_total", "ler_signing_held_until_height"):
        assert f"\n{name} " in "\n" + metrics, name
    assert "event=block_committed height=" in a[0].log()
    assert "event=sync_progress" in net.observer.log()  # the observer follows by block sync


def envelope(net: Net, sender: KeyPair, votes: list[Vote] = (), txs: list[Tx] = (),  # type: ignore[assignment]
             sign_with: KeyPair | None = None, **overrides: Any) -> bytes:
    """A peer envelope as node/peers.py builds it (see its docstring for the format)."""
    body = {"boot": b"testboot", "seq": 0, "height": 0, "url": "http://127.0.0.1:9", "proposals": [],
            "votes": [v.encode() for v in votes], "txs": [t.raw for t in txs], **overrides}
    raw_body = codec.encode(body)
    sig = sign_envelope(sign_with or sender, net.chain_id, raw_body)
    return codec.encode({"from": sender.public_key, "body": raw_body, "sig": sig})


def post_envelope(node: Node, data: bytes) -> tuple[int, Any]:
    r = http(node.url, "POST", "/peer/v1/gossip", data, "application/msgpack")
    return r.status, (r.json() if r.content_type == "application/json" else codec.decode(r.body))


def test_peer_endpoints_refuse_what_they_cannot_use_with_a_reason(net: Net) -> None:
    node, peer = net.authorities[0], net.authorities[1].key
    status, reply = post_envelope(node, envelope(net, peer))
    assert status == 200 and set(reply) == {"boot", "height"}  # a hello from a known peer
    stranger = KeyPair.generate()
    cases = [
        (envelope(net, stranger), 403, "not a known peer"),
        (envelope(net, peer, sign_with=stranger), 403, "signature"),
        (b"\x93\x01\x02", 400, "envelope"),
        (b"", 400, "empty"),
        (codec.encode({"from": peer.public_key, "body": b"x", "sig": b"s" * 64}), 403, "signature"),
        (envelope(net, peer, height=-1), 400, "height"),
        (envelope(net, peer, url="ftp://x"), 400, "url"),
        (envelope(net, peer, votes=[], extra=1), 400, "body"),
        (codec.encode({"from": peer.public_key, "body": codec.encode({"a": 1}), "sig": sign_envelope(
            peer, net.chain_id, codec.encode({"a": 1}))}), 400, "body"),
    ]
    forged_vote = codec.encode({**Vote.make(peer, net.chain_id, PREVOTE, 5, 0, None).to_obj(), "round": -1})
    raw_body = codec.encode({"boot": b"testboot", "seq": 0, "height": 0, "url": "http://127.0.0.1:9",
                             "proposals": [b"junk"],
                             "votes": [forged_vote], "txs": []})
    cases.append((codec.encode({"from": peer.public_key, "body": raw_body,
                                "sig": sign_envelope(peer, net.chain_id, raw_body)}), 400, "proposals[0]"))
    for data, want, words in cases:
        r = http(node.url, "POST", "/peer/v1/gossip", data, "application/msgpack")
        assert r.status == want and words in r.json()["error"], (want, words, r)
    for query, want in (("", 400), ("?from=0&to=1", 400), ("?from=2&to=1", 400), ("?from=x&to=1", 400),
                        ("?from=999999&to=1000000", 404)):
        r = http(node.url, "GET", "/peer/v1/blocks" + query)
        assert r.status == want and r.json()["error"], (query, r)
    r = http(node.url, "GET", "/peer/v1/blocks?from=1&to=2")
    assert r.status == 200 and r.content_type == "application/msgpack"
    pairs = codec.decode(r.body)
    assert len(pairs) == 2 and all(len(p) == 2 for p in pairs)
    for query in ("", "?signer=", "?signer=xyz", "?signer=" + "AB" * 32, "?signer=" + "ab" * 31,
                  "?signer=" + "ab" * 33):
        r = http(node.url, "GET", "/peer/v1/consensus" + query)
        assert r.status == 400 and "signer" in r.json()["error"], (query, r)
    r = http(node.url, "GET", "/peer/v1/consensus?signer=" + peer.public_key.hex())
    assert r.status == 200 and r.content_type == "application/msgpack"
    assert parse_held(r.body)[0] == node.height() and parse_held(r.body)[3] is True


def test_equivocation_is_kept_as_evidence_and_reported(net: Net) -> None:
    """Two prevotes by one validator for different blocks at one height and round: evidence."""
    node, liar = net.authorities[0], net.authorities[3].key
    h = node.height() + 1  # the network is idle: the next height starts for these votes
    votes = [Vote.make(liar, net.chain_id, PREVOTE, h, 0, os.urandom(32)) for _ in range(2)]
    for vote in votes:  # one envelope each, as two relays would bring them
        status, _ = post_envelope(node, envelope(net, liar, votes=[vote], height=h - 1))
        assert status == 200

    def reported() -> list[dict[str, Any]]:
        return [e for e in node.get("/v1/evidence")["evidence"]
                if e["validator"] == liar.did and e["height"] == h and e["kind"] == "duplicate_vote"]

    [entry] = wait_until(reported, 30, "the equivocation to be reported")
    assert entry["round"] == 0 and entry["step"] == "prevote" and len(entry["messages"]) == 2
    assert {v.block.hex() for v in votes if v.block} & {m["block"] for m in entry["messages"]}
    # Only the first node got both votes; it hands the evidence on, and every node reports it.
    wait_until(lambda: all(entry in n.get("/v1/evidence")["evidence"] for n in net.nodes), 30,
               "every node to report the evidence one node found")
    txs = net.anchors(2)
    node.submit(txs)
    net.wait_committed(txs, net.nodes)  # one lying validator of four changes nothing
    net.assert_agree(net.nodes)


def _signed_proposal(key: KeyPair, chain_id: str, h: int, r: int, pol: int, block: bytes) -> dict[str, Any]:
    """What a proposal's signature covers, as a piece of evidence carries it (node/evidence.py)."""
    payload = Proposal.payload(h, r, pol, block)
    return {**payload, "proposer": key.public_key, "sig": key.sign_payload("proposal", chain_id, payload)}


def test_evidence_of_a_decided_height_from_a_peer_is_checked_kept_and_handed_on(net: Net) -> None:
    """Conflicting precommits of one authority for a height long decided, and two proposals of one round by
    its proposer, come from a peer that only relays them: every node checks and reports them. Pieces that
    prove nothing are passed over (the rest of the envelope is taken); a malformed list is refused."""
    node, relay, observer = net.authorities[0], net.authorities[1].key, net.observer
    vals = sorted(keys.public_key_from_did(d) for d in node.get("/v1/authorities")["validators"])
    by_key = {n.key.public_key: n.key for n in net.nodes}
    liar = net.authorities[2].key
    h, r = 1, 9  # decided long ago, at round 0: no node's consensus engine sees these
    votes = [Vote.make(liar, net.chain_id, PRECOMMIT, h, r, os.urandom(32)) for _ in range(2)]
    vote_piece = codec.encode({"kind": "vote", "a": votes[0].encode(), "b": votes[1].encode()})
    proposer = by_key[proposer_of(vals, h, r)]
    props = [_signed_proposal(proposer, net.chain_id, h, r, -1, os.urandom(32)) for _ in range(2)]
    proposal_piece = codec.encode({"kind": "proposal", "a": props[0], "b": props[1]})

    same = Vote.make(liar, net.chain_id, PRECOMMIT, h, r + 1, votes[0].block)
    stranger = KeyPair.generate()
    forged = codec.encode({**votes[1].to_obj(), "sig": bytes(64)})
    not_proposer = by_key[next(k for k in vals if k != proposer.public_key)]
    useless = [
        codec.encode({"kind": "vote", "a": same.encode(), "b": same.encode()}),  # no conflict
        codec.encode({"kind": "vote", "a": votes[0].encode(), "b": forged}),  # a bad signature
        codec.encode({"kind": "vote", "a": Vote.make(liar, net.chain_id, PRECOMMIT, h, r + 2, None).encode(),
                      "b": Vote.make(liar, net.chain_id, PREVOTE, h, r + 2, None).encode()}),  # two steps
        codec.encode({"kind": "vote", **{k: Vote.make(stranger, net.chain_id, PRECOMMIT, h, r, os.urandom(32))
                                         .encode() for k in "ab"}}),  # no validator
        codec.encode({"kind": "vote", **{k: Vote.make(liar, net.chain_id, PRECOMMIT, 10**6, 0, os.urandom(32))
                                         .encode() for k in "ab"}}),  # a height not known yet
        codec.encode({"kind": "proposal", **{k: _signed_proposal(not_proposer, net.chain_id, h, r, -1,
                                                                 os.urandom(32)) for k in "ab"}}),
        codec.encode({"kind": "proposal", "a": props[0], "b": props[0]}),  # one proposal twice
        b"\x81\xa4kind\xa4vote", b"junk",
    ]
    before = {n.name: n.get("/v1/evidence")["evidence"] for n in net.nodes}
    passed_over = node.log().count("event=evidence_passed_over")
    status, _ = post_envelope(node, envelope(net, relay, evidence=useless))
    assert status == 200
    # One line for the envelope (a peer cannot write a line per piece into the log), naming each reason.
    [line] = [ln for ln in node.log().splitlines() if "event=evidence_passed_over" in ln][passed_over:]
    assert f"count={len(useless)} " in line, line
    for why in ("no conflict", "signature does not verify", "one validator, height, round and step",
                "is no validator of height 1", "not known yet", "is not the proposer", "sign the same thing",
                "a map of exactly kind", "malformed"):
        assert why in line, (why, line)
    status, _ = post_envelope(node, envelope(net, relay, evidence=useless))
    assert status == 200
    assert node.log().count("event=evidence_passed_over") == passed_over + 1  # not again within a minute
    for bad, want, words in ((1, 400, "evidence"), ([1], 400, "evidence"), ([b"x" * 5000], 400, "larger"),
                             ([b"x"] * 257, 413, "more than 256 pieces")):
        status, answer = post_envelope(node, envelope(net, relay, evidence=bad))
        assert status == want and words in answer["error"], (bad, answer)
    status, _ = post_envelope(node, envelope(net, relay, evidence=[vote_piece, proposal_piece]))
    assert status == 200

    def reported(n: Node) -> list[dict[str, Any]]:
        return [e for e in n.get("/v1/evidence")["evidence"] if e not in before[n.name]]

    wait_until(lambda: all(len(reported(n)) == 2 for n in net.nodes), 30,
               "every node to report the two pieces one node was given")
    for n in (node, observer):
        got = {e["kind"]: e for e in reported(n)}
        assert got["duplicate_vote"]["validator"] == liar.did and got["duplicate_vote"]["step"] == "precommit"
        assert (got["duplicate_vote"]["height"], got["duplicate_vote"]["round"]) == (h, r)
        assert {m["block"] for m in got["duplicate_vote"]["messages"]} == {v.block.hex() for v in votes if v.block}
        assert got["duplicate_proposal"]["validator"] == proposer.did
        assert {m["block"] for m in got["duplicate_proposal"]["messages"]} == {p["block"].hex() for p in props}
    assert "event=evidence kind=vote height=1 round=9 step=precommit" in observer.log()
    # The authority whose key signed both precommits is told, loudly, that another node signs with it.
    liar_node = net.authorities[2]
    own = wait_until(lambda: [w for w in liar_node.get("/health")["warnings"]
                              if w["event"] == "evidence_against_own_key"], 30, "the liar's node to be told")
    assert own[0]["height"] >= h and liar_node.get("/health")["status"] == "degraded", own
    assert "level=CRITICAL logger=ler.peers event=evidence_against_own_key" in liar_node.log()
    # (The proposer of that round, whichever node it is, is told so for the proposals, as the last test's
    # liar was; any other node not.)
    told = (liar.public_key, proposer.public_key, net.authorities[3].key.public_key)
    bystander = next(n for n in net.authorities if n.key.public_key not in told)
    assert not [w for w in bystander.get("/health")["warnings"] if w["event"] == "evidence_against_own_key"]


def test_evidence_against_one_validator_taken_from_peers_is_capped(net: Net) -> None:
    """A faulty validator could sign conflicting pairs for every height it voted in and have them spread
    to fill every node's disk: past 64 pieces against one validator, a node takes no more from peers."""
    node, relay, liar = net.authorities[0], net.authorities[1].key, net.authorities[3].key
    while node.height() < 17:  # four pieces per validator and height, so 17 heights for more than 64
        txs = net.anchors(1)
        node.submit(txs)
        net.wait_committed(txs, [node])
    pieces = [codec.encode({"kind": "vote", **{k: Vote.make(liar, net.chain_id, PRECOMMIT, h, r, os.urandom(32))
                                               .encode() for k in "ab"}})
              for h in range(1, 18) for r in range(20, 24)]
    status, _ = post_envelope(node, envelope(net, relay, evidence=pieces))
    assert status == 200

    def against(n: Node) -> int:
        return sum(1 for e in n.get("/v1/evidence?limit=1000")["evidence"] if e["validator"] == liar.did)

    assert against(node) == 64, against(node)
    wait_until(lambda: all(against(n) == 64 for n in net.nodes if n.key is not liar), 30,
               "the other nodes to take as many")


def test_a_node_rebuilt_from_scratch_gets_earlier_evidence_back_from_its_peers(net: Net) -> None:
    """Gossip hands evidence on as it is found; a node whose database was made afresh (and synced from
    peers) fetches what its peers hold once it is at most a block behind them, and reports it as they do."""
    node, relay, observer = net.authorities[0], net.authorities[1].key, net.observer
    # A height with no evidence yet (a validator's pieces are capped per height and from peers), and
    # a validator with few against it (in this module, the one whose node an earlier test told of its
    # key's fault).
    liar, h = net.authorities[2].key, node.height() + 1
    votes = [Vote.make(liar, net.chain_id, PREVOTE, h, 13, os.urandom(32)) for _ in range(2)]
    piece = codec.encode({"kind": "vote", "a": votes[0].encode(), "b": votes[1].encode()})
    status, _ = post_envelope(node, envelope(net, relay, evidence=[piece]))
    assert status == 200

    def ours(n: Node) -> list[dict[str, Any]]:
        return [e for e in n.get("/v1/evidence?limit=1000")["evidence"]
                if (e["height"], e["round"], e["validator"]) == (h, 13, liar.did)]

    wait_until(lambda: all(ours(n) for n in net.nodes), 30, "every node to report the piece")
    held = sorted(map(json.dumps, observer.get("/v1/evidence?limit=1000")["evidence"]))
    assert held
    observer.kill()
    shutil.rmtree(observer.data / "db")
    observer.start()
    net.wait_height([observer], node.height())
    wait_until(lambda: sorted(map(json.dumps, observer.get("/v1/evidence?limit=1000")["evidence"])) == held, 30,
               "the rebuilt observer to report every piece it reported before")
    assert "event=evidence_fetched" in observer.log()
    assert ours(observer)[0]["messages"] == ours(node)[0]["messages"]


def test_killing_the_proposer_costs_a_timeout_and_it_catches_up_after_restart(net: Net) -> None:
    a = net.authorities
    victim = net.next_proposer(a[0])
    victim.kill()
    rest = [n for n in net.nodes if n is not victim]
    entry = rest[0]
    before = entry.height()
    for _ in range(3):  # several heights: one of them has the dead node as its round-0 proposer
        txs = net.anchors(5)
        entry.submit(txs)
        net.wait_committed(txs, rest)
    assert entry.height() >= before + 3
    net.assert_agree(rest)
    assert "event=round_started" in entry.log()  # some height needed a second round

    victim.start()
    txs = net.anchors(5)
    victim.submit(txs)  # it takes submissions at once and catches up by sync
    net.wait_committed(txs, net.nodes)
    net.assert_agree(net.nodes)


@contextlib.contextmanager
def config_edited(node: Node, edit: Callable[[str], str]) -> Iterator[None]:
    """Run the body with `node`'s config.toml edited; then put it back and restart the node with it."""
    cfg = node.data / "config.toml"
    original = cfg.read_text()
    edited = edit(original)
    assert edited != original
    cfg.write_text(edited)
    try:
        yield
    finally:
        cfg.write_text(original)
        if node.alive():
            node.kill()
        node.start()


def test_a_restarted_authority_asks_its_peers_what_they_hold_of_its_key(net: Net) -> None:
    """A validator that starts asks every validator peer for the messages of its key that it holds. Once
    all have answered and none is ahead of it, it has seen all they could relay and need not listen out
    its full time. Behind them, what they hold is of a height it has not reached: it asks again once
    block sync has brought it level."""
    a = net.authorities
    node, others = a[2], [n for n in net.nodes if n is not a[2]]
    net.wait_height(net.nodes, max(n.height() for n in net.nodes))
    node.kill()
    before = len(node.log())
    node.start()
    wait_until(lambda: "event=listened" in node.log()[before:], 30, "the authority to end its listening")
    assert "event=peers_asked peers=3 running=3" in node.log()[before:]
    # Listening 8 s (four ticks of 2 s) leaves room to catch up by sync before it would end anyway.
    with config_edited(node, lambda t: t.replace("[gossip]\n", "[gossip]\nresend_s = 2.0\n", 1)):
        node.kill()
        for _ in range(2):  # two heights behind: it fetches them at once
            txs = net.anchors(2)
            a[0].submit(txs)
            net.wait_committed(txs, others)
        before = len(node.log())
        node.start()
        wait_until(lambda: "event=listened" in node.log()[before:], 30, "the authority to end its listening")
        fresh = node.log()[before:]
        behind = fresh.index("event=listen_on peers=3 no_answer=0 ahead=3 unasked=0")
        assert behind < fresh.index("event=sync_progress") < fresh.index("event=peers_asked peers=3 running=3")
        net.wait_committed(txs, net.nodes)
    net.assert_agree(net.nodes)
    # A validator it reaches by URL only may be any of them: it cannot tell that one has answered.
    witness = a[0]
    entry = f'[[peers.nodes]]\nurl = "{witness.url}"\ndid = "{witness.key.did}"\n'
    with config_edited(node, lambda t: t.replace(entry, "").replace("urls = []", f'urls = ["{witness.url}"]')):
        node.kill()
        before = len(node.log())
        node.start()
        wait_until(lambda: "event=listen_on" in node.log()[before:], 30, "the authority to say it listens on")
        assert "event=listen_on peers=3 no_answer=0 ahead=0 unasked=1" in node.log()[before:]
        txs = net.anchors(2)
        node.submit(txs)
        net.wait_committed(txs, net.nodes)
        assert "event=listened" not in node.log()[before:]
    net.assert_agree(net.nodes)


def test_an_authority_whose_database_was_removed_knows_what_it_signed_and_syncs_again(net: Net) -> None:
    """LevelDB opens a folder whose files were removed as an empty database: the validator's second
    record of what it signed (its signed-state file) is what tells it where it was."""
    victim = net.authorities[1]
    evidence_before = net.authorities[0].get("/v1/evidence")["evidence"]
    txs = net.anchors(3)
    victim.submit(txs)
    net.wait_committed(txs, net.nodes)  # it has signed at this height, at least
    height = victim.height()
    victim.kill()
    shutil.rmtree(victim.data / "db")
    victim.start()
    said = re.search(r"event=database_behind_signed height=0 signed_height=(\d+)", victim.log())
    assert said and int(said.group(1)) >= height, "the restarted validator forgot what it had signed"
    txs = net.anchors(5)
    victim.submit(txs)
    net.wait_committed(txs, net.nodes)
    net.assert_agree(net.nodes)
    assert net.authorities[0].get("/v1/evidence")["evidence"] == evidence_before


def _signed_by(nodes: Sequence[Node], h: int, key: bytes) -> bool:
    """Whether a certificate of height `h` that one of `nodes` keeps holds a precommit of `key` (each
    node keeps the one it decided with, or synced; the next block carries its proposer's)."""
    for node in nodes:
        for path, field_ in ((f"/v1/blocks/{h}", "cert"), (f"/v1/blocks/{h + 1}", "last_cert")):
            block = node.try_get(path)
            cert = block[field_] if block else None
            if cert and any(bytes.fromhex(s["validator"]) == key for s in cert["sigs"]):
                return True
    return False


def test_an_authority_restored_from_an_older_copy_of_its_folder_holds_back_instead_of_signing_twice(
        net: Net, tmp_path: Path) -> None:
    """Its records of what it signed are as old as the copy. The certificates it syncs hold precommits
    of its key from after them: it says so and signs nothing up to two heights above its peers' height
    then, where the copy cannot have signed; from there it votes again."""
    victim, witness = net.authorities[2], net.authorities[0]
    me = victim.key.public_key
    evidence_before = witness.get("/v1/evidence")["evidence"]
    victim.kill()
    backup = tmp_path / "backup"
    shutil.copytree(victim.data, backup)
    victim.start()
    since = witness.height()

    def signed_since() -> bool:
        # A precommit of the restarted victim in a certificate that a later block carries: the restored
        # victim syncs that block, whichever peer serves it (each keeps a certificate of its own).
        txs = net.anchors(2)
        witness.submit(txs)
        net.wait_committed(txs, [witness])
        return any(me in {bytes.fromhex(s["validator"]) for s in witness.get(f"/v1/blocks/{h}")["last_cert"]["sigs"]}
                   for h in range(since + 2, witness.height() + 1))

    wait_until(signed_since, COMMIT_TIMEOUT, "a certificate with the restarted authority's precommit")
    victim.kill()
    shutil.rmtree(victim.data)
    shutil.copytree(backup, victim.data)
    restored_at = witness.height()
    victim.start()
    found: list[int] = []

    def said() -> bool:
        m = re.search(r"event=signed_beyond_record height=\d+ round=\d+ step=\w+ recorded=.* until_height=(\d+)",
                      victim.log())
        if m:
            found.append(int(m.group(1)))
        return bool(m)

    wait_until(said, COMMIT_TIMEOUT, "the restored authority to see its key's later precommits")
    until = found[0]
    assert until >= restored_at + 2
    assert "level=CRITICAL" in next(x for x in victim.log().splitlines() if "event=signed_beyond_record" in x)

    def votes_again() -> bool:
        txs = net.anchors(2)
        witness.submit(txs)
        net.wait_committed(txs, [witness])
        return any(_signed_by([witness], h, me) for h in range(until, witness.height() + 1))

    wait_until(votes_again, COMMIT_TIMEOUT, "the restored authority's precommits from the hold's height on")
    assert not any(_signed_by(net.authorities, h, me) for h in range(restored_at + 1, until))
    net.wait_height(net.nodes, witness.height())
    net.assert_agree(net.nodes)
    assert witness.get("/v1/evidence")["evidence"] == evidence_before
    # A restart keeps the hold (its records now say it), and says nothing new of its key.
    victim.kill()
    victim.start()
    txs = net.anchors(2)
    victim.submit(txs)
    net.wait_committed(txs, net.nodes)
    assert victim.log().count("event=signed_beyond_record") == 1


def test_an_authority_restored_while_the_network_waits_in_a_height_it_voted_in_holds_back(
        net: Net, tmp_path: Path) -> None:
    """No certificate holds its votes yet: the height they were cast in has not ended, for want of a
    quorum. But its peers hold them, and relay them to it when it comes back: from those it learns
    that it signed beyond its record, and it sits that height out instead of voting in it again."""
    a = net.authorities
    witness = a[0]
    net.wait_height(net.nodes, max(n.height() for n in net.nodes))
    h = witness.height() + 1  # the height the copy will have voted in
    # The victim must not propose round 0 of that height when it comes back (the witness, which keeps
    # running, may), nor be the witness.
    proposer = net.next_proposer(witness)
    victim = next(n for n in a[1:] if n is not proposer)
    others = [n for n in a[1:] if n is not victim]
    me = victim.key.public_key
    evidence_before = witness.get("/v1/evidence")["evidence"]
    victim.kill()
    backup = tmp_path / "backup"
    shutil.copytree(victim.data, backup)
    for n in others:
        n.kill()
    victim.start()
    # Two of four authorities: the height starts for a record, the victim votes in it, nothing commits.
    txs = net.anchors(1)
    witness.submit(txs)

    def voted() -> bool:
        signed = read_signed_file(victim.data / SIGNED_FILE, net.chain_id, me)
        return signed is not None and signed.height == h and signed.step >= PREVOTE

    wait_until(voted, COMMIT_TIMEOUT, "the victim to vote at the height in progress")
    assert witness.height() == h - 1

    def held_by_witness() -> list[Vote]:
        r = http(witness.url, "GET", f"/peer/v1/consensus?signer={me.hex()}")
        assert r.status == 200, r
        return [v for v in map(Vote.decode, parse_held(r.body)[2]) if v.height == h and v.validator == me]

    wait_until(held_by_witness, 10, "the witness to hold the victim's votes of that height")
    victim.kill()
    shutil.rmtree(victim.data)
    shutil.copytree(backup, victim.data)  # its records of what it signed end before height h
    others[0].start()
    victim.start()
    found: list[int] = []

    def said() -> bool:
        m = re.search(r"event=signed_beyond_record height=(\d+) round=\d+ step=\w+ recorded=.* "
                      r"until_height=(\d+) reason=.a peer relayed", victim.log())
        if m:
            assert int(m.group(1)) == h
            found.append(int(m.group(2)))
        return bool(m)

    wait_until(said, COMMIT_TIMEOUT, "the restored authority to be shown its key's earlier votes")
    assert found[0] >= h + 1
    assert held_until(victim) == found[0]  # for the operator's monitoring, as long as it holds
    held = [w["height"] for w in victim.get("/health")["warnings"] if w["event"] == "signing_held"]
    assert held == [found[0]], victim.get("/health")
    # Without its vote three of four are not up: the height ends once the fourth comes back.
    time.sleep(2)
    assert witness.height() == h - 1
    others[1].start()
    net.wait_committed(txs, a)
    assert not _signed_by(a, h, me)

    def votes_again() -> bool:
        more = net.anchors(2)
        witness.submit(more)
        net.wait_committed(more, [witness])
        return any(_signed_by([witness], x, me) for x in range(h + 1, witness.height() + 1))

    wait_until(votes_again, COMMIT_TIMEOUT, "the restored authority's precommits after that height")
    assert held_until(victim) == 0
    assert not [w for w in victim.get("/health")["warnings"] if w["event"] == "signing_held"]
    net.wait_height(net.nodes, witness.height())
    net.assert_agree(net.nodes)
    assert witness.get("/v1/evidence")["evidence"] == evidence_before


def held_until(node: Node) -> int:
    """The node's ler_signing_held_until_height gauge."""
    metrics = http(node.url, "GET", "/metrics").body.decode()
    [value] = [line.split()[1] for line in metrics.splitlines() if line.startswith("ler_signing_held_until_height ")]
    return int(float(value))


def test_a_lone_authority_restored_from_an_older_copy_is_told_and_goes_on(tmp_path: Path) -> None:
    """Alone, holding back would stop its chain for good, and no other validator signs to conflict with:
    it says what it found, once, and goes on making blocks. Its observer serves it the later blocks."""
    chain = make_chain(tmp_path, chain_id="lone-restored")
    a_port, o_port = free_port(), free_port()
    observer_key = KeyPair.generate()
    write_key_file(tmp_path / "observer.key", observer_key)
    a_data, o_data = tmp_path / "authority", tmp_path / "observer"
    init_data_dir(a_data, chain.genesis_path, chain.authority_key_path, f"127.0.0.1:{a_port}",
                  peers=(f"http://127.0.0.1:{o_port}#{observer_key.did}",))
    init_data_dir(o_data, chain.genesis_path, tmp_path / "observer.key", f"127.0.0.1:{o_port}", role="observer",
                  peers=(f"http://127.0.0.1:{a_port}",))
    authority, observer = NodeProc(a_data), NodeProc(o_data)

    def anchor() -> Tx:
        return sign_tx(chain.issuer, chain.chain_id, RecordAnchor(
            record=os.urandom(16), issuer=chain.issuer.did, holder=KeyPair.generate().did, rtype="degree",
            commitment=os.urandom(32), expires=None))

    try:
        authority.start()
        observer.start()
        authority.commit([anchor()])
        assert authority.terminate() == 0
        shutil.copytree(a_data, tmp_path / "backup")
        authority.start()
        for _ in range(3):
            authority.commit([anchor()])
        wait_until(lambda: observer.height() == authority.height() or None, 30, "the observer to catch up")
        assert authority.terminate() == 0
        shutil.rmtree(a_data)
        shutil.copytree(tmp_path / "backup", a_data)
        authority.start()
        wait_until(lambda: "event=signed_beyond_record" in authority.log() or None, 30,
                   "the restored authority to see its key's later precommits")
        authority.commit([anchor()])
        authority.commit([anchor()])
        said = [line for line in authority.log().splitlines() if "event=signed_beyond_record" in line]
        assert len(said) == 1 and "level=WARNING" in said[0] and "until_height" not in said[0], said
        wait_until(lambda: observer.height() == authority.height() or None, 30, "the observer to follow")
    finally:
        for node in (authority, observer):
            if node.proc is not None and node.proc.poll() is None:
                node.terminate()


def skewed(seconds: int) -> dict[str, str]:
    """A node environment whose clock (time.time) runs `seconds` off: tests/data/clock_skew."""
    return {"PYTHONPATH": str(Path(__file__).parent / "data" / "clock_skew"), "LER_TEST_SKEW_S": str(seconds)}


def test_an_authority_node_whose_key_is_no_validator_waits_idle(tmp_path: Path) -> None:
    """A node run as an authority before its key is voted in (or after it was voted out) follows the
    chain and starts no height. It must also spend nothing while it waits: its listening time after
    the start, and a heartbeat it is configured with, are past deadlines for a height it may not start,
    and once set a past deadline had its loop ask again without pause (a core at 100%)."""
    chain = make_chain(tmp_path, chain_id="not-yet")
    outsider = KeyPair.generate()
    write_key_file(tmp_path / "outsider.key", outsider)
    data = tmp_path / "outsider"
    init_data_dir(data, chain.genesis_path, tmp_path / "outsider.key", f"127.0.0.1:{free_port()}",
                  peers=(f"http://127.0.0.1:{free_port()}",))  # a peer that is down: it listens first
    cfg = data / "config.toml"
    cfg.write_text(cfg.read_text().replace("[blocks]\n", "[blocks]\nheartbeat_s = 0.5\n", 1))
    node = NodeProc(data)
    try:
        node.start()
        assert node.get_json("/v1/status")["validator"] is False
        time.sleep(2.5)  # past the listening time (2 s) and several heartbeats

        def cpu_s() -> float:
            fields = Path(f"/proc/{node.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu_s()
        time.sleep(3)
        spent = cpu_s() - before
        assert spent < 0.5, f"an idle node spent {spent:.2f} s of CPU in 3 s"
        assert "event=height_started" not in node.log()
    finally:
        node.close()


def test_an_authority_with_a_wrong_clock_is_named_in_the_logs_and_the_network_goes_on(net: Net) -> None:
    """A clock a minute behind refuses every proposal (too far ahead of it) and warns that it is behind;
    a clock a minute ahead makes proposals the others refuse, naming its proposer, and warns that it is
    ahead. Neither stops the network, and both nodes stay on its chain."""
    a = net.authorities
    odd = a[2]
    others = [n for n in a if n is not odd]
    odd.kill()
    odd.start(skewed(-60))
    txs = net.anchors(4)
    others[0].submit(txs)
    net.wait_committed(txs, net.nodes)
    wait_until(lambda: "event=clock_behind" in odd.log(), 30, "the node a minute behind to warn")

    odd.kill()
    odd.start(skewed(60))
    did = odd.key.did
    for _ in range(12):  # until a height whose round-0 proposer it is has passed
        txs = net.anchors(2)
        others[0].submit(txs)
        net.wait_committed(txs, net.nodes)
        if any(f"rule=header.time proposer={did}" in n.log() for n in others):
            break
    assert all("level=WARNING" in line for n in others for line in n.log().splitlines()
               if f"rule=header.time proposer={did}" in line)
    assert any(f"rule=header.time proposer={did}" in n.log() for n in others)
    # It says so itself, once it has seen blocks of two others timed a minute behind its clock.
    for _ in range(12):
        if "event=clock_ahead" in odd.log():
            break
        txs = net.anchors(2)
        others[0].submit(txs)
        net.wait_committed(txs, net.nodes)
    assert "event=clock_ahead" in odd.log()
    assert not any("event=clock_ahead" in n.log() for n in others)
    odd.kill()
    odd.start()
    txs = net.anchors(2)
    odd.submit(txs)
    net.wait_committed(txs, net.nodes)
    net.assert_agree(net.nodes)


def test_two_nodes_run_from_one_copied_data_folder_are_named_by_their_peers(tmp_path: Path) -> None:
    """An operator copies an authority's data folder and starts the copy too (on another port): two
    processes now send as one authority. Its peers see two process starts alternate, which no restart
    does, and warn naming it, instead of taking each message for a restart and re-sending it all.

    On a network of its own: the module's network has seen made-up process starts in earlier tests, and
    a warning about the same peer within the minute would hide this one's."""
    with running_testnet(tmp_path / "net", "shared-key-test") as net:
        _copied_folder(net, tmp_path)


def test_an_authority_given_another_running_authoritys_key_stops_instead_of_signing_beside_it(
        tmp_path: Path) -> None:
    """An operator copies authority 1's node.key into authority 3's folder and starts it: the first
    envelope signed with its own key from another running process stops it, naming the cause, and the
    network goes on without it; with its own key back it rejoins."""
    with running_testnet(tmp_path / "net", "twin-key-test") as net:
        a = net.authorities
        twin = a[2]
        twin.kill()
        own_key = (twin.data / "node.key").read_bytes()
        shutil.copy(a[0].data / "node.key", twin.data / "node.key")
        with open(twin.data / "node.log", "ab") as log:
            proc = subprocess.Popen([str(LER), "node", "run", "--data", str(twin.data)], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            txs = net.anchors(2)
            a[1].submit(txs)
            assert proc.wait(60) == 1, twin.log()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        log_text = twin.log()
        said = [line for line in log_text.splitlines() if "event=key_used_elsewhere" in line]
        assert len(said) == 1 and "level=CRITICAL" in said[0], said
        assert "another running node signs with this node's key" in log_text
        assert "the node stopped: another running node signs with this node's key" in log_text  # its exit line
        others = [a[0], a[1], a[3]]
        net.wait_committed(txs, others)
        (twin.data / "node.key").write_bytes(own_key)
        twin.start()
        txs = net.anchors(2)
        twin.submit(txs)
        net.wait_committed(txs, net.nodes)
        net.assert_agree(net.nodes)


def _copied_folder(net: Net, tmp_path: Path) -> None:
    original = net.authorities[3]
    others = net.authorities[:3]
    original.kill()
    copy_data = tmp_path / "copy"
    shutil.copytree(original.data, copy_data)
    (copy_data / "node.log").write_text("")
    cfg = copy_data / "config.toml"
    cfg.write_text(re.sub(r'listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{free_port()}"', cfg.read_text()))
    from node.config import load_config

    copy = Node("copy", load_config(copy_data).url, "authority", copy_data, original.key_path, None)
    net.extra.append(copy)
    original.start()
    copy.start()
    did = original.key.did
    warning = f"event=peer_key_shared url={original.url} peer={did}"
    try:
        # The copy stops voting once it finds its key's votes beyond its own record, and then says
        # little besides a hello every few seconds: give the alternation time, not a number of blocks.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(warning in n.log() for n in others):
            txs = net.anchors(2)
            others[0].submit(txs)
            net.wait_committed(txs, others)
            time.sleep(0.2)
        for n in others:
            assert warning in n.log(), n.name
            shared = [line for line in n.log().splitlines() if "event=peer_key_shared" in line]
            assert all("level=WARNING" in line for line in shared)
            # Once a minute at most for each link (the copy's own URL may become a link of its own).
            by_url: dict[str, list[datetime.datetime]] = {}
            for line in shared:
                url = re.search(r" url=(\S+)", line)
                assert url is not None, line
                by_url.setdefault(url[1], []).append(datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"))
            for url, times in by_url.items():
                gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
                assert all(g >= 59 for g in gaps), (n.name, url, gaps)
    finally:
        copy.kill()
        net.extra.remove(copy)
    txs = net.anchors(3)
    original.submit(txs)
    net.wait_committed(txs, net.nodes)
    net.assert_agree(net.nodes)


def test_two_authorities_down_stops_commits_without_a_fork_and_one_back_resumes(net: Net) -> None:
    a = net.authorities
    down = a[:2]
    up = a[2:]
    evidence_before = up[0].get("/v1/evidence")["evidence"]
    for node in [*up, net.observer]:
        health = node.get("/health")
        # (Earlier tests of this module handed on evidence against the keys of up[0] and up[1].)
        warnings = [w for w in health["warnings"] if w["event"] != "evidence_against_own_key"]
        assert health["ok"] is True and warnings == [], health
    for node in down:
        node.kill()
    height = up[0].height()
    txs, observers_txs = net.anchors(3), net.anchors(1)
    up[0].submit(txs)
    net.observer.submit(observers_txs)
    # Two of four cannot commit. "Never" has no deadline: watch a window of several round timeouts.
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        for node in [*up, net.observer]:
            assert node.height() == height, f"{node.name} committed a block with two of four authorities down"
        time.sleep(0.2)
    assert all(node.tx_status(tx) == "pending" for node in up for tx in txs)
    # Every node still serves (liveness: 200, "ok"), and says that no block comes for what waits: an
    # authority of those left, and the observer, which sees no new block either.
    for node in [*up, net.observer]:
        health = wait_until(lambda n=node: (h := n.get("/health"))["status"] == "degraded" and h, 30,
                            f"{node.name}'s /health to warn that no block comes")
        assert health["ok"] is True and health["height"] == height and health["sync_lag"] == 0, health
        (warning,) = health["warnings"]
        assert warning["event"] == "no_block", warning
        assert re.fullmatch(r"no block for \d+ s while \d+ transaction\(s\) wait, for \d+ s: the authorities "
                            r"may have no "
                            r"quorum \(a block needs more than 2/3 of them up and connected\)",
                            warning["reason"]), warning
        assert "ler_stalled 1" in node.request("GET", "/metrics").body.decode()

    down[0].start()  # three of four again
    net.wait_committed(txs + observers_txs, [*up, down[0], net.observer])
    for node in [*up, net.observer]:  # blocks come again, nothing waits: no warning
        wait_until(lambda n=node: not [w for w in n.get("/health")["warnings"] if w["event"] == "no_block"], 30,
                   f"{node.name}'s /health to clear")
    down[1].start()
    net.wait_height(net.nodes, up[0].height())
    net.assert_agree(net.nodes)
    assert up[0].get("/v1/evidence")["evidence"] == evidence_before  # crashes and restarts are not equivocation


def test_what_an_observer_took_commits_though_every_authority_that_held_it_crashed(net: Net) -> None:
    """An observer never proposes: what its clients submit commits only through the authorities, which
    keep gossiped transactions in memory. Every authority holds the observer's transactions (their blocks
    wait a minute to fill), then all crash: restarted, they must get them again from the observer."""
    a = net.authorities

    def restart_all(batch_ms: int) -> None:
        for node in a:
            if node.alive():
                node.kill()
            cfg = node.data / "config.toml"
            cfg.write_text(re.sub(r"\[blocks\]\n(batch_ms = \d+\n)?", f"[blocks]\nbatch_ms = {batch_ms}\n",
                                  cfg.read_text(), count=1))
        for node in a:
            node.start()

    restart_all(60_000)
    try:
        txs = net.anchors(4)
        assert {r["status"] for r in net.observer.submit(txs)} == {"pending"}
        wait_until(lambda: all(n.tx_status(tx) == "pending" for n in a for tx in txs), 20,
                   "every authority to hold the observer's transactions")
    finally:
        restart_all(20)  # the default: blocks made at once again
    # Sooner than the periodic rebroadcast (30 s): the observer resends to each peer it sees restarted.
    net.wait_committed(txs, net.nodes, timeout=25)
    net.assert_agree(net.nodes)
    assert "event=txs_resent" in net.observer.log()


def test_a_new_observer_syncs_the_whole_chain_from_scratch(net: Net, tmp_path: Path) -> None:
    key_path = tmp_path / "observer.key"
    write_key_file(key_path, KeyPair.generate())
    data = tmp_path / "observer2"
    peers = [arg for n in net.authorities for arg in ("--peer", n.url)]
    r = ler("node", "init", "--genesis", str(net.root / "genesis.json"), "--key", str(key_path), "--data",
            str(data), "--listen", f"127.0.0.1:{free_port()}", "--role", "observer", *peers)
    assert r.returncode == 0, r.stderr
    from node.config import load_config

    observer = Node("observer2", load_config(data).url, "observer", data, key_path, None)
    net.extra.append(observer)
    target = net.authorities[0].height()
    observer.start()
    net.wait_height([observer], target)
    assert observer.get("/health")["ok"] is True
    net.assert_agree([observer, *net.nodes])
    assert "event=sync_progress" in observer.log()
    assert re.search(r"event=sync_progress height=\d+ target=\d+ done_pct=[\d.]+ blocks_per_s=[\d.]+ eta_s=",
                     observer.log())
    st = observer.get("/v1/status")
    assert st["role"] == "observer" and st["validator"] is False
    # It serves what it synced: a record anchored before it existed.
    txs = net.anchors(1)
    net.authorities[1].submit(txs)
    net.wait_committed(txs, [observer])
    # The authorities do not list its key, so they refuse its envelopes; what a client submits to it
    # still reaches them, through their public submission endpoint.
    mine = net.anchors(3)
    observer.submit(mine)
    net.wait_committed(mine, [observer, *net.authorities])
    assert "event=peer_public_only" in observer.log()
    observer.kill()
    net.extra.remove(observer)


class Flow:
    """Submits a few anchors every so often to rotating nodes while a test changes the network."""

    def __init__(self, net: Net, nodes: list[Node]) -> None:
        self.net, self.nodes = net, nodes
        self.sent: list[tuple[Node, Tx]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tx-flow")

    def _run(self) -> None:
        i = 0
        try:
            while not self.stop.wait(0.2):
                node = self.nodes[i % len(self.nodes)]
                i += 1
                if not node.alive():
                    continue
                txs = self.net.anchors(3)
                try:
                    node.submit(txs)
                except OSError:
                    continue  # the node went down between the check and the request
                self.sent.extend((node, tx) for tx in txs)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Flow:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        if self.error is not None:
            raise AssertionError(f"the transaction flow failed: {self.error!r}") from self.error


def test_an_authority_added_and_another_removed_by_vote_while_transactions_flow(net: Net, tmp_path: Path) -> None:
    a = net.authorities
    new_key = KeyPair.generate()
    key_path = tmp_path / "new-authority.key"
    write_key_file(key_path, new_key)
    data = tmp_path / "authority5"
    peers = [arg for n in net.nodes for arg in ("--peer", f"{n.url}#{n.key.did}")]
    r = ler("node", "init", "--genesis", str(net.root / "genesis.json"), "--key", str(key_path), "--data",
            str(data), "--listen", f"127.0.0.1:{free_port()}", "--role", "authority", *peers)
    assert r.returncode == 0, r.stderr
    short_timeouts(data)
    from node.config import load_config

    newcomer = Node("authority5", load_config(data).url, "authority", data, key_path, None)
    net.extra.append(newcomer)
    newcomer.start()
    removed = a[3]
    with Flow(net, a[:3]) as flow:
        add = Action(kind="add_authority", subject=new_key.did, name="Fifth Body", scopes=(), until=None)
        votes = [net.vote(node, add) for node in a[:3]]
        a[0].submit(votes)
        net.wait_committed(votes, a)
        remove = Action(kind="remove_authority", subject=removed.key.did, name=None, scopes=(), until=None)
        votes = [net.vote(node, remove) for node in a[:3]] + [net.vote(new_key, remove)]  # 4 of 5
        a[1].submit(votes)
        net.wait_committed(votes, a[:3])
        executed = int(a[0].get(f"/v1/txs/{votes[-1].tx_id.hex()}")["height"])
        switch = executed + 2  # a validator-set change committed at h takes effect at h + 2
        net.wait_height(a[:3], switch)
        validators = set(a[0].get("/v1/authorities")["validators"])
        assert validators == {n.key.did for n in a[:3]} | {new_key.did}
        # The removed node's vote is no longer needed: with it and one more authority down, the three
        # left (two old, the newcomer) still commit, which they can only with the newcomer's votes.
        removed.kill()
        a[2].kill()
        survivors = [a[0], a[1], newcomer]
        txs = net.anchors(4)
        a[0].submit(txs)
        net.wait_committed(txs, survivors)
    # What the flow gave to nodes still up commits (a killed node may have taken some and died before
    # passing them on: those wait in its pending set for its restart).
    flowed = [tx for node, tx in flow.sent if node in survivors]
    assert flowed
    net.wait_committed(flowed, survivors)
    top = net.assert_agree(survivors)
    signers = set()
    for h in range(switch, top + 1):
        cert = a[0].get(f"/v1/blocks/{h}")["cert"]
        signers |= {s["validator"] for s in cert["sigs"]}
        assert removed.key.public_key.hex() not in {s["validator"] for s in cert["sigs"]}
    assert new_key.public_key.hex() in signers
    assert "event=height_started" in newcomer.log()  # it took part in consensus, not only sync
