"""Tendermint's agreement algorithm as a pure state machine: messages and timeouts in, actions out.

Rules of this file
------------------
Nothing here does I/O: no sockets, no clocks, no disk, no asyncio. Each input method (`start_height`,
`on_proposal`, `on_vote`, `on_timeout`, `on_commit`) changes the engine's state and returns the list of
`Action`s the driver must carry out, in order. Every protocol decision lives in this file; the driver
(node/ in production, a simulated network in tests) only carries messages, keeps time and persists.

Theory of operation
-------------------
This is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus" (2018). With
n validators of which at most f are faulty (n >= 3f+1), a height is decided in rounds; round r of
height h has one proposer, validators[(h + r) mod n]. A round has three steps:

  propose    the proposer broadcasts a PROPOSAL of a value (a block); the others wait for it, at most
             timeoutPropose(r);
  prevote    every validator broadcasts a PREVOTE for the proposed value's hash if the value is valid
             and does not contradict its lock, else a PREVOTE for nil;
  precommit  on more than 2/3 prevotes for one value v a validator locks on v and PRECOMMITs v; on more
             than 2/3 nil prevotes (or timeoutPrevote) it precommits nil.

More than 2/3 precommits for v in any round decide v; more than 2/3 precommits of any kind followed by
timeoutPrecommit start the next round. A validator that locked on v (lockedValue/lockedRound) prevotes
for nothing else unless shown a proof of lock change: a proposal carrying pol_round = vr together with
more than 2/3 prevotes for its value at round vr >= lockedRound. validValue/validRound remember the most
recent value that gathered such a quorum; a proposer that has one re-proposes it (with pol_round =
validRound) instead of building a new block, which is what makes the algorithm live after GST.

"More than 2/3" is counted over distinct validators (equal voting power): `quorum(n)` is the smallest q
with 3q > 2n, and `skip_threshold(n)` (f+1) the smallest c with 3c > n.

The upon-rules (line numbers of Algorithm 1), tried in this order after every input until none fires:

  line  rule (every one is for the current height h_p)                      effect
  ----  ---------------------------------------------------------------    -------------------------------
   49   2f+1 PRECOMMIT(r, id(v)) for any round r, v known and valid(v),     Decide(h, r, v, certificate)
        not yet decided
   55   f+1 messages of any kind from distinct validators at round r >     StartRound(r)
        round_p
   22   PROPOSAL(round_p, v, -1) from the proposer, step = propose          PREVOTE id(v) if valid(v) and
                                                                            (lockedRound = -1 or
                                                                            lockedValue = v), else nil;
                                                                            step <- prevote
   28   PROPOSAL(round_p, v, vr) from the proposer with 0 <= vr < round_p   PREVOTE id(v) if valid(v) and
        and 2f+1 PREVOTE(vr, id(v)), step = propose                         (lockedRound <= vr or
                                                                            lockedValue = v), else nil;
                                                                            step <- prevote
   36   2f+1 PREVOTE(round_p, id(v)), v known and valid(v), step >=         validValue <- v; if step =
        prevote, first time this round                                      prevote: lock on v, PRECOMMIT
                                                                            id(v), step <- precommit
   44   2f+1 PREVOTE(round_p, nil), step = prevote                          PRECOMMIT nil; step <- precommit
   34   2f+1 PREVOTE(round_p, *), step = prevote, first time this round     ScheduleTimeout(prevote)
   47   2f+1 PRECOMMIT(round_p, *), first time this round                   ScheduleTimeout(precommit)
   57   timeout propose(h_p, round_p) while step = propose                  PREVOTE nil; step <- prevote
   61   timeout prevote(h_p, round_p) while step = prevote                  PRECOMMIT nil; step <- precommit
   65   timeout precommit(h_p, round_p)                                     StartRound(round_p + 1)

StartRound(r): round_p <- r, step <- propose; the proposer of r broadcasts PROPOSAL(r, validValue,
validRound) if it has a valid value, else PROPOSAL(r, get_value(h, r), -1); everyone else schedules
timeoutPropose(r). Rules 22/28 take the proposal of the current round; rules 36 and 49 need only the
value itself, found by hash among all proposals of the height (safe: what makes a lock or a decision
is the quorum of votes, and a value is looked up by the hash those votes name). Timeouts grow with the
round: delay = base + round * increment (`TimeoutConfig`).

Safety across restarts
----------------------
Before any own proposal or vote is broadcast the engine emits `RecordSigned(SignedState)`: the
(height, round, step) of the message, the hash signed, and the current lock. The driver must make that
durable before sending. An engine constructed with the last SignedState never signs at a lower
(height, round, step), and at the same one only the identical message; on `start_height` of that height
it resumes at that round and step with the lock restored, and re-broadcasts its last vote (identical,
Ed25519 signatures being deterministic).

Driving the engine
------------------
- Call `start_height(h)` for the first height, and again with h+1 after committing each decided
  block (a Decide does not start the next height by itself). After a crash, build the engine with the
  persisted SignedState and call `start_height(last committed height + 1)`.
- Carry out actions in order. `RecordSigned`: write the state durably (fsync) before any Broadcast
  that follows it; states only move forward, so persisting the newest one before sending a batch is
  enough. `Broadcast`: gossip to peers (the engine has already counted its own message).
  `ScheduleTimeout`: after delay_s call `on_timeout(step, height, round)`; stale timeouts are
  harmless, so timers never need cancelling. `Decide`: commit the value with its certificate.
  `Evidence`, `ConflictingProposals`, `Rejected`: log (and report evidence); nothing else is needed.
- Gossip must eventually deliver to every honest validator every message another honest node
  accepted (relay what was accepted, re-send periodically to repair loss): the algorithm assumes it.
  A node that falls behind by a height or more catches up by block sync: `on_commit(value, cert)`.

Counting votes, equivocation
----------------------------
"2f+1 PREVOTE(r, id(v))" counts distinct validators that signed a prevote for v at r: Algorithm 1
counts messages per value. A validator's first vote of a (round, type) is its vote in every "2f+1 of
any kind" total (rules 34, 47) and in rule 55; a second, different, validly signed vote is reported
once as `Evidence` (for at most EVIDENCE_PER_VALIDATOR slots of one validator per height; one proves
the fault) and never adds to those totals. It does count for its own block when that block is
relevant (nil, proposed in that round, or some validator's first vote): an honest node may have locked
on v because the equivocator's vote for v reached it first, and every other honest node must be able
to verify that proof of lock whatever order the two votes reach it in; otherwise two honest validators
locked on different values can wait for each other forever. Counting one validator for two values of
one round is safe: two quorums of 2f+1 still share an honest validator, and honest ones sign once.

Resource bounds
---------------
For rounds above the current one each validator may occupy at most `future_rounds` rounds (its oldest
future round is dropped for a newer one), so a faulty validator cannot make the engine store unbounded
rounds, while honest validators far ahead still reach f+1 in their latest rounds. At most
`proposals_per_round` distinct proposals are kept per round (plus any whose value already has votes),
and an equivocator's extra votes only for relevant blocks. Messages for height h_p + 1 are buffered
unverified (at most `max_buffered`, and `BUFFER_PER_SENDER` per claimed sender) and replayed by
start_height(h_p + 1); anything else outside the current height is ignored.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from consensus.messages import (
    MAX_ROUND,
    PROPOSE,
    STEP_NAMES,
    Message,
    Proposal,
    SignedState,
    Value,
    describe,
    sender,
)
from ler.block import MAX_VALIDATORS, PRECOMMIT, PREVOTE, CertSig, CommitCertificate, Vote
from ler.errors import ProofError
from ler.keys import KeyPair

BUFFER_PER_SENDER = 16
# One conflicting pair proves equivocation; a few more per validator and height are kept, and no more, so
# that a faulty validator signing two votes for each of millions of rounds fills neither memory nor disk.
EVIDENCE_PER_VALIDATOR = 4
TIMEOUT_STEPS = ("propose", "prevote", "precommit")


def quorum(n: int) -> int:
    """The smallest number of validators that is more than 2/3 of n (2f+1 when n = 3f+1)."""
    return 2 * n // 3 + 1


def skip_threshold(n: int) -> int:
    """The smallest number of validators that is more than 1/3 of n (f+1): at least one is honest."""
    return n // 3 + 1


def proposer_of(validators: Sequence[bytes], height: int, round_: int) -> bytes:
    return validators[(height + round_) % len(validators)]


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Timeouts in seconds: step timeout at round r = base + r * increment."""

    propose: float = 1.0
    propose_increment: float = 0.5
    prevote: float = 0.5
    prevote_increment: float = 0.25
    precommit: float = 0.5
    precommit_increment: float = 0.25

    def delay(self, step: str, round_: int) -> float:
        if step == "propose":
            return self.propose + round_ * self.propose_increment
        if step == "prevote":
            return self.prevote + round_ * self.prevote_increment
        if step == "precommit":
            return self.precommit + round_ * self.precommit_increment
        raise ValueError(f"unknown timeout step {step!r}")


# --- actions -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send `message` (a Proposal or Vote) to every peer. Own messages are also already counted."""

    message: Message


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Call `on_timeout(step, height, round)` after `delay_s` seconds (stale ones are ignored)."""

    step: str
    height: int
    round: int
    delay_s: float


@dataclass(frozen=True, slots=True)
class Decide:
    """`value` is decided at `height`; `certificate` holds the >2/3 precommits (round `round`)."""

    height: int
    round: int
    value: Any
    certificate: CommitCertificate


@dataclass(frozen=True, slots=True)
class RecordSigned:
    """Persist `state` durably before carrying out any Broadcast that follows it."""

    state: SignedState


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two validly signed votes by one validator, same height, round and type, different blocks."""

    vote_a: Vote
    vote_b: Vote


@dataclass(frozen=True, slots=True)
class ConflictingProposals:
    """Two validly signed proposals by one proposer for the same height and round."""

    proposal_a: Proposal
    proposal_b: Proposal


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input that was not used, and why (invalid signature, not a validator, refusal to sign, ...)."""

    reason: str


Action = Broadcast | ScheduleTimeout | Decide | RecordSigned | Evidence | ConflictingProposals | Rejected


# --- per-height bookkeeping --------------------------------------------------------------------------

class _Tally:
    """The votes of one (round, type).

    `first` holds each validator's first vote: it answers "2f+1 of any kind" (rules 34, 47) with
    distinct validators. `by_block` holds, per block hash, every validator that signed a vote for it,
    including an equivocator's conflicting second vote when that block is relevant: Algorithm 1 counts
    messages per value, and liveness needs every honest node to be able to count what another honest
    node counted, whatever order the equivocator's votes reach it in.
    """

    __slots__ = ("by_block", "first", "first_blocks")

    def __init__(self) -> None:
        self.first: dict[bytes, Vote] = {}
        self.first_blocks: dict[bytes | None, int] = {}
        self.by_block: dict[bytes | None, dict[bytes, Vote]] = {}

    def add(self, vote: Vote, *, first: bool) -> None:
        if first:
            self.first[vote.validator] = vote
            self.first_blocks[vote.block] = self.first_blocks.get(vote.block, 0) + 1
        self.by_block.setdefault(vote.block, {})[vote.validator] = vote

    def has(self, validator: bytes, block: bytes | None) -> bool:
        return validator in self.by_block.get(block, {})

    def remove(self, validator: bytes) -> None:
        vote = self.first.pop(validator, None)
        if vote is not None:
            self.first_blocks[vote.block] -= 1
        for voters in self.by_block.values():
            voters.pop(validator, None)

    @property
    def total(self) -> int:
        """Distinct validators that voted (for anything) in this round and type."""
        return len(self.first)

    def for_block(self, block: bytes | None) -> int:
        """Distinct validators that signed a vote for `block`."""
        return len(self.by_block.get(block, ()))

    def counts(self) -> list[tuple[bytes | None, int]]:
        return [(block, len(voters)) for block, voters in self.by_block.items()]


class _Entry:
    """A stored proposal and the application's verdict on its value (None until asked)."""

    __slots__ = ("proposal", "verdict")

    def __init__(self, proposal: Proposal) -> None:
        self.proposal = proposal
        self.verdict: bool | None = None


class _Height:
    """Everything the engine knows about one height; dropped when the next height starts."""

    def __init__(self, height: int, validators: tuple[bytes, ...], me: bytes | None) -> None:
        self.height = height
        self.validators = validators
        self.members = frozenset(validators)
        self.quorum = quorum(len(validators))
        self.skip = skip_threshold(len(validators))
        self.me = me
        self.prevotes: dict[int, _Tally] = {}
        self.precommits: dict[int, _Tally] = {}
        self.proposals: dict[int, list[_Entry]] = {}
        self.by_hash: dict[bytes, list[_Entry]] = {}
        self.good: dict[bytes, Any] = {}  # hash -> a value with that hash that passed valid()
        self.senders: dict[int, set[bytes]] = {}
        self.rounds_of: dict[bytes, set[int]] = {}
        self.prevote_timeout: set[int] = set()  # rule 34 fired for these rounds
        self.precommit_timeout: set[int] = set()  # rule 47
        self.rule36: set[int] = set()
        self.reported: set[tuple[bytes, int, int]] = set()  # (validator, round, type or 0 for proposals)
        self.reports_of: dict[bytes, int] = {}  # validator -> how many of its slots were reported
        self.decided = False

    def proposer(self, round_: int) -> bytes:
        return proposer_of(self.validators, self.height, round_)

    def first_report(self, slot: tuple[bytes, int, int]) -> bool:
        """Whether a conflict at `slot` is to be reported: once per slot, and for at most
        EVIDENCE_PER_VALIDATOR slots of one validator at this height."""
        if slot in self.reported or self.reports_of.get(slot[0], 0) >= EVIDENCE_PER_VALIDATOR:
            return False
        self.reported.add(slot)
        self.reports_of[slot[0]] = self.reports_of.get(slot[0], 0) + 1
        return True

    def tallies(self, vtype: int) -> dict[int, _Tally]:
        return self.prevotes if vtype == PREVOTE else self.precommits

    def peek(self, vtype: int, round_: int) -> _Tally | None:
        return self.tallies(vtype).get(round_)

    def tally(self, vtype: int, round_: int) -> _Tally:
        return self.tallies(vtype).setdefault(round_, _Tally())

    def note_sender(self, validator: bytes, round_: int) -> None:
        self.senders.setdefault(round_, set()).add(validator)
        self.rounds_of.setdefault(validator, set()).add(round_)

    def has_votes_for(self, round_: int, block: bytes) -> bool:
        return any(t is not None and t.for_block(block) > 0
                   for t in (self.peek(PREVOTE, round_), self.peek(PRECOMMIT, round_)))

    def relevant(self, round_: int, block: bytes | None) -> bool:
        """Whether an equivocator's second vote for `block` at `round_` is worth keeping: nil, a value
        proposed in that round, or a block some validator voted for first. At most 2n + a few blocks
        per round qualify, so a faulty validator cannot make the engine store votes without bound."""
        if block is None:
            return True
        if any(e.proposal.block_hash == block for e in self.proposals.get(round_, ())):
            return True
        return any(t is not None and t.first_blocks.get(block, 0) > 0
                   for t in (self.peek(PREVOTE, round_), self.peek(PRECOMMIT, round_)))

    def evict(self, validator: bytes, round_: int) -> None:
        """Forget everything `validator` sent for `round_` (a future round it has moved past)."""
        for vtype in (PREVOTE, PRECOMMIT):
            t = self.peek(vtype, round_)
            if t is not None:
                t.remove(validator)
        if self.proposer(round_) == validator:
            for entry in self.proposals.pop(round_, []):
                same = self.by_hash.get(entry.proposal.block_hash, [])
                same[:] = [e for e in same if e is not entry]
        self.senders.get(round_, set()).discard(validator)
        self.rounds_of.get(validator, set()).discard(round_)


# --- the engine --------------------------------------------------------------------------------------

class Tendermint:
    """One validator's (or observer's) view of consensus. See the module docstring."""

    def __init__(
        self,
        chain_id: str,
        key: KeyPair | None,
        validators_fn: Callable[[int], Sequence[bytes]],
        get_value: Callable[[int, int], Value | None],
        valid: Callable[[Any], bool],
        timeouts: TimeoutConfig | None = None,
        signed: SignedState | None = None,
        *,
        max_buffered: int = 4096,
        future_rounds: int = 3,
        proposals_per_round: int = 4,
    ) -> None:
        """Build an engine; nothing happens until `start_height`.

        key            the validator's signing key, or None for a non-voting observer (a key that is
                       not in a height's validator set also only observes at that height).
        validators_fn  height -> that height's validator keys, 32 bytes each, strictly ascending;
                       called once per start_height.
        get_value      (height, round) -> a new value to propose (the proposer builds a block); may
                       return None to propose nothing this round (the round then times out).
        valid          value -> whether the application accepts it. Asked lazily, at most once per
                       proposal per round; "yes" is remembered for the height, "no" until the next
                       round (so a clock-dependent check may change its mind).
        timeouts       step timeouts (`TimeoutConfig`).
        signed         the last SignedState this validator persisted (None on first start).
        max_buffered, future_rounds, proposals_per_round: the bounds of "Resource bounds" above.
        """
        self.chain_id = chain_id
        self._key = key
        self._public_key = key.public_key if key is not None else None
        self._validators_fn = validators_fn
        self._get_value = get_value
        self._valid = valid
        self.timeouts = timeouts or TimeoutConfig()
        self._signed = signed
        self._max_buffered = max_buffered
        self._future_rounds = max(1, future_rounds)
        self._proposals_per_round = max(1, proposals_per_round)

        self.height = 0  # 0 until the first start_height
        self.round = 0
        self.step = PROPOSE
        self.locked_value: Any = None
        self.locked_hash: bytes | None = None
        self.locked_round = -1
        self.valid_value: Any = None
        self.valid_hash: bytes | None = None
        self.valid_round = -1

        self._hs: _Height | None = None
        self._buffer: dict[tuple[Any, ...], Message] = {}
        self._buffered_by: dict[bytes, int] = {}
        self._out: list[Action] = []

    # --- read-only views ---------------------------------------------------------------------------
    @property
    def step_name(self) -> str:
        return STEP_NAMES[self.step]

    @property
    def validators(self) -> tuple[bytes, ...]:
        return self._hs.validators if self._hs is not None else ()

    @property
    def is_validator(self) -> bool:
        """Whether this engine signs at the current height (False for an observer)."""
        return self._hs is not None and self._hs.me is not None

    @property
    def decided(self) -> bool:
        return self._hs is not None and self._hs.decided

    @property
    def signed_state(self) -> SignedState | None:
        """The last SignedState emitted (or given at construction)."""
        return self._signed

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def hold_back(self, height: int) -> list[Action]:
        """Sign nothing below `height` from now on; the RecordSigned to persist, if that is news.

        For a driver that learnt that this validator's key signed more than its record says (a data
        folder restored from an older copy): what it signed up to some height is then unknown, and
        signing there again could conflict. Recorded as a SignedState at (height, 0, propose) naming no
        block (`SignedState.is_hold`), so a restart keeps the hold; at `height` everything is allowed.
        """
        s = self._signed
        if s is not None and s.position >= (height, 0, PROPOSE):
            return []
        self._signed = SignedState(height, 0, PROPOSE, None, -1, -1, None, -1, None)
        return [RecordSigned(self._signed)]

    # --- inputs ------------------------------------------------------------------------------------
    def start_height(self, height: int) -> list[Action]:
        """Begin `height` (the first one, or the next after the driver committed the previous one)."""
        if height < 1 or height <= self.height:
            raise ValueError(f"start_height({height}) after height {self.height}: heights only increase")
        validators = tuple(self._validators_fn(height))
        _check_validator_set(validators, height)
        me = self._public_key if self._public_key in validators else None
        self._hs = _Height(height, validators, me)
        self.height = height
        self.locked_value, self.locked_hash, self.locked_round = None, None, -1
        self.valid_value, self.valid_hash, self.valid_round = None, None, -1
        buffered = [m for m in self._buffer.values() if m.height == height]
        self._buffer.clear()
        self._buffered_by.clear()
        self._out = []

        s = self._signed
        if me is not None and s is not None and s.height == height:
            # Resume where the last signature left us, with its lock (see "Safety across restarts").
            self.locked_hash, self.locked_round = s.locked_block, s.locked_round
            self.valid_hash, self.valid_round = s.valid_block, s.valid_round
            if s.step == PROPOSE:
                self._start_round(s.round)
            else:
                self.round, self.step = s.round, s.step
                self._cast(s.step, s.block)
        else:
            self._start_round(0)
        for message in buffered:
            if isinstance(message, Proposal):
                self._receive_proposal(message)
            else:
                self._receive_vote(message)
        self._progress()
        return self._take()

    def on_proposal(self, proposal: Proposal) -> list[Action]:
        self._out = []
        if self._for_current_height(proposal) and self._receive_proposal(proposal):
            self._progress()
        return self._take()

    def on_vote(self, vote: Vote) -> list[Action]:
        self._out = []
        if self._for_current_height(vote) and self._receive_vote(vote):
            self._progress()
        return self._take()

    def on_message(self, message: Message) -> list[Action]:
        if isinstance(message, Proposal):
            return self.on_proposal(message)
        return self.on_vote(message)

    def on_timeout(self, step: str, height: int, round_: int) -> list[Action]:
        """A timeout scheduled earlier has expired (lines 57, 61, 65); stale ones change nothing."""
        if step not in TIMEOUT_STEPS:
            raise ValueError(f"unknown timeout step {step!r}")
        self._out = []
        hs = self._hs
        if hs is None or hs.decided or height != self.height or round_ != self.round:
            return []
        if step == "propose" and self.step == PROPOSE:  # line 57
            self._cast(PREVOTE, None)
            self.step = PREVOTE
        elif step == "prevote" and self.step == PREVOTE:  # line 61
            self._cast(PRECOMMIT, None)
            self.step = PRECOMMIT
        elif step == "precommit":  # line 65
            self._start_round(self.round + 1)
        else:
            return []
        self._progress()
        return self._take()

    def on_commit(self, value: Value, certificate: CommitCertificate) -> list[Action]:
        """A value for the current height with its commit certificate, learnt out of band (block sync).

        Decides it if the certificate verifies against this height's validators and valid(value) holds:
        more than 2/3 precommits are exactly what rule 49 waits for, however they arrive.
        """
        self._out = []
        hs = self._hs
        if hs is None or hs.decided or certificate.height != self.height:
            return []
        if value.hash != certificate.block:
            return [Rejected("commit: the value's hash is not the certificate's block")]
        try:
            certificate.verify(self.chain_id, hs.validators)
        except ProofError as exc:
            return [Rejected(f"commit: {exc}")]
        if not self._valid(value):
            return [Rejected(f"commit: the application finds the value of height {self.height} invalid")]
        hs.decided = True
        return [Decide(self.height, certificate.round, value, certificate)]

    # --- admission of messages ---------------------------------------------------------------------
    def _for_current_height(self, message: Message) -> bool:
        hs = self._hs
        if hs is None:
            return False
        if message.height == self.height:
            return not hs.decided
        if message.height == self.height + 1:
            self._buffer_message(message)
        return False

    def _buffer_message(self, message: Message) -> None:
        who = sender(message)
        if isinstance(message, Proposal):
            key: tuple[Any, ...] = ("proposal", message.round, who, message.pol_round, message.block_hash)
        else:
            key = ("vote", message.round, who, message.type, message.block)
        if key in self._buffer:
            return
        if len(self._buffer) >= self._max_buffered:
            self._out.append(Rejected(f"buffer for height {self.height + 1} is full; dropped {describe(message)}"))
            return
        if self._buffered_by.get(who, 0) >= BUFFER_PER_SENDER:
            self._out.append(Rejected(f"too many buffered messages from {who[:4].hex()}..; "
                                      f"dropped {describe(message)}"))
            return
        self._buffer[key] = message
        self._buffered_by[who] = self._buffered_by.get(who, 0) + 1

    def _reject(self, reason: str) -> bool:
        self._out.append(Rejected(reason))
        return False

    def _receive_vote(self, vote: Vote, *, own: bool = False) -> bool:
        """Store a vote of the current height; True if it is new and counted."""
        hs = self._hs
        assert hs is not None
        if (vote.type not in (PREVOTE, PRECOMMIT) or not 0 <= vote.round <= MAX_ROUND
                or (vote.block is not None and len(vote.block) != 32)):
            return self._reject(f"malformed vote: {describe(vote)}")
        if vote.validator not in hs.members:
            return self._reject(f"{describe(vote)}: not a validator of height {hs.height}")
        tally = hs.peek(vote.type, vote.round)
        existing = tally.first.get(vote.validator) if tally is not None else None
        if tally is not None and existing is not None:
            if tally.has(vote.validator, vote.block):
                return False  # a duplicate (or the same vote with a signature we already hold)
            if not vote.signature_valid(self.chain_id):
                return self._reject(f"{describe(vote)}: invalid signature")
            if hs.first_report((vote.validator, vote.round, vote.type)):
                self._out.append(Evidence(existing, vote))
            if not hs.relevant(vote.round, vote.block):
                return False
            tally.add(vote, first=False)  # counts for its own block only, never twice in a total
            return True
        if not own and not vote.signature_valid(self.chain_id):
            return self._reject(f"{describe(vote)}: invalid signature")
        if not self._make_room(vote.validator, vote.round):
            return False
        hs.tally(vote.type, vote.round).add(vote, first=True)
        hs.note_sender(vote.validator, vote.round)
        return True

    def _receive_proposal(self, proposal: Proposal, *, own: bool = False) -> bool:
        """Store a proposal of the current height; True if it is new."""
        hs = self._hs
        assert hs is not None
        if proposal.proposer != hs.proposer(proposal.round):
            return self._reject(f"{describe(proposal)}: not the proposer of that round")
        entries = hs.proposals.get(proposal.round, [])
        for e in entries:
            p = e.proposal
            if p.sig == proposal.sig and (p.value is proposal.value or p.value == proposal.value):
                return False  # duplicate
        if not own and not proposal.signature_valid(self.chain_id):
            return self._reject(f"{describe(proposal)}: invalid signature")
        conflicting = next((e.proposal for e in entries if e.proposal.sig != proposal.sig), None)
        if conflicting is not None and hs.first_report((proposal.proposer, proposal.round, 0)):
            self._out.append(ConflictingProposals(conflicting, proposal))
        if len(entries) >= self._proposals_per_round and not hs.has_votes_for(proposal.round,
                                                                               proposal.block_hash):
            return self._reject(f"{describe(proposal)}: too many proposals for that round")
        if not self._make_room(proposal.proposer, proposal.round):
            return False
        entry = _Entry(proposal)
        hs.proposals.setdefault(proposal.round, []).append(entry)
        hs.by_hash.setdefault(proposal.block_hash, []).append(entry)
        hs.note_sender(proposal.proposer, proposal.round)
        return True

    def _make_room(self, validator: bytes, round_: int) -> bool:
        """Bound the future rounds one validator can occupy (see "Resource bounds")."""
        hs = self._hs
        assert hs is not None
        if round_ <= self.round:
            return True
        rounds = hs.rounds_of.get(validator)
        if rounds is None or round_ in rounds:
            return True
        future = sorted(r for r in rounds if r > self.round)
        if len(future) < self._future_rounds:
            return True
        if future[0] > round_:
            return False  # older than every future round this validator already holds
        hs.evict(validator, future[0])
        return True

    def _value_for(self, block: bytes) -> Any:
        """A valid value with hash `block` from any proposal of this height, or None."""
        hs = self._hs
        assert hs is not None
        value = hs.good.get(block)
        if value is not None:
            return value
        for entry in hs.by_hash.get(block, ()):
            if entry.verdict is None:
                entry.verdict = bool(self._valid(entry.proposal.value))
            if entry.verdict:
                hs.good[block] = entry.proposal.value
                return entry.proposal.value
        return None

    # --- the upon-rules (Algorithm 1); `RULES` below lists them in the order they are tried ----------
    def _progress(self) -> None:
        hs = self._hs
        while hs is not None and not hs.decided:
            for _line, rule in RULES:
                if rule(self):
                    break
            else:
                return

    def _upon_precommit_quorum_for_value(self) -> bool:  # line 49
        hs = self._hs
        assert hs is not None
        for round_, tally in hs.precommits.items():
            for block, count in tally.counts():
                if block is not None and count >= hs.quorum:
                    value = self._value_for(block)
                    if value is not None:
                        self._decide(round_, tally, value)
                        return True
        return False

    def _upon_higher_round(self) -> bool:  # line 55
        hs = self._hs
        assert hs is not None
        target = max((r for r, who in hs.senders.items() if r > self.round and len(who) >= hs.skip),
                     default=-1)
        if target < 0:
            return False
        self._start_round(target)
        return True

    def _upon_proposal(self) -> bool:  # line 22
        hs = self._hs
        assert hs is not None
        if self.step != PROPOSE:
            return False
        for entry in hs.proposals.get(self.round, ()):
            p = entry.proposal
            if p.pol_round == -1:
                ok = (self._value_for(p.block_hash) is not None
                      and (self.locked_round == -1 or self.locked_hash == p.block_hash))
                self._cast(PREVOTE, p.block_hash if ok else None)
                self.step = PREVOTE
                return True
        return False

    def _upon_proposal_with_pol(self) -> bool:  # line 28
        hs = self._hs
        assert hs is not None
        if self.step != PROPOSE:
            return False
        for entry in hs.proposals.get(self.round, ()):
            p = entry.proposal
            vr = p.pol_round
            if not 0 <= vr < self.round:
                continue
            pol = hs.peek(PREVOTE, vr)
            if pol is None or pol.for_block(p.block_hash) < hs.quorum:
                continue
            ok = (self._value_for(p.block_hash) is not None
                  and (self.locked_round <= vr or self.locked_hash == p.block_hash))
            self._cast(PREVOTE, p.block_hash if ok else None)
            self.step = PREVOTE
            return True
        return False

    def _upon_prevote_quorum_for_value(self) -> bool:  # line 36
        hs = self._hs
        assert hs is not None
        if self.step < PREVOTE or self.round in hs.rule36:
            return False
        tally = hs.peek(PREVOTE, self.round)
        if tally is None:
            return False
        for block, count in tally.counts():
            if block is None or count < hs.quorum:
                continue
            value = self._value_for(block)
            if value is None:
                continue
            hs.rule36.add(self.round)
            self.valid_value, self.valid_hash, self.valid_round = value, block, self.round
            if self.step == PREVOTE:
                self.locked_value, self.locked_hash, self.locked_round = value, block, self.round
                self._cast(PRECOMMIT, block)
                self.step = PRECOMMIT
            return True
        return False

    def _upon_prevote_quorum_for_nil(self) -> bool:  # line 44
        hs = self._hs
        assert hs is not None
        tally = hs.peek(PREVOTE, self.round)
        if self.step != PREVOTE or tally is None or tally.for_block(None) < hs.quorum:
            return False
        self._cast(PRECOMMIT, None)
        self.step = PRECOMMIT
        return True

    def _upon_prevote_quorum_any(self) -> bool:  # line 34
        hs = self._hs
        assert hs is not None
        tally = hs.peek(PREVOTE, self.round)
        if (self.step != PREVOTE or self.round in hs.prevote_timeout or tally is None
                or tally.total < hs.quorum):
            return False
        hs.prevote_timeout.add(self.round)
        self._schedule("prevote")
        return True

    def _upon_precommit_quorum_any(self) -> bool:  # line 47
        hs = self._hs
        assert hs is not None
        tally = hs.peek(PRECOMMIT, self.round)
        if self.round in hs.precommit_timeout or tally is None or tally.total < hs.quorum:
            return False
        hs.precommit_timeout.add(self.round)
        self._schedule("precommit")
        return True

    # --- the functions of Algorithm 1 --------------------------------------------------------------
    def _start_round(self, round_: int) -> None:
        hs = self._hs
        assert hs is not None
        self.round = round_
        self.step = PROPOSE
        for entries in hs.by_hash.values():  # a "no" from valid() may depend on the clock: ask again
            for entry in entries:
                if entry.verdict is False:
                    entry.verdict = None
        if hs.me is not None and hs.proposer(round_) == hs.me:
            if self.valid_round >= 0:
                # Re-propose the valid value; after a restart we may know only its hash, and then
                # we find it among this height's proposals or let the round time out.
                value = self.valid_value if self.valid_value is not None else self._value_for_hash(self.valid_hash)
                pol_round = self.valid_round
            else:
                value = self._get_value(self.height, round_)
                pol_round = -1
            if value is not None and self._propose(value, pol_round):
                return
        self._schedule("propose")

    def _value_for_hash(self, block: bytes | None) -> Any:
        return self._value_for(block) if block is not None else None

    def _propose(self, value: Value, pol_round: int) -> bool:
        if not self._may_sign(PROPOSE, value.hash, pol_round):
            return False
        assert self._key is not None
        proposal = Proposal.make(self._key, self.chain_id, self.height, self.round, pol_round, value)
        self._record(PROPOSE, value.hash, pol_round)
        self._out.append(Broadcast(proposal))
        self._receive_proposal(proposal, own=True)
        return True

    def _cast(self, vtype: int, block: bytes | None) -> None:
        """Sign and broadcast our vote of this round (nothing for an observer or a refused signature)."""
        hs = self._hs
        assert hs is not None
        if hs.me is None or not self._may_sign(vtype, block, -1):
            return
        assert self._key is not None
        vote = Vote.make(self._key, self.chain_id, vtype, self.height, self.round, block)
        self._record(vtype, block, -1)
        self._out.append(Broadcast(vote))
        self._receive_vote(vote, own=True)

    def _may_sign(self, step: int, block: bytes | None, pol_round: int) -> bool:
        """The double-signing guard: only forward in (height, round, step), or the identical message."""
        s = self._signed
        position = (self.height, self.round, step)
        if s is None or position > s.position:
            return True
        if position == s.position and (s.is_hold or (s.block == block and s.pol_round == pol_round)):
            return True
        self._out.append(Rejected(
            f"refusing to sign a {STEP_NAMES[step]} at h={self.height} r={self.round}: already signed "
            f"a {STEP_NAMES[s.step]} at h={s.height} r={s.round}"
            + (" for a different block" if position == s.position else "")))
        return False

    def _record(self, step: int, block: bytes | None, pol_round: int) -> None:
        self._signed = SignedState(self.height, self.round, step, block, pol_round, self.locked_round,
                                   self.locked_hash, self.valid_round, self.valid_hash)
        self._out.append(RecordSigned(self._signed))

    def _schedule(self, step: str) -> None:
        self._out.append(ScheduleTimeout(step, self.height, self.round, self.timeouts.delay(step, self.round)))

    def _decide(self, round_: int, tally: _Tally, value: Any) -> None:
        hs = self._hs
        assert hs is not None
        block = value.hash
        sigs = sorted((CertSig(v.validator, v.sig) for v in tally.by_block[block].values()),
                      key=lambda s: s.validator)
        certificate = CommitCertificate(self.height, round_, block, tuple(sigs))
        hs.decided = True
        self._out.append(Decide(self.height, round_, value, certificate))

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out


#: Algorithm 1's upon-rules in the order they are tried; after one fires the engine starts over, and it
#: stops when none fires. The timeout functions (lines 57, 61, 65) are `Tendermint.on_timeout`.
RULES: tuple[tuple[int, Callable[[Tendermint], bool]], ...] = (
    (49, Tendermint._upon_precommit_quorum_for_value),
    (55, Tendermint._upon_higher_round),
    (22, Tendermint._upon_proposal),
    (28, Tendermint._upon_proposal_with_pol),
    (36, Tendermint._upon_prevote_quorum_for_value),
    (44, Tendermint._upon_prevote_quorum_for_nil),
    (34, Tendermint._upon_prevote_quorum_any),
    (47, Tendermint._upon_precommit_quorum_any),
)


def _check_validator_set(validators: Iterable[bytes], height: int) -> None:
    vs = list(validators)
    if not vs:
        raise ValueError(f"the validator set of height {height} is empty")
    if len(vs) > MAX_VALIDATORS:
        raise ValueError(f"the validator set of height {height} has more than {MAX_VALIDATORS} members")
    if any(len(v) != 32 for v in vs):
        raise ValueError(f"the validator set of height {height} holds a key that is not 32 bytes")
    if any(a >= b for a, b in itertools.pairwise(vs)):
        raise ValueError(f"the validator set of height {height} is not in strictly ascending order")
