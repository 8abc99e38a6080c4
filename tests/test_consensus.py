"""Unit tests of the consensus engine: one test (or a few) per upon-rule of Algorithm 1, with real keys.

Messages are built by hand and fed to one engine, or carried by a tiny synchronous network for the
whole-protocol cases. The deterministic network simulation is in test_consensus_sim.py.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from consensus import (
    Action,
    Broadcast,
    ConflictingProposals,
    Decide,
    Evidence,
    Proposal,
    RecordSigned,
    Rejected,
    ScheduleTimeout,
    SignedState,
    Tendermint,
    TimeoutConfig,
    proposer_of,
    quorum,
    skip_threshold,
)
from consensus.engine import EVIDENCE_PER_VALIDATOR
from consensus.messages import PROPOSE, describe, sender
from ler.block import PRECOMMIT, PREVOTE, CertSig, CommitCertificate, Vote
from ler.errors import DecodeError, ProofError
from ler.keys import KeyPair
from ler.wire import Wire, b32, limit

CHAIN = "ler-test"
H = 1


def _key(i: int) -> KeyPair:
    return KeyPair(hashlib.sha256(b"consensus-unit-%d" % i).digest())


_ALL = sorted((_key(i) for i in range(5)), key=lambda k: k.public_key)
KEYS = _ALL[:4]  # the validators, in ascending key order
OUTSIDER = _ALL[4]  # a key that is not in the set
VALS = tuple(k.public_key for k in KEYS)
BY_PK = {k.public_key: k for k in _ALL}


@dataclass(frozen=True, slots=True)
class Val:
    """A stand-in for a block: only its hash matters to the engine."""

    name: str
    ok: bool = True

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.name.encode()).digest()


A, B, C = Val("A"), Val("B"), Val("C")
BAD = Val("bad", ok=False)


def proposer_index(h: int, r: int) -> int:
    return VALS.index(proposer_of(VALS, h, r))


def engine(i: int | None, *, signed: SignedState | None = None, key: KeyPair | None = None,
           values: Callable[[int, int], Any] | None = None,
           validators: Callable[[int], Sequence[bytes]] | None = None, **kw: Any) -> Tendermint:
    return Tendermint(CHAIN, key if key is not None else (KEYS[i] if i is not None else None),
                      validators or (lambda h: VALS),
                      values or (lambda h, r: Val(f"h{h}r{r}")),
                      lambda v: bool(v.ok), TimeoutConfig(), signed, **kw)


def prevote(i: int, r: int, v: Val | None, h: int = H) -> Vote:
    return Vote.make(KEYS[i], CHAIN, PREVOTE, h, r, v.hash if v else None)


def precommit(i: int, r: int, v: Val | None, h: int = H) -> Vote:
    return Vote.make(KEYS[i], CHAIN, PRECOMMIT, h, r, v.hash if v else None)


def proposal(r: int, v: Val, pol: int = -1, h: int = H, key: KeyPair | None = None) -> Proposal:
    return Proposal.make(key or KEYS[proposer_index(h, r)], CHAIN, h, r, pol, v)


def sent(actions: list[Action]) -> list[Any]:
    return [a.message for a in actions if isinstance(a, Broadcast)]


def sent_votes(actions: list[Action], vtype: int) -> list[Vote]:
    return [m for m in sent(actions) if isinstance(m, Vote) and m.type == vtype]


def one_vote(actions: list[Action], vtype: int) -> Vote:
    votes = sent_votes(actions, vtype)
    assert len(votes) == 1, actions
    return votes[0]


def decisions(actions: list[Action]) -> list[Decide]:
    return [a for a in actions if isinstance(a, Decide)]


def timeouts(actions: list[Action]) -> list[ScheduleTimeout]:
    return [a for a in actions if isinstance(a, ScheduleTimeout)]


def feed(e: Tendermint, *messages: Proposal | Vote) -> list[Action]:
    out: list[Action] = []
    for m in messages:
        out += e.on_message(m)
    return out


def assert_records_precede_broadcasts(actions: list[Action], me: bytes | None) -> None:
    """Every Broadcast of an own message comes after a RecordSigned of exactly that message."""
    recorded: SignedState | None = None
    for a in actions:
        if isinstance(a, RecordSigned):
            recorded = a.state
        elif isinstance(a, Broadcast) and sender(a.message) == me:
            m = a.message
            assert recorded is not None, f"{describe(m)} broadcast before any RecordSigned"
            if isinstance(m, Proposal):
                assert (recorded.height, recorded.round, recorded.step, recorded.block, recorded.pol_round) == (
                    m.height, m.round, PROPOSE, m.block_hash, m.pol_round)
            else:
                assert (recorded.height, recorded.round, recorded.step, recorded.block) == (
                    m.height, m.round, m.type, m.block)


# --- a synchronous network for whole-protocol tests --------------------------------------------------

class Net:
    """Delivers every broadcast to every other engine, FIFO, until quiet. Timeouts are fired by hand."""

    def __init__(self, engines: list[Tendermint], keys: list[KeyPair | None]) -> None:
        self.engines = engines
        self.me = [k.public_key if k else None for k in keys]
        self.queue: deque[tuple[int, Any]] = deque()
        self.decided: dict[int, list[Decide]] = {i: [] for i in range(len(engines))}
        self.timeouts: dict[int, list[ScheduleTimeout]] = {i: [] for i in range(len(engines))}
        self.actions: dict[int, list[list[Action]]] = {i: [] for i in range(len(engines))}
        self.down: set[int] = set()

    def handle(self, i: int, actions: list[Action]) -> None:
        self.actions[i].append(actions)
        assert_records_precede_broadcasts(actions, self.me[i])
        for a in actions:
            if isinstance(a, Broadcast):
                for j in range(len(self.engines)):
                    if j != i:
                        self.queue.append((j, a.message))
            elif isinstance(a, Decide):
                self.decided[i].append(a)
            elif isinstance(a, ScheduleTimeout):
                self.timeouts[i].append(a)

    def start(self, height: int) -> None:
        for i, e in enumerate(self.engines):
            if i not in self.down:
                self.handle(i, e.start_height(height))
        self.run()

    def run(self) -> None:
        while self.queue:
            j, m = self.queue.popleft()
            if j not in self.down:
                self.handle(j, self.engines[j].on_message(m))

    def fire(self, step: str) -> None:
        """Fire the latest timeout of `step` at every live engine."""
        for i, e in enumerate(self.engines):
            pending = [t for t in self.timeouts[i] if t.step == step]
            if i not in self.down and pending:
                t = pending[-1]
                self.handle(i, e.on_timeout(t.step, t.height, t.round))
        self.run()


def make_net(n_observers: int = 0) -> Net:
    keys: list[KeyPair | None] = list(KEYS) + [None] * n_observers
    return Net([engine(None, key=k) if k else engine(None) for k in keys], keys)


# --- thresholds and helpers --------------------------------------------------------------------------

def test_thresholds() -> None:
    assert [quorum(n) for n in (1, 2, 3, 4, 5, 6, 7, 10)] == [1, 2, 3, 3, 4, 5, 5, 7]
    assert [skip_threshold(n) for n in (1, 2, 3, 4, 5, 6, 7, 10)] == [1, 1, 2, 2, 2, 3, 3, 4]
    for n in range(1, 50):
        q, s = quorum(n), skip_threshold(n)
        assert 3 * q > 2 * n >= 3 * (q - 1)
        assert 3 * s > n >= 3 * (s - 1)
    assert proposer_of(VALS, 1, 0) == VALS[1] and proposer_of(VALS, 1, 3) == VALS[0]


def test_timeouts_grow_with_the_round() -> None:
    t = TimeoutConfig()
    assert [t.delay("propose", r) for r in range(3)] == [1.0, 1.5, 2.0]
    assert t.delay("prevote", 2) == 1.0 and t.delay("precommit", 4) == 1.5
    with pytest.raises(ValueError):
        t.delay("commit", 0)


# --- rules 22, 36, 49: the happy path ----------------------------------------------------------------

def test_happy_path_single_engine_rules_22_36_49() -> None:
    e = engine(0)
    acts = e.start_height(H)
    assert timeouts(acts) == [ScheduleTimeout("propose", H, 0, 1.0)]
    assert not sent(acts)

    acts = e.on_proposal(proposal(0, A))  # line 22
    assert one_vote(acts, PREVOTE).block == A.hash and e.step_name == "prevote"

    acts = feed(e, prevote(1, 0, A))
    assert not sent(acts)  # 2 of 4 prevotes: not yet a quorum
    acts = feed(e, prevote(2, 0, A))  # line 36: lock and precommit
    assert one_vote(acts, PRECOMMIT).block == A.hash
    assert (e.locked_round, e.locked_hash, e.valid_round, e.valid_hash) == (0, A.hash, 0, A.hash)
    assert e.step_name == "precommit"

    acts = feed(e, precommit(1, 0, A))
    assert not decisions(acts)
    acts = feed(e, precommit(3, 0, A))  # line 49
    [d] = decisions(acts)
    assert (d.height, d.round, d.value) == (H, 0, A)
    d.certificate.verify(CHAIN, VALS)
    assert [s.validator for s in d.certificate.sigs] == sorted(s.validator for s in d.certificate.sigs)
    assert {s.validator for s in d.certificate.sigs} == {VALS[0], VALS[1], VALS[3]}
    assert e.decided
    assert feed(e, precommit(2, 0, A)) == []  # after the decision the height is closed


def test_happy_path_four_validators_decide_in_round_0() -> None:
    net = make_net()
    net.start(H)
    for i in range(4):
        [d] = net.decided[i]
        assert (d.height, d.round) == (H, 0)
        assert d.value == Val(f"h{H}r0")
        d.certificate.verify(CHAIN, VALS)
    # nobody needed a timeout other than the non-proposers' propose timeout
    assert all(t.step == "propose" for ts in net.timeouts.values() for t in ts)
    assert [len(net.timeouts[i]) for i in range(4)] == [1, 0, 1, 1]


def test_consecutive_heights_with_certificates() -> None:
    net = make_net()
    for h in (1, 2, 3):
        net.start(h)
        values = {net.decided[i][-1].value for i in range(4)}
        assert len(values) == 1 and values == {Val(f"h{h}r0")}
        for i in range(4):
            cert = net.decided[i][-1].certificate
            assert cert.height == h
            cert.verify(CHAIN, VALS)


# --- rule 22 (invalid value), rule 57 (propose timeout), 44, 47, 65 ---------------------------------

def test_invalid_proposal_gets_a_nil_prevote() -> None:
    e = engine(0)
    e.start_height(H)
    acts = e.on_proposal(proposal(0, BAD))
    assert one_vote(acts, PREVOTE).block is None


def test_proposal_from_wrong_proposer_or_bad_signature_is_rejected() -> None:
    e = engine(0)
    e.start_height(H)
    acts = e.on_proposal(proposal(0, A, key=KEYS[2]))
    assert isinstance(acts[0], Rejected) and "not the proposer" in acts[0].reason
    good = proposal(0, A)
    forged = Proposal(good.height, good.round, good.pol_round, B, good.proposer, good.sig)
    acts = e.on_proposal(forged)
    assert isinstance(acts[0], Rejected) and "invalid signature" in acts[0].reason
    acts = e.on_vote(Vote(PREVOTE, H, 0, A.hash, VALS[1], b"\x00" * 64))
    assert isinstance(acts[0], Rejected) and "invalid signature" in acts[0].reason
    acts = e.on_vote(Vote.make(OUTSIDER, CHAIN, PREVOTE, H, 0, A.hash))
    assert isinstance(acts[0], Rejected) and "not a validator" in acts[0].reason
    assert e.step_name == "propose"  # none of it counted
    assert one_vote(e.on_proposal(good), PREVOTE).block == A.hash


def test_proposer_timeout_then_next_proposer_decides_in_round_1() -> None:
    e = engine(0)
    e.start_height(H)
    acts = e.on_timeout("propose", H, 0)  # line 57
    assert one_vote(acts, PREVOTE).block is None
    assert e.on_timeout("propose", H, 0) == []  # a timeout fires its rule once

    acts = feed(e, prevote(2, 0, None), prevote(3, 0, None))  # line 44
    assert one_vote(acts, PRECOMMIT).block is None
    assert e.step_name == "precommit"

    acts = feed(e, precommit(2, 0, None), precommit(3, 0, None))  # line 47
    assert timeouts(acts) == [ScheduleTimeout("precommit", H, 0, 0.5)]
    assert e.on_timeout("prevote", H, 0) == []  # stale step: nothing

    acts = e.on_timeout("precommit", H, 0)  # line 65
    assert (e.round, e.step_name) == (1, "propose")
    assert proposer_index(H, 1) == 2
    assert timeouts(acts) == [ScheduleTimeout("propose", H, 1, 1.5)]

    acts = feed(e, proposal(1, B))
    assert one_vote(acts, PREVOTE).block == B.hash
    acts = feed(e, prevote(2, 1, B), prevote(3, 1, B))
    assert one_vote(acts, PRECOMMIT).block == B.hash
    acts = feed(e, precommit(2, 1, B), precommit(3, 1, B))
    [d] = decisions(acts)
    assert (d.round, d.value) == (1, B)
    d.certificate.verify(CHAIN, VALS)
    assert d.certificate.round == 1


def test_silent_proposer_network_moves_to_round_1_and_decides() -> None:
    net = make_net()
    net.down.add(proposer_index(H, 0))
    net.start(H)
    assert not any(net.decided.values())
    net.fire("propose")  # everyone prevotes nil -> 2f+1 nil prevotes -> precommit nil -> timeout scheduled
    net.fire("precommit")  # round 1, whose proposer is up
    for i in range(4):
        if i not in net.down:
            [d] = net.decided[i]
            assert d.round == 1
            d.certificate.verify(CHAIN, VALS)


def test_prevote_timeout_rule_34_and_61() -> None:
    e = engine(0)
    e.start_height(H)
    e.on_proposal(proposal(0, A))
    acts = feed(e, prevote(1, 0, None), prevote(2, 0, B))  # 3 prevotes, no 2f+1 for anything
    assert timeouts(acts) == [ScheduleTimeout("prevote", H, 0, 0.5)]
    assert timeouts(feed(e, prevote(3, 0, None))) == []  # once per round
    acts = e.on_timeout("prevote", H, 0)
    assert one_vote(acts, PRECOMMIT).block is None
    assert e.locked_round == -1


def test_decision_from_an_earlier_round_rule_49() -> None:
    """Precommits of round 0 still decide after the engine has moved on to round 2."""
    e = engine(0)
    e.start_height(H)
    feed(e, prevote(1, 2, None), prevote(2, 2, None))  # f+1 at round 2: skip there
    assert e.round == 2
    acts = feed(e, proposal(0, A), precommit(1, 0, A), precommit(2, 0, A))
    assert not decisions(acts)  # 2 of 4
    [d] = decisions(feed(e, precommit(3, 0, A)))
    assert (d.round, d.value) == (0, A)
    d.certificate.verify(CHAIN, VALS)


def test_quorum_of_precommits_for_an_unknown_or_invalid_value_decides_nothing() -> None:
    e = engine(0)
    e.start_height(H)
    acts = feed(e, precommit(1, 0, A), precommit(2, 0, A), precommit(3, 0, A))
    assert not decisions(acts)
    [d] = decisions(e.on_proposal(proposal(0, A)))  # the value arrives later
    assert d.value == A

    e = engine(0)
    e.start_height(H)
    acts = feed(e, proposal(0, BAD), precommit(1, 0, BAD), precommit(2, 0, BAD), precommit(3, 0, BAD))
    assert not decisions(acts)


# --- locking (rules 22, 28, 36) ------------------------------------------------------------------------

def _locked_on_a_at_round_0() -> Tendermint:
    """Validator 0 locked on A in round 0, then at round 1 (no decision in round 0)."""
    e = engine(0)
    e.start_height(H)
    feed(e, proposal(0, A), prevote(1, 0, A), prevote(2, 0, A))
    assert (e.locked_round, e.locked_hash) == (0, A.hash)
    acts = feed(e, precommit(1, 0, None), precommit(2, 0, None))
    assert timeouts(acts)[-1].step == "precommit"
    e.on_timeout("precommit", H, 0)
    assert e.round == 1
    return e


def test_locked_validator_prevotes_nil_for_another_value_without_pol() -> None:
    e = _locked_on_a_at_round_0()
    acts = e.on_proposal(proposal(1, B))  # line 22 with lockedValue != B
    assert one_vote(acts, PREVOTE).block is None


def test_locked_validator_prevotes_the_locked_value_again() -> None:
    e = _locked_on_a_at_round_0()
    acts = e.on_proposal(proposal(1, A))  # lockedValue = A
    assert one_vote(acts, PREVOTE).block == A.hash


def test_prevote_quorum_for_another_value_moves_the_lock_rule_36() -> None:
    e = _locked_on_a_at_round_0()
    e.on_proposal(proposal(1, B))  # locked on A: prevote nil in round 1 ...
    acts = feed(e, prevote(1, 1, B), prevote(2, 1, B), prevote(3, 1, B))
    # ... but 2f+1 others prevoted B at round 1 while we are in the prevote step: lock on B, precommit B
    assert one_vote(acts, PRECOMMIT).block == B.hash
    assert (e.locked_round, e.locked_hash, e.valid_round) == (1, B.hash, 1)


def test_pol_proposal_is_needed_to_change_the_lock() -> None:
    """Locked on A at round 0; round 2's proposer shows B with a POL at round 1: prevote B."""
    e = _locked_on_a_at_round_0()
    e.on_timeout("propose", H, 1)  # no proposal in round 1: prevote nil
    feed(e, precommit(1, 1, None), precommit(2, 1, None), precommit(3, 1, None))
    e.on_timeout("precommit", H, 1)
    assert e.round == 2 and e.locked_round == 0

    # A proposal of B with pol_round 1 but no POL seen yet: neither rule 22 nor 28 fires.
    acts = e.on_proposal(proposal(2, B, pol=1))
    assert sent_votes(acts, PREVOTE) == []
    # The POL arrives (prevotes for B at round 1 from 1, 2, 3; we prevoted nil there): line 28.
    acts = feed(e, prevote(1, 1, B), prevote(2, 1, B))
    assert sent_votes(acts, PREVOTE) == []
    acts = feed(e, prevote(3, 1, B))
    assert one_vote(acts, PREVOTE).block == B.hash
    assert one_vote(acts, PREVOTE).round == 2


def test_pol_older_than_the_lock_does_not_unlock() -> None:
    """Locked on B at round 1; a proposal of A with a POL at round 0 (< lockedRound): prevote nil."""
    e = engine(0)
    e.start_height(H)
    feed(e, proposal(0, A), prevote(1, 0, A), prevote(2, 0, A), prevote(3, 0, A))  # locked A @0
    feed(e, precommit(1, 0, None), precommit(2, 0, None))
    e.on_timeout("precommit", H, 0)
    feed(e, proposal(1, B), prevote(1, 1, B), prevote(2, 1, B), prevote(3, 1, B))  # 2f+1 B: lock B @1
    assert (e.locked_round, e.locked_hash) == (1, B.hash)
    feed(e, precommit(1, 1, None), precommit(2, 1, None))
    e.on_timeout("precommit", H, 1)
    acts = e.on_proposal(proposal(2, A, pol=0))
    assert one_vote(acts, PREVOTE).block is None


def test_proposer_reproposes_its_valid_value_with_pol_round() -> None:
    # Validator 2 proposes round 1 of height 1. Give it validValue A from round 0.
    e = engine(2)
    e.start_height(H)
    feed(e, proposal(0, A), prevote(0, 0, A), prevote(1, 0, A))
    assert e.valid_round == 0
    feed(e, precommit(0, 0, None), precommit(1, 0, None))
    acts = e.on_timeout("precommit", H, 0)
    [p] = [m for m in sent(acts) if isinstance(m, Proposal)]
    assert (p.round, p.pol_round, p.value) == (1, 0, A)
    assert one_vote(acts, PREVOTE).block == A.hash  # own proposal with POL: line 28
    assert_records_precede_broadcasts(acts, VALS[2])


def test_value_with_prevote_quorum_in_precommit_step_becomes_valid_but_not_locked() -> None:
    e = engine(0)
    e.start_height(H)
    e.on_timeout("propose", H, 0)  # prevote nil
    acts = feed(e, prevote(1, 0, A), prevote(2, 0, A))  # 3 prevotes, no quorum: line 34
    assert timeouts(acts)[-1].step == "prevote"
    e.on_timeout("prevote", H, 0)  # precommit nil
    assert e.step_name == "precommit"
    acts = feed(e, proposal(0, A), prevote(3, 0, A))  # now 2f+1 for A, in the precommit step
    assert not sent(acts)
    assert (e.valid_round, e.valid_hash, e.locked_round) == (0, A.hash, -1)


def test_proposer_with_nothing_to_propose_waits_for_its_timeout() -> None:
    p = proposer_index(H, 0)
    e = engine(p, values=lambda h, r: None)
    acts = e.start_height(H)
    assert sent(acts) == [] and timeouts(acts) == [ScheduleTimeout("propose", H, 0, 1.0)]
    assert one_vote(e.on_timeout("propose", H, 0), PREVOTE).block is None
    with pytest.raises(ValueError):
        e.on_timeout("commit", H, 0)


def test_a_no_from_valid_is_asked_again_in_a_later_round() -> None:
    """A clock-dependent check (a block dated too far ahead) may accept later: "no" lasts a round."""
    answers = iter([False, True])
    asked: list[Val] = []

    def valid(v: Val) -> bool:
        asked.append(v)
        return next(answers)

    e = Tendermint(CHAIN, KEYS[0], lambda h: VALS, lambda h, r: Val("own"), valid)
    e.start_height(H)
    assert one_vote(e.on_proposal(proposal(0, A)), PREVOTE).block is None
    feed(e, prevote(1, 0, A), prevote(2, 0, A), prevote(3, 0, A))  # 2f+1 for A, invalid in this round
    assert e.locked_round == -1 and len(asked) == 1
    feed(e, precommit(1, 0, None), precommit(2, 0, None), precommit(3, 0, None))
    e.on_timeout("precommit", H, 0)
    acts = e.on_proposal(proposal(1, A, pol=0))  # round 1: A again, with its POL from round 0
    assert one_vote(acts, PREVOTE).block == A.hash and len(asked) == 2


# --- rule 55: skipping rounds -------------------------------------------------------------------------

def test_f_plus_1_messages_of_a_higher_round_skip_to_it() -> None:
    e = engine(0)
    e.start_height(H)
    assert feed(e, prevote(1, 5, None)) == []  # one validator alone proves nothing
    assert e.round == 0
    acts = feed(e, precommit(2, 5, None))  # two distinct validators (f+1 = 2) at round 5
    assert e.round == 5 and e.step_name == "propose"
    assert proposer_index(H, 5) == 2
    assert timeouts(acts) == [ScheduleTimeout("propose", H, 5, 3.5)]


def test_a_proposal_counts_toward_f_plus_1() -> None:
    e = engine(0)
    e.start_height(H)
    assert proposer_index(H, 4) == 1
    acts = feed(e, proposal(4, A), prevote(2, 4, A))  # proposer 1 and validator 2 are at round 4
    assert e.round == 4
    assert one_vote(acts, PREVOTE).block == A.hash  # the stored proposal then triggers line 22


def test_own_proposal_after_skip() -> None:
    e = engine(0)
    e.start_height(H)
    acts = feed(e, prevote(1, 3, None), prevote(2, 3, None))  # skip to round 3, which is ours
    [p] = [m for m in sent(acts) if isinstance(m, Proposal)]
    assert (p.round, p.pol_round, p.value) == (3, -1, Val("h1r3"))


def test_one_validator_cannot_fill_memory_with_future_rounds() -> None:
    e = engine(0, future_rounds=3)
    e.start_height(H)
    feed(e, *(prevote(1, r, None) for r in range(10, 30)))
    assert e.round == 0
    feed(e, prevote(2, 10, None))  # validator 1's round-10 vote was dropped for newer ones
    assert e.round == 0
    feed(e, prevote(2, 29, None))  # validator 1 still holds its latest rounds
    assert e.round == 29


# --- equivocation --------------------------------------------------------------------------------------

def test_equivocation_gives_evidence_once_and_never_inflates_distinct_totals() -> None:
    e = engine(0)
    e.start_height(H)
    e.on_proposal(proposal(0, A))  # own prevote: A
    vb, va = prevote(2, 0, B), prevote(2, 0, A)
    assert feed(e, vb) == []
    acts = feed(e, va)
    assert acts == [Evidence(vb, va)]
    assert feed(e, va) == []  # the same conflicting vote again: nothing new
    assert feed(e, prevote(2, 0, C)) == []  # reported once per (validator, round, type) ...
    # ... and C (not proposed, nobody's first vote) is not even stored: an equivocator cannot make the
    # engine keep votes for arbitrarily many blocks.
    # Validator 2 sent three prevotes but is one validator: with own + 2 there are 2 distinct voters,
    # not the 3 that line 34 (2f+1 prevotes of any kind) waits for.
    acts = feed(e, prevote(2, 0, None))  # nil is always relevant, still no new distinct voter
    assert timeouts(acts) == [] and not sent(acts)
    acts = feed(e, prevote(3, 0, None))
    assert timeouts(acts) == [ScheduleTimeout("prevote", H, 0, 0.5)]  # now 3 distinct validators
    assert e.locked_round == -1


def test_an_equivocators_conflicting_vote_counts_for_its_own_value() -> None:
    """Algorithm 1 counts PREVOTE(r, id(v)) messages per value: validator 2 signed a prevote for A,
    so it is one of the 2f+1 for A even though this engine saw its nil prevote first. (Another honest
    node that saw the A vote first may have locked on A; this engine must accept that proof of lock.)"""
    e = engine(0)
    e.start_height(H)
    e.on_proposal(proposal(0, A))  # own prevote: A
    feed(e, prevote(2, 0, None), prevote(1, 0, A))
    acts = feed(e, prevote(2, 0, A))
    assert [a for a in acts if isinstance(a, Evidence)] == [Evidence(prevote(2, 0, None), prevote(2, 0, A))]
    assert one_vote(acts, PRECOMMIT).block == A.hash
    assert (e.locked_round, e.locked_hash) == (0, A.hash)
    # its precommit for A counts too, and the certificate carries it
    feed(e, precommit(2, 0, None), precommit(1, 0, A))
    [d] = decisions(feed(e, precommit(2, 0, A)))
    assert {s.validator for s in d.certificate.sigs} == {VALS[0], VALS[1], VALS[2]}
    d.certificate.verify(CHAIN, VALS)


def test_equivocating_proposer_is_reported_and_both_values_are_usable() -> None:
    e = engine(0)
    e.start_height(H)
    pa, pb = proposal(0, A), proposal(0, B)
    acts = feed(e, pa)
    assert one_vote(acts, PREVOTE).block == A.hash
    acts = feed(e, pb)
    assert acts == [ConflictingProposals(pa, pb)]
    # the others saw B: 2f+1 precommits for B decide B, its value known from the second proposal
    [d] = decisions(feed(e, precommit(1, 0, B), precommit(2, 0, B), precommit(3, 0, B)))
    assert d.value == B


# --- persistence: RecordSigned before Broadcast, restarts ---------------------------------------------

def test_record_signed_precedes_every_own_broadcast() -> None:
    net = make_net()
    net.down.add(proposer_index(H, 0))
    net.start(H)
    net.fire("propose")
    net.fire("precommit")
    n_checked = 0
    for i in range(4):
        for acts in net.actions[i]:
            assert_records_precede_broadcasts(acts, VALS[i])
            n_checked += len([a for a in acts if isinstance(a, Broadcast)])
    assert n_checked >= 12


def test_restart_rebroadcasts_the_identical_vote_and_never_a_conflicting_one() -> None:
    e = engine(0)
    e.start_height(H)
    acts = e.on_proposal(proposal(0, A))
    original = one_vote(acts, PREVOTE)
    state = e.signed_state
    assert state == SignedState(H, 0, PREVOTE, A.hash, -1, -1, None, -1, None)
    assert SignedState.decode(state.encode()) == state

    r = engine(0, signed=state)  # crash, restart from the persisted state
    acts = r.start_height(H)
    assert sent(acts) == [original]  # the identical message: same bytes, same signature
    assert_records_precede_broadcasts(acts, VALS[0])
    assert (r.round, r.step_name) == (0, "prevote")
    # the proposal of another value at the same round and step gets no new prevote
    assert sent(feed(r, proposal(0, B, key=KEYS[1]))) == []
    assert r.on_timeout("propose", H, 0) == []
    # moving forward is fine: 2f+1 prevotes for B, precommit B at (1, 0, precommit)
    acts = feed(r, prevote(1, 0, B), prevote(2, 0, B), prevote(3, 0, B))
    assert one_vote(acts, PRECOMMIT).block == B.hash


def test_restarted_engine_refuses_to_sign_below_its_signed_state() -> None:
    # The node signed at height 2, but its block store is behind and it restarts at height 1.
    state = SignedState(2, 0, PREVOTE, A.hash, -1, -1, None, -1, None)
    e = engine(0, signed=state)
    e.start_height(H)
    acts = e.on_proposal(proposal(0, B))
    assert sent(acts) == []
    assert any(isinstance(a, Rejected) and "refusing to sign" in a.reason for a in acts)
    assert e.step_name == "prevote"  # the state machine moves on; it just signs nothing
    acts = e.on_timeout("prevote", H, 0) + feed(e, prevote(1, 0, B), prevote(2, 0, B), prevote(3, 0, B))
    assert sent(acts) == []
    assert e.signed_state == state


def test_restarted_proposer_reproposes_only_the_identical_proposal() -> None:
    p = proposer_index(H, 0)
    first = engine(p)
    acts = first.start_height(H)
    [prop] = [m for m in sent(acts) if isinstance(m, Proposal)]
    proposal_state = next(a.state for a in acts if isinstance(a, RecordSigned) and a.state.step == PROPOSE)

    # restarted with a block builder that now builds something else: no proposal, wait for the timeout
    r = engine(p, signed=proposal_state, values=lambda h, r: Val("other"))
    acts = r.start_height(H)
    assert [m for m in sent(acts) if isinstance(m, Proposal)] == []
    assert any(isinstance(a, Rejected) and "different block" in a.reason for a in acts)
    assert timeouts(acts) == [ScheduleTimeout("propose", H, 0, 1.0)]
    # its own earlier proposal, gossiped back, is voted on normally
    assert one_vote(r.on_proposal(prop), PREVOTE).block == prop.block_hash

    # a deterministic builder gives the identical proposal, which may be sent again
    r2 = engine(p, signed=proposal_state)
    acts = r2.start_height(H)
    assert [m for m in sent(acts) if isinstance(m, Proposal)] == [prop]


def test_restarted_engine_keeps_its_lock() -> None:
    e = _locked_on_a_at_round_0()
    state = e.signed_state
    assert state is not None and (state.locked_round, state.locked_block) == (0, A.hash)
    assert (state.round, state.step) == (0, PRECOMMIT)

    r = engine(0, signed=state)
    acts = r.start_height(H)
    assert one_vote(acts, PRECOMMIT).block == A.hash  # re-broadcast of the last vote
    assert (r.locked_round, r.locked_hash) == (0, A.hash)
    feed(r, precommit(1, 0, None), precommit(2, 0, None))
    r.on_timeout("precommit", H, 0)
    assert r.round == 1
    acts = r.on_proposal(proposal(1, B))
    assert one_vote(acts, PREVOTE).block is None  # still locked on A


def test_a_hold_signs_nothing_below_its_height_then_everything_from_it_on() -> None:
    # The proposer of (H + 1, 0), so that the hold's own position is one it signs at.
    p = proposer_index(H + 1, 0)
    e = engine(p)
    e.start_height(H)
    [record] = e.hold_back(H + 1)
    assert isinstance(record, RecordSigned) and record.state.is_hold
    assert record.state.position == (H + 1, 0, PROPOSE)
    assert e.hold_back(H + 1) == [] and e.hold_back(H) == []  # nothing new to record
    # Below the hold: no proposal, no vote of any kind, though the height still decides.
    acts = e.on_proposal(proposal(0, A)) + e.on_timeout("propose", H, 0)
    acts += feed(e, prevote(1, 0, A), prevote(2, 0, A), prevote(3, 0, A))
    acts += feed(e, precommit(1, 0, A), precommit(2, 0, A), precommit(3, 0, A))
    assert sent(acts) == []
    assert any(isinstance(a, Rejected) and "refusing to sign" in a.reason for a in acts)
    assert [d.value for d in decisions(acts)] == [A]
    # From the hold's height on (also after a restart with the recorded hold), all as usual.
    for engine_at_hold in (e, engine(p, signed=record.state)):
        acts = engine_at_hold.start_height(H + 1)
        [prop] = [m for m in sent(acts) if isinstance(m, Proposal)]
        assert (prop.height, prop.round) == (H + 1, 0)
        assert one_vote(acts, PREVOTE).block == prop.block_hash  # its own proposal, voted for
        assert_records_precede_broadcasts(acts, VALS[p])
    assert not SignedState(H, 0, PROPOSE, A.hash, -1, -1, None, -1, None).is_hold  # a real proposal


def test_restart_at_a_new_height_ignores_the_old_lock() -> None:
    e = _locked_on_a_at_round_0()
    state = e.signed_state
    r = engine(0, signed=state)
    r.start_height(H + 1)
    assert (r.locked_round, r.round) == (-1, 0)
    acts = r.on_proposal(proposal(0, B, h=H + 1))
    assert one_vote(acts, PREVOTE).block == B.hash


# --- observers and validator-set changes --------------------------------------------------------------

@pytest.mark.parametrize("observer_key", [None, OUTSIDER])
def test_observer_decides_without_signing(observer_key: KeyPair | None) -> None:
    keys: list[KeyPair | None] = [*KEYS, observer_key]
    engines = [engine(None, key=k) for k in KEYS] + [engine(None, key=observer_key)]
    net = Net(engines, keys)
    net.start(H)
    [d] = net.decided[4]
    assert d.value == net.decided[0][0].value
    d.certificate.verify(CHAIN, VALS)
    observer_actions = [a for acts in net.actions[4] for a in acts]
    assert not any(isinstance(a, Broadcast | RecordSigned) for a in observer_actions)
    assert not engines[4].is_validator


def test_validator_set_changes_between_heights() -> None:
    # heights 1: validators 0..3; height 2: validators 1..3 plus the outsider
    set2 = tuple(sorted([*VALS[1:], OUTSIDER.public_key]))

    def vset(h: int) -> tuple[bytes, ...]:
        return VALS if h == 1 else set2

    e = engine(None, key=OUTSIDER, validators=vset)
    e.start_height(1)
    assert not e.is_validator
    assert sent(e.on_proposal(proposal(0, A))) == []
    e.start_height(2)
    assert e.is_validator and e.validators == set2
    p2 = proposer_of(set2, 2, 0)
    prop = Proposal.make(BY_PK[p2], CHAIN, 2, 0, -1, B)
    acts = e.on_proposal(prop)
    if p2 != OUTSIDER.public_key:
        assert one_vote(acts, PREVOTE).block == B.hash
    # validator 0 is no longer in the set at height 2
    [r] = e.on_vote(prevote(0, 0, B, h=2))
    assert isinstance(r, Rejected) and "not a validator of height 2" in r.reason


def test_validator_set_must_be_sorted_and_nonempty() -> None:
    with pytest.raises(ValueError):
        engine(0, validators=lambda h: tuple(reversed(VALS))).start_height(1)
    with pytest.raises(ValueError):
        engine(0, validators=lambda h: ()).start_height(1)
    e = engine(0)
    e.start_height(2)
    with pytest.raises(ValueError):
        e.start_height(2)


# --- future heights -----------------------------------------------------------------------------------

def test_messages_for_the_next_height_are_buffered_and_replayed() -> None:
    e = engine(0)
    e.start_height(1)
    h2: list[Proposal | Vote] = [proposal(0, B, h=2), *(prevote(i, 0, B, h=2) for i in (1, 2, 3)),
          *(precommit(i, 0, B, h=2) for i in (1, 2, 3))]
    assert feed(e, *h2) == []
    assert e.buffered == len(h2)
    assert feed(e, prevote(1, 0, C, h=3)) == []  # two heights ahead: ignored
    assert e.buffered == len(h2)
    assert feed(e, prevote(1, 0, C, h=H)) == []  # still the current height, stored normally

    [d1] = decisions(feed(e, proposal(0, A), *(precommit(i, 0, A) for i in (1, 2, 3))))
    assert d1.value == A
    assert feed(e, prevote(2, 0, C, h=2)) == []  # still buffering after the decision
    acts = e.start_height(2)
    assert e.buffered == 0
    [d2] = decisions(acts)
    assert (d2.height, d2.value) == (2, B)
    d2.certificate.verify(CHAIN, VALS)
    assert_records_precede_broadcasts(acts, VALS[0])


def test_buffer_is_bounded() -> None:
    e = engine(0, max_buffered=3)
    e.start_height(1)
    assert feed(e, *(prevote(i, 0, A, h=2) for i in (1, 2, 3))) == []
    [r] = feed(e, precommit(1, 0, A, h=2))
    assert isinstance(r, Rejected) and "full" in r.reason
    e = engine(0)
    e.start_height(1)
    rejected = feed(e, *(prevote(1, r, None, h=2) for r in range(40)))
    assert e.buffered == 16 and len(rejected) == 40 - 16


def test_buffered_messages_with_bad_signatures_are_dropped_on_replay() -> None:
    e = engine(0)
    e.start_height(1)
    feed(e, Vote(PREVOTE, 2, 0, A.hash, VALS[1], b"\x00" * 64))
    e.on_commit(*_commit(A, 1))
    acts = e.start_height(2)
    assert any(isinstance(a, Rejected) and "invalid signature" in a.reason for a in acts)


# --- block sync input ---------------------------------------------------------------------------------

def _commit(v: Val, h: int, signers: tuple[int, ...] = (0, 1, 2), r: int = 0) -> tuple[Val, CommitCertificate]:
    sigs = sorted((CertSig(VALS[i], precommit(i, r, v, h=h).sig) for i in signers), key=lambda s: s.validator)
    return v, CommitCertificate(h, r, v.hash, tuple(sigs))


def test_on_commit_decides_with_a_valid_certificate() -> None:
    e = engine(3)
    e.start_height(1)
    [r] = e.on_commit(*_commit(A, 1, signers=(0, 1)))
    assert isinstance(r, Rejected) and "more than 2/3" in r.reason
    [r] = e.on_commit(B, _commit(A, 1)[1])
    assert isinstance(r, Rejected)
    [r] = e.on_commit(*_commit(BAD, 1))
    assert isinstance(r, Rejected) and "invalid" in r.reason
    assert e.on_commit(*_commit(A, 2)) == []  # another height
    [d] = e.on_commit(*_commit(A, 1))
    assert isinstance(d, Decide) and d.value == A and e.decided
    d.certificate.verify(CHAIN, VALS)
    with pytest.raises(ProofError):
        d.certificate.verify(CHAIN, VALS[:2])


# --- wire types ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WireVal(Wire):
    body: bytes = limit(max=100)
    parent: bytes = b32()

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


def test_proposal_wire_roundtrip_and_signature() -> None:
    v = WireVal(b"hello", b"\x07" * 32)
    p = Proposal.make(KEYS[1], CHAIN, 3, 2, 1, v)
    assert p.signature_valid(CHAIN) and not p.signature_valid("other-chain")
    raw = p.encode()
    q = Proposal.decode(raw, WireVal)
    assert q == p and q.signature_valid(CHAIN)
    obj = p.to_obj()
    with pytest.raises(DecodeError, match="unknown field"):
        Proposal.from_obj({**obj, "extra": 1}, WireVal)
    with pytest.raises(DecodeError, match="missing field"):
        Proposal.from_obj({k: x for k, x in obj.items() if k != "sig"}, WireVal)
    with pytest.raises(DecodeError, match="pol_round"):
        Proposal.from_obj({**obj, "pol_round": 2}, WireVal)
    with pytest.raises(DecodeError, match="pol_round"):
        Proposal.from_obj({**obj, "pol_round": -2}, WireVal)
    with pytest.raises(DecodeError, match="proposer"):
        Proposal.from_obj({**obj, "proposer": b"\x01" * 31}, WireVal)
    with pytest.raises(DecodeError):
        Proposal.from_obj({**obj, "value": {"body": b"x"}}, WireVal)
    with pytest.raises(DecodeError, match="integer"):
        Proposal.from_obj({**obj, "round": True}, WireVal)
    # the signature covers the value's hash: a different value with the same signature fails
    other = Proposal(p.height, p.round, p.pol_round, WireVal(b"bye", b"\x07" * 32), p.proposer, p.sig)
    assert not other.signature_valid(CHAIN)


def test_signed_state_wire_roundtrip() -> None:
    s = SignedState(7, 3, PRECOMMIT, None, -1, 2, b"\x01" * 32, 3, b"\x02" * 32)
    assert SignedState.decode(s.encode()) == s
    assert SignedState.from_json(s.to_json()) == s
    with pytest.raises(DecodeError):
        SignedState.from_obj({**s.to_obj(), "step": 3})
    assert s.position == (7, 3, 2)


def test_describe_is_log_friendly() -> None:
    assert describe(prevote(1, 2, None)).startswith("prevote h=1 r=2 by ")
    assert describe(prevote(1, 2, None)).endswith("for nil")
    assert describe(proposal(0, A)).startswith("proposal h=1 r=0 pol=-1 by ")


def test_an_equivocator_cannot_fill_memory_or_disk_with_evidence() -> None:
    """Two conflicting votes for each of thousands of rounds: a few are reported, the rest only cost their
    signature checks (each is still a vote the engine may count)."""
    e = engine(0, future_rounds=3)
    e.start_height(H)
    acts: list[Action] = []
    for r in range(1, 2_000):
        acts += feed(e, prevote(1, r, None), prevote(1, r, A), precommit(1, r, None), precommit(1, r, A))
    for r in range(2_000, 2_050):  # proposals too: validator 1 proposes every fourth round
        if proposer_index(H, r) == 1:
            acts += feed(e, proposal(r, A), proposal(r, B))
    reports = [a for a in acts if isinstance(a, Evidence | ConflictingProposals)]
    assert len(reports) == EVIDENCE_PER_VALIDATOR, reports
    assert len(e._hs.reported) == EVIDENCE_PER_VALIDATOR  # type: ignore[union-attr]
    # another validator's first equivocation is still reported
    assert feed(e, prevote(2, 0, None), prevote(2, 0, A)) == [Evidence(prevote(2, 0, None), prevote(2, 0, A))]
