"""Deterministic discrete-event simulation of whole networks running the consensus engine.

Every node runs `consensus.engine.Tendermint` behind a tiny driver; a network carries its messages with
random delays, reordering, loss, partitions that heal, crashes and restarts, and one validator that
equivocates. Everything random comes from one `random.Random(seed)`, and events are taken from a heap
of (time, sequence, ...) so the same seed always gives the same trace.

What the driver does, as a node would:
- carries out actions in order: RecordSigned is "persisted" (kept across a crash) before the Broadcast
  that follows it; ScheduleTimeout becomes a timer event; Decide is committed, then start_height(h+1);
- relays, once, every message of its current height that its engine accepted (gossip: the algorithm
  assumes a message one honest node received eventually reaches every honest node);
- re-gossips, every `gossip_s` seconds, all of its own messages of its current height, a few random
  ones of others (repairing loss) and a status line with its height; a peer that has decided that
  height answers with the value and its commit certificate (block sync), fed to `on_commit`.

What the tests check: agreement (honest nodes never decide different values at a height), validity
(every decided value was proposed and passes valid()), that every certificate verifies, that no honest
validator ever signs two different messages for one (height, round, step) even across restarts, that
evidence only ever names the equivocating validator, and termination once the network has healed and
more than 2/3 of the validators are honest and up.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

from consensus import (
    Action,
    Broadcast,
    Decide,
    Evidence,
    Proposal,
    RecordSigned,
    Rejected,
    ScheduleTimeout,
    SignedState,
    Tendermint,
    TimeoutConfig,
    skip_threshold,
)
from ler.block import CommitCertificate, Vote
from ler.keys import KeyPair

CHAIN = "ler-sim"


@dataclass(frozen=True, slots=True)
class SimValue:
    """A stand-in block. `ok` is what the application's valid() says about it."""

    height: int
    round: int
    proposer: int
    salt: int
    ok: bool
    hash: bytes = field(compare=False, default=b"")

    @classmethod
    def build(cls, height: int, round_: int, proposer: int, salt: int, ok: bool) -> SimValue:
        digest = hashlib.sha256(f"{height}/{round_}/{proposer}/{salt}/{ok}".encode()).digest()
        return cls(height, round_, proposer, salt, ok, digest)


@cache
def validator_keys(n: int) -> tuple[KeyPair, ...]:
    keys = (KeyPair(hashlib.sha256(b"sim-validator-%d-%d" % (n, i)).digest()) for i in range(n))
    return tuple(sorted(keys, key=lambda k: k.public_key))


@dataclass
class Scenario:
    n: int
    seed: int
    heights: int = 5
    loss: float = 0.0
    delay: tuple[float, float] = (0.005, 0.08)
    partition: tuple[frozenset[int], ...] = ()  # groups that cannot reach each other while it lasts
    partition_span: tuple[float, float] = (0.0, 0.0)
    crashes: tuple[tuple[int, float, float, bool], ...] = ()  # (node, at, restart_at, mid-signature)
    byzantine: int | None = None
    observer: bool = False
    bad_value_rate: float = 0.15  # share of honest proposals the application rejects
    gossip_s: float = 1.0
    repair: int = 6  # others' messages re-sent to each peer per gossip round
    grace_s: float = 240.0  # after the last disruption ends, time allowed to reach the target height

    @property
    def settled_at(self) -> float:
        ends = [self.partition_span[1]] + [restart for _, _, restart, _ in self.crashes]
        return max(ends)


@dataclass
class Node:
    idx: int
    key: KeyPair | None
    engine: Tendermint
    alive: bool = True
    incarnation: int = 0
    persisted: SignedState | None = None
    crash_at_next_record: bool = False
    decided: dict[int, tuple[SimValue, CommitCertificate]] = field(default_factory=dict)
    own: list[Proposal | Vote] = field(default_factory=list)  # own messages of the current height
    store: list[Proposal | Vote] = field(default_factory=list)  # others' messages it accepted (this height)
    relayed: set[bytes] = field(default_factory=set)

    def new_height(self) -> None:
        self.own, self.store, self.relayed = [], [], set()


class Sim:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(f"sim/{sc.n}/{sc.seed}")
        self.keys = validator_keys(sc.n)
        self.vals = tuple(k.public_key for k in self.keys)
        self.timeouts = TimeoutConfig()
        self.heap: list[tuple[Any, ...]] = []
        self.seq = 0
        self.now = 0.0
        self.trace: list[tuple[Any, ...]] = []
        self.proposed: dict[bytes, SimValue] = {}
        self.signed: dict[tuple[bytes, int, int, int], tuple[bytes | None, int]] = {}
        self.evidence: list[Evidence] = []
        self.sent = 0
        self.rejected_values = 0
        self.nodes: list[Node] = []
        for i in range(sc.n + (1 if sc.observer else 0)):
            key = self.keys[i] if i < sc.n else None
            node = Node(i, key, self._engine(i, key, None))
            self.nodes.append(node)
        self.honest = [nd for nd in self.nodes if nd.idx != sc.byzantine]

    # --- nodes -------------------------------------------------------------------------------------
    def _engine(self, i: int, key: KeyPair | None, signed: SignedState | None) -> Tendermint:
        def get_value(height: int, round_: int) -> SimValue:
            roll = hashlib.sha256(f"{self.sc.seed}/{height}/{round_}/{i}".encode()).digest()[0]
            return SimValue.build(height, round_, i, 0, roll >= self.sc.bad_value_rate * 256)

        def valid(value: SimValue) -> bool:
            ok = value.ok and value.height == self.nodes[i].engine.height
            if not ok:
                self.rejected_values += 1
            return ok

        return Tendermint(CHAIN, key, lambda h: self.vals, get_value, valid, self.timeouts, signed)

    def handle(self, node: Node, actions: list[Action]) -> None:
        for a in actions:
            if not node.alive:
                return
            if isinstance(a, RecordSigned):
                node.persisted = a.state  # durable before anything that follows is sent
                if node.crash_at_next_record:
                    node.crash_at_next_record = False
                    self.crash(node)
                    return
            elif isinstance(a, Broadcast):
                self.broadcast(node, a.message)
            elif isinstance(a, ScheduleTimeout):
                self.push(self.now + a.delay_s, "timeout", node.idx, node.incarnation, a.step, a.height, a.round)
            elif isinstance(a, Decide):
                self.decide(node, a)
            elif isinstance(a, Evidence):
                self.evidence.append(a)

    def broadcast(self, node: Node, m: Proposal | Vote) -> None:
        if node.idx != self.sc.byzantine:
            self.check_not_equivocating(m)
        if isinstance(m, Proposal):
            self.proposed[m.block_hash] = m.value
        node.own.append(m)
        for j in range(len(self.nodes)):
            if j != node.idx:
                for variant in self.variants(node, m):
                    self.send(node.idx, j, ("msg", variant))

    def check_not_equivocating(self, m: Proposal | Vote) -> None:
        signed: tuple[bytes | None, int]
        if isinstance(m, Proposal):
            slot, signed = (m.proposer, m.height, m.round, 0), (m.block_hash, m.pol_round)
        else:
            slot, signed = (m.validator, m.height, m.round, m.type), (m.block, -1)
        before = self.signed.setdefault(slot, signed)
        assert before == signed, f"honest validator signed two different messages for {slot[1:]}"

    def variants(self, node: Node, m: Proposal | Vote) -> list[Proposal | Vote]:
        """What `node` sends one peer for `m`: the message itself, or for the byzantine node a
        conflicting twin, or both."""
        if node.idx != self.sc.byzantine:
            return [m]
        assert node.key is not None
        if isinstance(m, Proposal):
            value = SimValue.build(m.height, m.round, node.idx, 1 + self.rng.randrange(3), self.rng.random() < 0.8)
            self.proposed[value.hash] = value
            twin: Proposal | Vote = Proposal.make(node.key, CHAIN, m.height, m.round, m.pol_round, value)
        else:
            others = [h for h, v in self.proposed.items() if v.height == m.height and h != m.block]
            block = self.rng.choice([None, *others[-3:]])
            if block == m.block:
                block = hashlib.sha256(b"nothing-%d" % self.rng.randrange(10**6)).digest()
            twin = Vote.make(node.key, CHAIN, m.type, m.height, m.round, block)
        roll = self.rng.random()
        return [m] if roll < 0.4 else [twin] if roll < 0.8 else [m, twin]

    def decide(self, node: Node, d: Decide) -> None:
        assert d.height == len(node.decided) + 1, "decisions come in height order"
        d.certificate.verify(CHAIN, self.vals)
        assert self.proposed.get(d.value.hash) == d.value, "decided a value nobody proposed"
        assert (d.certificate.height, d.certificate.round, d.certificate.block) == (d.height, d.round, d.value.hash)
        node.decided[d.height] = (d.value, d.certificate)
        self.trace.append((round(self.now, 6), node.idx, d.height, d.round, d.value.hash[:6].hex()))
        self.push(self.now + 0.002, "start", node.idx, node.incarnation, d.height + 1)

    def crash(self, node: Node) -> None:
        node.alive = False
        node.incarnation += 1
        self.trace.append((round(self.now, 6), node.idx, "crash"))

    def restart(self, node: Node) -> None:
        node.alive = True
        node.incarnation += 1
        node.engine = self._engine(node.idx, node.key, node.persisted)
        node.new_height()
        self.trace.append((round(self.now, 6), node.idx, "restart"))
        self.handle(node, node.engine.start_height(len(node.decided) + 1))

    # --- network -----------------------------------------------------------------------------------
    def push(self, t: float, *event: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, *event))

    def reachable(self, a: int, b: int) -> bool:
        lo, hi = self.sc.partition_span
        if not self.sc.partition or not lo <= self.now < hi:
            return True
        return any(a in g and b in g for g in self.sc.partition)

    def send(self, src: int, dst: int, payload: tuple[Any, ...]) -> None:
        self.sent += 1
        if self.rng.random() < self.sc.loss or not self.reachable(src, dst):
            return
        self.push(self.now + self.rng.uniform(*self.sc.delay), "deliver", src, dst, payload)

    def deliver(self, src: int, node: Node, payload: tuple[Any, ...]) -> None:
        kind = payload[0]
        if kind == "msg":
            m = payload[1]
            actions = node.engine.on_message(m)
            self.handle(node, actions)
            if (node.alive and m.height == node.engine.height and m.sig not in node.relayed
                    and node.idx != self.sc.byzantine and not any(isinstance(a, Rejected) for a in actions)):
                # gossip: pass on, once, what this node accepted (the byzantine node withholds)
                node.relayed.add(m.sig)
                node.store.append(m)
                for j in range(len(self.nodes)):
                    if j not in (node.idx, src):
                        self.send(node.idx, j, ("msg", m))
        elif kind == "status":
            got = node.decided.get(payload[1])
            if got is not None:
                self.send(node.idx, src, ("commit", *got))
        elif kind == "commit":
            value, cert = payload[1], payload[2]
            if cert.height == node.engine.height and not node.engine.decided:
                self.handle(node, node.engine.on_commit(value, cert))

    def gossip(self, node: Node) -> None:
        for j in range(len(self.nodes)):
            if j == node.idx:
                continue
            self.send(node.idx, j, ("status", node.engine.height))
            for m in node.own:
                for variant in self.variants(node, m):
                    self.send(node.idx, j, ("msg", variant))
            # repair what loss took from the relays: a few of the others' messages, chosen at random
            for m in self.rng.sample(node.store, min(self.sc.repair, len(node.store))):
                self.send(node.idx, j, ("msg", m))

    # --- the loop ----------------------------------------------------------------------------------
    def done(self) -> bool:
        return self.now >= self.sc.settled_at and all(len(nd.decided) >= self.sc.heights for nd in self.honest)

    def run(self) -> Sim:
        for nd in self.nodes:
            self.push(0.0, "start", nd.idx, nd.incarnation, 1)
            self.push(self.rng.uniform(0, self.sc.gossip_s), "gossip", nd.idx)
        for idx, at, restart_at, mid in self.sc.crashes:
            self.push(at, "crash", idx, mid)
            self.push(restart_at, "restart", idx)
        deadline = self.sc.settled_at + self.sc.grace_s
        while self.heap and not self.done():
            event = heapq.heappop(self.heap)
            self.now, kind = event[0], event[2]
            if self.now > deadline:
                break
            if kind == "deliver":
                _, _, _, src, dst, payload = event
                if self.nodes[dst].alive:
                    self.deliver(src, self.nodes[dst], payload)
            elif kind == "timeout":
                _, _, _, idx, inc, step, height, round_ = event
                nd = self.nodes[idx]
                if nd.alive and nd.incarnation == inc:
                    self.handle(nd, nd.engine.on_timeout(step, height, round_))
            elif kind == "gossip":
                nd = self.nodes[event[3]]
                if nd.alive:
                    self.gossip(nd)
                self.push(self.now + self.sc.gossip_s, "gossip", nd.idx)
            elif kind == "start":
                _, _, _, idx, inc, height = event
                nd = self.nodes[idx]
                if (nd.alive and nd.incarnation == inc and nd.engine.height == height - 1
                        and height <= self.sc.heights):  # past the target a node only serves block sync
                    nd.new_height()
                    self.handle(nd, nd.engine.start_height(height))
            elif kind == "crash":
                nd = self.nodes[event[3]]
                if event[4]:
                    nd.crash_at_next_record = True  # crash between persisting and sending
                elif nd.alive:
                    self.crash(nd)
            elif kind == "restart":
                nd = self.nodes[event[3]]
                if nd.alive and nd.crash_at_next_record:
                    nd.crash_at_next_record = False  # it never got to sign anything: crash now
                    self.crash(nd)
                self.restart(nd)
        return self

    # --- the properties ----------------------------------------------------------------------------
    def check_safety(self) -> None:
        for h in range(1, max((len(nd.decided) for nd in self.nodes), default=0) + 1):
            values = {nd.decided[h][0].hash for nd in self.honest if h in nd.decided}
            assert len(values) <= 1, f"fork at height {h}: {len(values)} different decisions"
            for v in values:
                assert v in self.proposed, "decided a value nobody proposed"
                value = self.proposed[v]
                assert value.ok and value.height == h, "decided a value valid() rejects"
        for ev in self.evidence:
            a, b = ev.vote_a, ev.vote_b
            assert self.sc.byzantine is not None, "evidence against an honest validator"
            assert a.validator == b.validator == self.vals[self.sc.byzantine]
            assert (a.height, a.round, a.type) == (b.height, b.round, b.type) and a.block != b.block
            assert a.signature_valid(CHAIN) and b.signature_valid(CHAIN)

    def check_termination(self) -> None:
        short = {nd.idx: len(nd.decided) for nd in self.honest if len(nd.decided) < self.sc.heights}
        assert not short, f"no progress by t={self.now:.1f}s (settled at {self.sc.settled_at:.1f}s): {short}"


def random_scenario(n: int, seed: int) -> Scenario:
    rng = random.Random(f"scenario/{n}/{seed}")
    f = (n - 1) // 3
    byzantine = rng.randrange(n) if rng.random() < 0.5 else None
    sc = Scenario(n=n, seed=seed, loss=rng.choice([0.0, 0.05, 0.15]),
                  delay=(0.002, rng.choice([0.05, 0.2, 0.8])), byzantine=byzantine,
                  observer=rng.random() < 0.25)
    if rng.random() < 0.35:
        members = list(range(n + (1 if sc.observer else 0)))
        rng.shuffle(members)
        cut = rng.randrange(1, n)
        start = rng.uniform(0, 2)
        sc.partition = (frozenset(members[:cut]), frozenset(members[cut:]))
        sc.partition_span = (start, start + rng.uniform(1, 8))
    honest = [i for i in range(n) if i != byzantine]
    crashes = []
    for idx in rng.sample(honest, rng.randint(0, f)):
        at = rng.uniform(0, 3)
        crashes.append((idx, at, at + rng.uniform(0.5, 4), rng.random() < 0.5))
    sc.crashes = tuple(crashes)
    return sc


def harsh_scenario(n: int, seed: int) -> Scenario:
    """Everything at once: an equivocator, f crashes, a partition, heavy loss, delays beyond the timeouts."""
    rng = random.Random(f"harsh/{n}/{seed}")
    f = (n - 1) // 3
    byzantine = rng.randrange(n)
    sc = Scenario(n=n, seed=seed, heights=4, loss=rng.choice([0.2, 0.35]), delay=(0.01, rng.choice([0.5, 1.5])),
                  byzantine=byzantine, observer=rng.random() < 0.5, bad_value_rate=rng.choice([0.0, 0.3, 0.6]))
    members = list(range(n + (1 if sc.observer else 0)))
    rng.shuffle(members)
    cut, start = rng.randrange(1, n), rng.uniform(0, 3)
    sc.partition = (frozenset(members[:cut]), frozenset(members[cut:]))
    sc.partition_span = (start, start + rng.uniform(2, 15))
    honest = [i for i in range(n) if i != byzantine]
    crashes = []
    for idx in rng.sample(honest, f):
        at = rng.uniform(0, 5)
        crashes.append((idx, at, at + rng.uniform(0.5, 8), rng.random() < 0.5))
    sc.crashes = tuple(crashes)
    return sc


SEEDS = range(40)


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_networks_agree_and_progress(n: int, seed: int) -> None:
    sim = Sim(random_scenario(n, seed)).run()
    sim.check_safety()
    sim.check_termination()


@pytest.mark.parametrize(("n", "seed"), [(4, 0), (4, 1), (4, 2), (7, 0), (7, 1)])
def test_harsh_networks_agree_and_progress(n: int, seed: int) -> None:
    sim = Sim(harsh_scenario(n, seed)).run()
    sim.check_safety()
    sim.check_termination()


def test_the_same_seed_gives_the_same_trace() -> None:
    sc = random_scenario(4, 3)
    sc.byzantine, sc.loss, sc.crashes = 2, 0.1, ((0, 1.0, 3.0, True),)
    a, b = Sim(sc).run(), Sim(sc).run()
    assert a.trace == b.trace and a.sent == b.sent and len(a.evidence) == len(b.evidence)
    assert len(a.trace) >= 4 * sc.heights


def test_a_partition_without_quorum_decides_nothing_then_heals() -> None:
    sc = Scenario(n=4, seed=1, heights=3, partition=(frozenset({0, 1}), frozenset({2, 3})),
                  partition_span=(0.0, 12.0), bad_value_rate=0.0)
    sim = Sim(sc).run()
    sim.check_safety()
    sim.check_termination()
    first = min(t for t, *_ in sim.trace)
    assert first >= 12.0, "a side with 2 of 4 validators decided something"
    # each height decided once, by everyone, with the same value
    assert {len(nd.decided) for nd in sim.nodes} == {3}


def test_a_majority_side_keeps_deciding_while_the_minority_is_cut_off() -> None:
    sc = Scenario(n=7, seed=2, heights=4, partition=(frozenset({0, 1, 2, 3, 4}), frozenset({5, 6})),
                  partition_span=(0.0, 30.0))
    sim = Sim(sc).run()
    sim.check_safety()
    sim.check_termination()
    majority_done = [max(t for t, i, *rest in sim.trace if i == idx and rest and rest[0] == 4)
                     for idx in (0, 1, 2, 3, 4)]
    assert max(majority_done) < 30.0  # the quorum side did not wait for the partition to heal
    assert all(len(sim.nodes[i].decided) == 4 for i in (5, 6))  # the minority caught up by block sync


def test_crashes_between_persisting_and_sending_never_cause_equivocation() -> None:
    for seed in range(6):
        # three of seven validators crash, each right after persisting a signature and before sending
        # it; two are down at once for a while (5 of 7 up: still a quorum)
        crashes = tuple((i, 0.05 + 0.2 * i + 0.03 * seed, 1.0 + 0.5 * i, True) for i in range(3))
        sc = Scenario(n=7, seed=100 + seed, heights=6, crashes=crashes, loss=0.05)
        sim = Sim(sc).run()
        sim.check_safety()  # check_not_equivocating ran on every honest broadcast
        sim.check_termination()
        assert [e[1] for e in sim.trace if e[2] == "crash"] == [0, 1, 2]
        assert [e[1] for e in sim.trace if e[2] == "restart"] == [0, 1, 2]


def test_byzantine_equivocation_is_detected_and_harmless() -> None:
    evidence = 0
    for seed in range(6):
        sc = Scenario(n=4, seed=200 + seed, heights=4, byzantine=seed % 4, loss=0.05)
        sim = Sim(sc).run()
        sim.check_safety()
        sim.check_termination()
        evidence += len(sim.evidence)
    assert evidence > 0


def test_invalid_proposals_are_never_decided() -> None:
    sc = Scenario(n=4, seed=7, heights=5, bad_value_rate=0.5)
    sim = Sim(sc).run()
    sim.check_safety()
    sim.check_termination()
    assert sim.rejected_values > 0
    assert any(not v.ok for v in sim.proposed.values())


def test_observer_follows_the_chain() -> None:
    sc = Scenario(n=4, seed=9, heights=3, observer=True, loss=0.1)
    sim = Sim(sc).run()
    sim.check_safety()
    sim.check_termination()
    observer = sim.nodes[4]
    assert observer.key is None and len(observer.decided) >= 1
    assert skip_threshold(4) == 2
