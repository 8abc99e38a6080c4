"""The consensus driver: runs `consensus.engine.Tendermint` for this node, one block height at a time.

The engine decides; this module carries its messages, keeps its time and makes its decisions durable:

- get_value(h, r) builds a block from the mempool (`ChainStore.make_block`); the ExecutionResult is
  kept by block hash, so the commit does not execute the block again.
- valid(block) checks the header time (after the parent's, at most `max_drift_ms` ahead of our clock)
  and `ChainStore.validate_block` with the mempool as the set of already verified transactions: a
  signature checked on submission or gossip is not checked again, nor are its bytes decoded again.
  Verdicts are kept by block hash.
- RecordSigned is written to LevelDB with a synced write (consensus/signed), then to the data folder's
  signed-state file (node/signed_file.py), inside the same engine call, so it is durable before the
  loop sends any Broadcast that follows it. A restarted node builds its engine with the later of the
  two and never signs a conflicting vote, even if its database lost its latest writes.
- ScheduleTimeout becomes `loop.call_later`; Decide commits the block with its certificate; Evidence
  and ConflictingProposals are stored (evidence/...) and served at GET /v1/evidence.

Threads: every engine call and every store write runs on one dedicated worker thread ("consensus"),
because building or checking a block of thousands of transactions takes far longer than an event
loop may block. Exactly one call is in flight at a time (this task awaits each), so the engine and the
store's single writer are never used concurrently; the loop only reads.

Listening first: after the process starts, a validator with peers starts no height for
`LISTEN_FIRST_TICKS` gossip ticks (2 s by default), keeping what arrives. A peer that sees it restarted
relays to it, within two ticks, what it holds of the height in progress, its own earlier votes among
them; a folder restored from an older copy has no record of those, and they make it hold back
(`_signed_beyond_record`) before it signs anything there. It also asks every validator peer at once
for what it holds of its key (node/peers.py, `ask_own`): once every other validator has answered, or
is not running, and none is ahead of it (behind them, it asks again once sync has brought it level),
the listening ends early (`Listened`), after what they gave has been looked at.

Idle: a height is started only when there is something to do: transactions in the mempool (after
`batch_ms` to let a block fill), a heartbeat due, a peer's message for that height (someone else has
work), or a restart in the middle of a height we had signed in. Between heights nothing runs: no
rounds, no timers, no empty blocks. Once started, a height runs until decided; a proposer with an
empty mempool proposes nothing in round 0 (another validator has the transactions and proposes in a
later round), and an empty block from round 1 on so a started height always ends.

Block sync hands in blocks with their certificates (`submit_synced`); they are committed by the same
thread, so consensus and sync never write concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

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
)
from consensus.messages import PROPOSE, STEP_NAMES, Message, describe, sender
from ler import keys
from ler.block import PRECOMMIT, Block, CommitCertificate
from ler.errors import DecodeError, ProofError, RuleError
from ler.keys import sha256
from ler.tx import Tx
from node.evidence import Piece, piece_of
from node.service import NodeService, now_ms
from node.signed_file import read_signed_file, write_signed_file
from storage.chain import ExecutionResult, InvalidBlock, StoreError

log = logging.getLogger("ler.consensus")

SIGNED_KEY = b"consensus/signed"
PROPOSAL_KEY = b"consensus/proposal"
#: The least time between two warnings that this node's clock is behind the network's.
CLOCK_WARNING_EVERY_S = 60.0
MAX_INBOX = 20_000       # queued peer messages before gossip is answered "busy, retry"
MAX_EARLY = 1024         # messages for the next height kept before that height starts
MAX_BATCH = 512          # inputs handed to the engine in one thread call
LISTEN_FIRST_TICKS = 4   # gossip ticks (`[gossip] resend_s`) a started validator listens before its first height


class Outbox(Protocol):
    """What the driver needs from gossip (node/peers.py)."""

    def broadcast(self, message: Message, raw: bytes, digest: bytes) -> None:
        """Send our own signed message to every peer (now, and again until the height ends)."""

    def accepted(self, message: Message, raw: bytes, digest: bytes) -> None:
        """A peer's message the engine took: relay it to peers that may lack it."""

    def new_height(self, committed: int) -> None:
        """The committed height moved: forget the old height's messages, tell peers."""

    def evidence(self, piece: Piece, source: bytes | None) -> None:
        """A piece of evidence this node stored (found by its engine, or from `source`): to every peer."""


def _position(message: Message) -> tuple[int, int, int]:
    """Where `message` stands in a signer's sequence: (height, round, step), as SignedState.position."""
    return (message.height, message.round, PROPOSE if isinstance(message, Proposal) else message.type)


def encode_message(message: Message) -> bytes:
    return message.encode()


def decode_proposal(raw: bytes) -> Proposal:
    return Proposal.decode(raw, Block)


# --- inputs ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Incoming:
    """A consensus message from a peer, with its bytes and their hash (its identity in gossip)."""

    message: Message
    raw: bytes
    digest: bytes
    peer: bytes


@dataclass(frozen=True, slots=True)
class TimeoutFired:
    step: str
    height: int
    round: int


@dataclass(slots=True)
class SyncBatch:
    """Blocks with their certificates from block sync, in height order; `done` gets the count committed."""

    pairs: list[tuple[Block, CommitCertificate]]
    done: asyncio.Future[int]


@dataclass(frozen=True, slots=True)
class Wake:
    """Something changed outside the engine (new transactions, stop): look at the start gate again."""


@dataclass(frozen=True, slots=True)
class Listened:
    """Every validator peer has given what it holds of our key, at our committed `height`: the listening
    time may end. It comes through the inbox behind those messages, so they wait in `_early` by then."""

    height: int


Input = Incoming | TimeoutFired | SyncBatch | Wake | Listened


class SyncRefused(Exception):
    """A synced block or certificate that does not verify; `reason` says which rule."""

    @property
    def reason(self) -> str:
        return str(self)


class _Either:
    """A Container holding what any of `sets` holds."""

    __slots__ = ("sets",)

    def __init__(self, *sets: Container[bytes]) -> None:
        self.sets = sets

    def __contains__(self, item: object) -> bool:
        return any(item in s for s in self.sets)


@dataclass(frozen=True, slots=True)
class _Send:
    """A Broadcast, with the message already encoded on the worker thread."""

    message: Message
    raw: bytes
    digest: bytes


@dataclass(slots=True)
class _Outcome:
    """What one worker-thread call gives back to the loop."""

    actions: list[Action | _Send] = field(default_factory=list)
    accepted: list[Incoming] = field(default_factory=list)


def reached_by_many(heights: Sequence[int], f: int) -> int:
    """The highest height that at least f + 1 of `heights` reach (0 if there are not that many): if at
    most f of those who reported them are faulty, an honest one reaches it, so no f together can push it
    above every honest report."""
    ranked = sorted(heights, reverse=True)
    return ranked[f] if len(ranked) > f else 0


def first_height_holding(key: bytes, upto: int, validators: Callable[[int], Container[bytes]],
                         change_heights: Sequence[int]) -> int | None:
    """The first height of the uninterrupted run of heights ending at `upto` whose validators hold `key`
    (None if those of `upto` do not). `change_heights` are the heights up to `upto`, ascending, where the
    set may differ from the one before (the store's `validator_change_heights`): between two of them
    the set stays as it is, so one look before each, walking back, finds where the run began."""
    if key not in validators(upto):
        return None
    for h in reversed(change_heights):
        if key not in validators(h - 1):
            return h
    return 1


class ConsensusDriver:
    def __init__(self, svc: NodeService, outbox: Outbox | None = None) -> None:
        self.svc = svc
        self.store = svc.store
        self.outbox = outbox
        cfg = svc.config
        self.voting = cfg.role == "authority"
        c = cfg.consensus
        self.timeouts = TimeoutConfig(c.propose, c.propose_increment, c.prevote, c.prevote_increment,
                                      c.precommit, c.precommit_increment)
        self.max_drift_ms = c.max_drift_ms
        self.batch_s = cfg.blocks.batch_ms / 1000
        self.heartbeat_s = cfg.blocks.heartbeat_s
        self.block_txs = cfg.limits.block_txs
        self.signed = self._load_signed()
        # The heights peers report (node/sync.py sets it): where a hold starts from.
        self.peer_heights: Callable[[], list[int]] = list
        self._lone_beyond_record_said = False
        self.own_proposal = self._load_proposal()
        self._warn_if_locked_on_a_lost_block()
        # Observers run no engine: they never vote and follow the chain by block sync alone.
        self.engine: Tendermint | None = None
        if self.voting:
            self.engine = Tendermint(svc.chain_id, svc.key, self.store.validators, self._get_value,
                                     self._valid, self.timeouts, self.signed)
        self._inbox: asyncio.Queue[Input] = asyncio.Queue()
        self._queued_messages = 0
        self._wake_queued = False
        self._early: dict[bytes, Incoming] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="consensus")
        self._timers: set[asyncio.TimerHandle] = set()
        # Per-height caches, touched only on the worker thread (cleared there after each commit).
        self._results: dict[bytes, ExecutionResult] = {}
        self._invalid: dict[bytes, str] = {}
        self._refused: list[tuple[Tx, RuleError]] = []
        self._pending_since: float | None = None
        self._height_started_at: float | None = None
        self._last_block_at = time.monotonic()
        self._clock_warned_at = float("-inf")
        self._clock_ahead_warned_at = float("-inf")
        # Other proposers whose blocks, committed in a row by consensus, were timed far behind our clock.
        self._late_proposers: set[bytes] = set()
        self._logged: tuple[int, int] = (0, -1)
        self._stopping = False
        self._finish_height: int | None = None
        self._stop_deadline = 0.0
        # Until when to start no height (set when the loop starts; None once passed, or with no peers).
        self._listen_until: float | None = None
        self._listen_s = LISTEN_FIRST_TICKS * cfg.gossip.resend_s if cfg.peers else 0.0
        self._loop_started = False
        self._early_full = False  # a message found no room in _early since the process started
        self._voted_in_said = False  # `_check_voted_in`
        svc.tx_listeners.append(self._on_txs)

    def _load_signed(self) -> SignedState | None:
        """The later of the two records of what this validator last signed (the database's and its
        file's, node/signed_file.py): either one alone may have lost writes."""
        in_db = load_signed(self.store.get_meta(SIGNED_KEY))
        if not self.voting:
            return in_db
        in_file = read_signed_file(self.svc.config.signed_path, self.svc.chain_id, self.svc.key.public_key)
        signed = max((s for s in (in_db, in_file) if s is not None), key=lambda s: s.position, default=None)
        if signed is not None and signed.is_hold and signed.height > self.store.height + 1:
            log.warning("event=signing_held_back height=%d until_height=%d reason=%r", self.store.height,
                        signed.height, "this validator's key was found to have signed beyond its record "
                        "(see event=signed_beyond_record): it signs nothing below that height")
        elif signed is not None and signed.height > self.store.height + 1:
            # Only a database that lost blocks it had committed gets here: signing at h needs h - 1.
            log.warning("event=database_behind_signed height=%d signed_height=%d: the database lost blocks "
                        "it had (a removed or cut-short log, or a restored copy); the node syncs them again "
                        "and signs nothing below height %d", self.store.height, signed.height, signed.height)
        return signed

    def _warn_if_locked_on_a_lost_block(self) -> None:
        """A lone validator resumes a height locked on (or with a polka for) a block that only its own
        proposal record could hold, and that record does not hold it: its database lost the block. Among
        several validators another one proposes it again; alone, it can neither re-propose it nor vote for
        anything else, so the height never ends. Say so: only the operator can decide what to do."""
        s, own = self.signed, self.own_proposal
        if s is None or s.height != self.store.height + 1:
            return
        if tuple(self.store.validators(s.height)) != (self.svc.key.public_key,):
            return
        held = own.block_hash if own is not None and own.height == s.height else None
        lost = {b for b in (s.locked_block, s.valid_block) if b is not None} - {held}
        if lost:
            log.warning("event=locked_block_unknown height=%d block=%s reason=%r", s.height, min(lost).hex(),
                        "this lone validator locked on a block its database no longer holds (removed or cut "
                        "short); it cannot make another block at this height: see docs/NETWORK.md")

    def _load_proposal(self) -> Proposal | None:
        raw = self.store.get_meta(PROPOSAL_KEY)
        if raw is None:
            return None
        try:
            return decode_proposal(raw)
        except (DecodeError, ValueError) as exc:
            # Only a convenience (it saves a round after a crash); the signed state is what keeps us safe.
            log.warning("event=stored_proposal_unreadable reason=%r", str(exc))
            return None

    # --- state for the API and metrics ---------------------------------------------------------------
    @property
    def round(self) -> int:
        return self.engine.round if self.engine is not None and self.engine.height > self.store.height else 0

    @property
    def held_until(self) -> int:
        """The height below which this validator signs nothing, having found its key signed beyond its
        record (`_hold_back`); 0 when no hold is in force."""
        s = self.engine.signed_state if self.engine is not None else None
        return s.height if s is not None and s.is_hold and s.height > self.store.height + 1 else 0

    @property
    def voted_in_height(self) -> int | None:
        """For an observer whose key governance made an authority's (it signs nothing, `_check_voted_in`):
        the height from which it is one, that is the first of the uninterrupted run of heights, up to the
        last known (height + 2), whose validators hold its key; None for any other node. Not the next
        height: the vote took effect once, maybe long ago and before a restart, and the operator looks
        for that height's block to see which vote it was."""
        if self.voting:
            return None
        key, h = self.svc.key.public_key, self.store.height
        top = next((x for x in (h + 2, h + 1) if key in self.store.validators(x)), None)
        if top is None:
            return None
        return first_height_holding(key, top, self.store.validators, self.store.validator_change_heights(top))

    def _check_voted_in(self) -> None:
        """Say once when this observer's key becomes an authority's: the network counts its vote from that
        height on and never gets it, so it has one live authority fewer than it counts (two such, of
        four, and nothing commits). It does not start voting by itself: a validator records what it signs
        (in its database and its `signed-state` file) and listens to its peers before it signs, from its
        start on, which an observer did not; the safe way in is the authority start, which its operator
        chooses with role = "authority"."""
        if self._voted_in_said:
            return
        at = self.voted_in_height
        if at is None:
            return
        self._voted_in_said = True
        log.warning("event=voted_in_but_observer node=%s height=%d reason=%r", self.svc.key.did, at,
                    f"governance made this node's key an authority from height {at}, but the node runs as an "
                    "observer and does not vote, so the network misses its vote: set role = \"authority\" "
                    "in [node] of its config.toml and restart it (or vote the key out again)")

    @property
    def in_height(self) -> bool:
        """Whether a height is running (started, not yet committed)."""
        return self.engine is not None and self.engine.height == self.store.height + 1

    # --- inputs from the rest of the node ------------------------------------------------------------
    def offer(self, incoming: Incoming) -> bool:
        """Queue a peer's consensus message; False when the queue is full (the peer should retry)."""
        if self.engine is None:
            return True  # an observer takes no part; nothing to do with it
        if self._queued_messages >= MAX_INBOX:
            return False
        self._queued_messages += 1
        self._inbox.put_nowait(incoming)
        return True

    def submit_synced(self, pairs: list[tuple[Block, CommitCertificate]]) -> asyncio.Future[int]:
        """Hand blocks from sync to the committing thread; the future gets how many were committed."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(SyncBatch(pairs, done))
        return done

    @property
    def listening(self) -> bool:
        """Whether this node will listen first when its loop starts, or is listening now."""
        return self.engine is not None and self._listen_s > 0 and (
            self._listen_until is not None or not self._loop_started)

    @property
    def listen_s(self) -> float:
        return self._listen_s

    def listened(self, height: int) -> None:
        """Peers have said all they hold of our key (`Listened`); queued behind what they gave."""
        self._inbox.put_nowait(Listened(height))

    def _on_txs(self, txs: list[Tx], source: bytes | None) -> None:
        self._wake()

    def _wake(self) -> None:
        if not self._wake_queued:
            self._wake_queued = True
            self._inbox.put_nowait(Wake())

    def stop(self) -> None:
        """Stop after the height in progress (bounded by a grace period); start no other."""
        if self._stopping:
            return
        self._stopping = True
        nxt = self.store.height + 1
        busy = (self.in_height and not (self.engine is not None and self.engine.decided)) \
            or (self._pending_since is not None and len(self.svc.mempool) > 0 and self._can_start(nxt))
        self._finish_height = nxt if busy else None
        self._stop_deadline = time.monotonic() + self.batch_s + 2.0
        self._wake()

    # --- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop_started = True
        self._check_voted_in()
        if self._listen_s > 0:
            self._listen_until = time.monotonic() + self._listen_s
        try:
            while not (self._stopping and self._stop_done()):
                if self._should_start():
                    await self._start_height()
                    continue
                batch = await self._collect(self._next_deadline())
                if batch:
                    await self._handle(batch)
        finally:
            for handle in self._timers:
                handle.cancel()
            self._timers.clear()
            # Normally idle here; after a cancellation a call may still be running, and the store must
            # not close under it, so wait for it.
            self._executor.shutdown(wait=True)
            for item in self._drain():
                if isinstance(item, SyncBatch) and not item.done.done():
                    item.done.cancel()

    def _drain(self) -> list[Input]:
        items: list[Input] = []
        while not self._inbox.empty():
            items.append(self._inbox.get_nowait())
        return items

    def _stop_done(self) -> bool:
        return (self._finish_height is None or self.store.height >= self._finish_height
                or time.monotonic() >= self._stop_deadline)

    async def _collect(self, deadline: float | None) -> list[Input]:
        if self._inbox.empty():
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):  # not wait_for (see node.daemon.cancelled)
                    first = await self._inbox.get()
            except TimeoutError:
                return []
            batch = [first]
        else:
            batch = []
        while not self._inbox.empty() and len(batch) < MAX_BATCH:
            batch.append(self._inbox.get_nowait())
        for item in batch:
            if isinstance(item, Incoming):
                self._queued_messages -= 1
            elif isinstance(item, Wake):
                self._wake_queued = False
        return batch

    def _can_start(self, h: int) -> bool:
        return self.engine is not None and self.engine.height < h and self.svc.key.public_key in \
            self.store.validators(h)

    def _should_start(self) -> bool:
        """The idle gate: whether to start the next height now (see the module docstring)."""
        now = time.monotonic()
        if self._listen_until is not None:
            if now < self._listen_until:
                return False  # listening first (the module docstring): what arrives waits in _early
            self._listen_until = None  # (here, first: a past deadline left set would make the loop spin)
        nxt = self.store.height + 1
        if not self._can_start(nxt):
            return False
        if self._stopping and (self._finish_height != nxt or self._stop_done()):
            return False  # stopping: only the height that was already on its way
        if self._early:
            return True
        if self.signed is not None and self.signed.height == nxt:
            return True  # restarted mid-height: resume, our peers may be waiting for our vote
        if len(self.svc.mempool):
            if self._pending_since is None:
                # The first transactions after a pause wait batch_ms for company, unless they already
                # fill a block (decided once, here: the wait then runs its course, as clients expect).
                full = len(self.svc.mempool) >= self.block_txs
                self._pending_since = now - self.batch_s if full else now
            if now >= self._pending_since + self.batch_s:
                return True
        else:
            self._pending_since = None
        return self.heartbeat_s > 0 and now >= self._last_block_at + self.heartbeat_s

    def _next_deadline(self) -> float | None:
        deadlines = []
        if self._stopping:
            deadlines.append(self._stop_deadline)
        # Only for a validator of the next height: `_should_start` answers no to anyone else before it
        # looks at these times, so a time past would have the loop spin, asking again and again.
        if not self.in_height and self.engine is not None and self._can_start(self.store.height + 1):
            if self._listen_until is not None:
                deadlines.append(self._listen_until)
            if self._pending_since is not None and len(self.svc.mempool):
                deadlines.append(self._pending_since + self.batch_s)
            if self.heartbeat_s > 0:
                deadlines.append(self._last_block_at + self.heartbeat_s)
        return min(deadlines) if deadlines else None

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- starting a height ---------------------------------------------------------------------------
    async def _start_height(self) -> None:
        h = self.store.height + 1
        early = [m for m in self._early.values() if m.message.height in (h, h + 1)]
        self._early.clear()
        self._height_started_at = time.monotonic()
        self._pending_since = None
        vals = self.store.validators(h)
        log.info("event=height_started height=%d round=0 validators=%d proposer=%s mempool=%d early=%d",
                 h, len(vals), keys.did_from_public_key(proposer_of(vals, h, 0))[-8:],
                 len(self.svc.mempool), len(early))
        outcome = await self._call(self._thread_start, h, early)
        await self._carry_out(outcome)

    def _thread_start(self, h: int, early: list[Incoming]) -> _Outcome:
        assert self.engine is not None
        out = _Outcome()
        self._check_relayed_own(out, early)
        self._absorb(out, self.engine.start_height(h))
        own = self.own_proposal
        if own is not None and own.height == h:
            # Restarted mid-height: our last proposal (its block included) is known again, so votes
            # for it, ours among them, can decide it instead of waiting out the round.
            self._absorb(out, self.engine.on_proposal(own))
        for incoming in early:
            self._feed(out, incoming)
        return out

    # --- handling inputs -----------------------------------------------------------------------------
    async def _handle(self, batch: list[Input]) -> None:
        feed: list[Incoming | TimeoutFired] = []
        for item in batch:
            if isinstance(item, SyncBatch):
                if feed:
                    await self._carry_out(await self._call(self._thread_feed, feed))
                    feed = []
                await self._commit_synced(item)
            elif isinstance(item, TimeoutFired):
                feed.append(item)
            elif isinstance(item, Listened):
                # What they gave is in _early by now (routed above, in order), unless it was full.
                if item.height == self.store.height and self._listen_until is not None and not self._early_full:
                    self._listen_until = None
                    log.info("event=listened height=%d early=%d", item.height, len(self._early))
            elif isinstance(item, Incoming):
                routed = self._route(item)
                if routed:
                    feed.append(item)
        if feed and self.engine is not None:
            await self._carry_out(await self._call(self._thread_feed, feed))

    def _route(self, incoming: Incoming) -> bool:
        """True if the engine should see it now; messages for a height it has not started wait here."""
        m = incoming.message
        nxt = self.store.height + 1
        if m.height < nxt or m.height > nxt + 1:
            return False  # decided already, or so far ahead that block sync must bring us there first
        if self.in_height:
            return True  # its height, or the next one (which the engine buffers itself)
        if len(self._early) < MAX_EARLY:  # kept, and the gate opens: a peer is working on it
            self._early[incoming.digest] = incoming
        else:
            self._early_full = True  # (then the listening, if still on, runs its full time)
        return False

    def _thread_feed(self, items: Sequence[Incoming | TimeoutFired]) -> _Outcome:
        assert self.engine is not None
        out = _Outcome()
        self._check_relayed_own(out, items)
        for item in items:
            if isinstance(item, TimeoutFired):
                self._absorb(out, self.engine.on_timeout(item.step, item.height, item.round))
            else:
                self._feed(out, item)
        return out

    def _check_relayed_own(self, out: _Outcome, items: Iterable[Incoming | TimeoutFired]) -> None:
        """Before the engine sees any of `items`: a message of our own key among them, relayed by a peer,
        is our own from before a restart (a peer relays what it holds of the height in progress to a
        peer seen restarted, in one batch), which our record of what we signed must cover.

        Only a message whose signature verifies counts: anyone can put our key on a message, and a
        hold costs the network this validator's votes for heights, so an unsigned claim must not buy
        one (the engine then rejects it as it rejects any bad signature)."""
        me = self.svc.key.public_key
        for item in items:
            if not isinstance(item, Incoming):
                continue
            m = item.message
            if sender(m) == me and m.signature_valid(self.svc.chain_id) and self._signed_beyond_record(
                    out, _position(m), m.height, f"a peer relayed a {describe(m)} of this validator's key"):
                return

    def _feed(self, out: _Outcome, incoming: Incoming) -> None:
        assert self.engine is not None
        current = incoming.message.height == self.engine.height and not self.engine.decided
        actions = self.engine.on_message(incoming.message)
        if current and not any(isinstance(a, Rejected) for a in actions):
            out.accepted.append(incoming)
        self._absorb(out, actions)

    def _absorb(self, out: _Outcome, actions: list[Action]) -> None:
        """On the worker thread: make RecordSigned and evidence durable, encode own messages.

        Runs before the loop sees any of `actions`, so what we signed is on disk before it is sent.
        """
        durable: dict[bytes, bytes] = {}
        signed = [a for a in actions if isinstance(a, RecordSigned)]
        if signed:
            state = self.signed = signed[-1].state  # states only move forward: the newest covers the rest
            durable[SIGNED_KEY] = state.encode()
        sends: dict[int, _Send] = {}
        for i, a in enumerate(actions):
            if isinstance(a, Broadcast):
                raw = encode_message(a.message)
                sends[i] = _Send(a.message, raw, sha256(raw))
                if isinstance(a.message, Proposal):
                    self.own_proposal = a.message
                    durable[PROPOSAL_KEY] = raw
        if durable:
            self.store.put_meta_many(durable)
        if signed:
            # After the database, never before: the database's batch also holds our proposal with its
            # block. A file ahead of it after a crash between the two would lock the restarted node on a
            # block it no longer has, which a lone validator can never re-propose.
            write_signed_file(self.svc.config.signed_path, self.svc.chain_id, self.svc.key.public_key, state)
        for i, a in enumerate(actions):
            if isinstance(a, Broadcast):
                out.actions.append(sends[i])
            elif isinstance(a, Evidence | ConflictingProposals):
                self._store_evidence(a)
                out.actions.append(a)
                first = a.vote_a if isinstance(a, Evidence) else a.proposal_a
                if sender(first) == self.svc.key.public_key:
                    # Two conflicting messages of our own key: another process signs with it, or a copy
                    # of this one signed before and its message reached us after ours (see
                    # `_signed_beyond_record`). Sign no more where it may also be signing.
                    e = self.engine
                    if e is not None and not (e.signed_state is not None and e.signed_state.is_hold
                                              and e.signed_state.height > first.height):
                        self._hold_back(out, _position(first), first.height,
                                        f"a {describe(first)} of this validator's key conflicts with another it signed")
            elif not isinstance(a, RecordSigned):
                out.actions.append(a)

    def _store_evidence(self, a: Evidence | ConflictingProposals) -> None:
        piece = piece_of(a)
        self.store.put_meta(piece.key, piece.raw)

    def _gossip_evidence(self, a: Evidence | ConflictingProposals) -> None:
        if self.outbox is not None:
            self.outbox.evidence(piece_of(a), None)

    async def _carry_out(self, outcome: _Outcome) -> None:
        loop = asyncio.get_running_loop()
        decide: Decide | None = None
        for incoming in outcome.accepted:
            if self.outbox is not None:
                self.outbox.accepted(incoming.message, incoming.raw, incoming.digest)
        for a in outcome.actions:
            if isinstance(a, _Send):
                if self.outbox is not None:
                    self.outbox.broadcast(a.message, a.raw, a.digest)
                log.debug("event=signed %s", describe(a.message))
            elif isinstance(a, ScheduleTimeout):
                self._schedule(loop, a)
            elif isinstance(a, Decide):
                decide = a
            elif isinstance(a, Evidence):
                self._gossip_evidence(a)
                self.svc.metrics.evidence += 1
                log.warning("event=evidence kind=vote height=%d round=%d validator=%s first=%s second=%s",
                            a.vote_a.height, a.vote_a.round, keys.did_from_public_key(a.vote_a.validator),
                            describe(a.vote_a), describe(a.vote_b))
            elif isinstance(a, ConflictingProposals):
                self._gossip_evidence(a)
                self.svc.metrics.evidence += 1
                log.warning("event=evidence kind=proposal height=%d round=%d proposer=%s",
                            a.proposal_a.height, a.proposal_a.round,
                            keys.did_from_public_key(a.proposal_a.proposer))
            elif isinstance(a, Rejected):
                log.debug("event=consensus_rejected reason=%r", a.reason)
        if self._refused:
            refused, self._refused = self._refused, []
            await self.svc.refuse(refused)
        self._log_round()
        if decide is not None:
            await self._commit_decided(decide)

    def _schedule(self, loop: asyncio.AbstractEventLoop, a: ScheduleTimeout) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            self._inbox.put_nowait(TimeoutFired(a.step, a.height, a.round))

        handle = loop.call_later(a.delay_s, fire)
        self._timers.add(handle)

    def _log_round(self) -> None:
        e = self.engine
        if e is None or not self.in_height or e.decided:
            return
        now = (e.height, e.round)
        if now != self._logged:
            if now[0] == self._logged[0]:
                vals = e.validators
                log.info("event=round_started height=%d round=%d step=%s proposer=%s", e.height, e.round,
                         e.step_name, keys.did_from_public_key(proposer_of(vals, e.height, e.round))[-8:])
            self._logged = now

    # --- the application's side of the engine (worker thread) ----------------------------------------
    def _get_value(self, h: int, r: int) -> Block | None:
        own = self.own_proposal
        if own is not None and (own.height, own.round) == (h, r):
            return own.value  # restarted after proposing: the same block, or we may not sign again
        txs = self.svc.mempool.take(self.block_txs, max_bytes=self.svc.config.limits.max_body_bytes)
        heartbeat_due = self.heartbeat_s > 0 and time.monotonic() >= self._last_block_at + self.heartbeat_s
        if not txs and r == 0 and not heartbeat_due:
            return None  # nothing of ours to propose: let a validator with transactions propose
        parent = self.store.latest_header()
        parent_time = parent.time if parent is not None else self.store.genesis.genesis_time
        t = max(now_ms(), parent_time + 1)
        last_cert = self.store.cert(h - 1) if h > 1 else None
        block, result = self.store.make_block(txs, t, r, self.svc.key.public_key, last_cert)
        if result.rejected:
            self._refused.extend(result.rejected)
        if not result.applied and txs and r == 0 and not heartbeat_due:
            return None  # everything taken was refused; it leaves the mempool, and no empty block
        self._results[block.hash] = result
        log.info("event=proposing height=%d round=%d txs=%d refused=%d hash=%s", h, r, len(result.applied),
                 len(result.rejected), block.hash.hex()[:16])
        return block

    def _valid(self, value: Any) -> bool:
        if not isinstance(value, Block):
            return False
        hd = value.header
        if hd.height != self.store.height + 1:
            return False
        ahead = hd.time - now_ms()
        if ahead > self.max_drift_ms:
            # Not remembered: our clock catches up, and the engine asks again next round. A warning: the
            # proposer's clock or this node's is wrong, and the log names the proposer.
            log.warning("event=proposal_refused height=%d round=%d rule=header.time proposer=%s reason=%r",
                        hd.height, hd.round, keys.did_from_public_key(hd.proposer),
                        f"{ahead} ms ahead of this node's clock (at most {self.max_drift_ms})")
            return False
        block_hash = value.hash
        if block_hash in self._results:
            return True
        if block_hash in self._invalid:
            return False
        try:
            self._results[block_hash] = self._validate(value)
        except InvalidBlock as exc:
            self._invalid[block_hash] = str(exc)
            log.warning("event=proposal_refused height=%d round=%d rule=%s reason=%r", hd.height, hd.round,
                        exc.rule, str(exc))
            return False
        return True

    def _validate(self, block: Block) -> ExecutionResult:
        """validate_block, reusing what the mempool holds (signatures checked, transactions decoded) and
        the signatures admission checked lately; those it checks itself are remembered in turn."""
        svc = self.svc
        return self.store.validate_block(block, verified=_Either(svc.mempool, svc.verified_ids),
                                         known=svc.mempool.get, before_checks=svc.wait_admitted,
                                         signatures_checked=svc.remember_verified)

    # --- committing ------------------------------------------------------------------------------------
    async def _commit_decided(self, d: Decide) -> None:
        block = d.value
        assert isinstance(block, Block)
        result = await self._call(self._thread_commit, block, d.certificate)
        if result is not None:
            await self._after_commit(block, result, "consensus")

    def _thread_commit(self, block: Block, cert: CommitCertificate) -> ExecutionResult | None:
        h = block.header.height
        if self.store.height >= h:  # block sync got there first
            if self.store.block_hash(h) != block.hash:
                log.critical("event=fork height=%d decided=%s committed=%s", h, block.hash.hex(),
                             (self.store.block_hash(h) or b"").hex())
            return None
        result = self._results.get(block.hash) or self._validate(block)
        self.store.commit_block(block, cert, result)
        self._check_own_signatures(block, cert)
        self._results.clear()
        self._invalid.clear()
        return result

    async def _commit_synced(self, batch: SyncBatch) -> None:
        committed = 0
        try:
            for block, cert in batch.pairs:
                h = block.header.height
                if h <= self.store.height:
                    continue
                if h != self.store.height + 1:
                    raise SyncRefused(f"block {h} does not follow the committed height {self.store.height}")
                result = await self._call(self._thread_sync_commit, block, cert)
                await self._after_commit(block, result, "sync")
                committed += 1
        except SyncRefused as exc:
            if not batch.done.done():
                batch.done.set_exception(exc)
            return
        except BaseException:
            if not batch.done.done():
                batch.done.cancel()
            raise
        if not batch.done.done():
            batch.done.set_result(committed)

    def _thread_sync_commit(self, block: Block, cert: CommitCertificate) -> ExecutionResult:
        h = block.header.height
        try:
            if cert.height != h or cert.block != block.hash:
                raise SyncRefused(f"the certificate given with block {h} is for another block")
            # The certificate first: it is a few signatures, the block may be thousands of transactions.
            cert.verify(self.svc.chain_id, self.store.validators(h))
            result = self._results.get(block.hash) or self._validate(block)
            self._results[block.hash] = result
            e = self.engine
            if e is not None and e.height == h and not e.decided:
                # The height we were voting on is decided elsewhere: the engine learns it (its own checks
                # pass, the verdict is cached), so its pending timeouts for this height do nothing.
                e.on_commit(block, cert)
            self.store.commit_block(block, cert, result)
            self._check_own_signatures(block, cert)
        except ProofError as exc:
            raise SyncRefused(f"certificate of block {h}: {exc}") from None
        except InvalidBlock as exc:
            raise SyncRefused(f"block {h}: {exc}") from None
        # Any other StoreError is this node's own (a damaged or unwritable database), not the peer's:
        # it stops the node with the reason, as it does when met by consensus.
        self._results.clear()
        self._invalid.clear()
        return result

    def _check_own_signatures(self, block: Block, cert: CommitCertificate) -> None:
        """On the worker thread, after a commit: a certificate holding this validator's precommit from
        a later (height, round) than its record of what it signed (`_signed_beyond_record`)."""
        me = self.svc.key.public_key
        for c in (cert, block.last_cert):
            if c is not None and any(sig.validator == me for sig in c.sigs) and self._signed_beyond_record(
                    _Outcome(), (c.height, c.round, PRECOMMIT), c.height + 1,
                    "a certificate holds a precommit of this validator's key"):
                return

    def _signed_beyond_record(self, out: _Outcome, position: tuple[int, int, int], reached: int,
                              found: str) -> bool:
        """On the worker thread: our key signed at `position`, seen in a certificate or a peer's relay.
        If that is beyond our record of what we signed, the record is behind what the key signed: the
        data folder was restored from an older copy (or a second process signs with the key), and what
        was signed since is unknown, so signing there again could conflict: `_hold_back`. True if
        `position` was beyond the record."""
        e = self.engine
        if e is None:
            return False
        s = e.signed_state
        if s is not None and position <= s.position:
            return False
        self._hold_back(out, position, reached, f"{found} that its record of what it signed does not cover")
        return True

    def _hold_back(self, out: _Outcome, position: tuple[int, int, int], reached: int, found: str) -> None:
        """Sign nothing up to two heights above the height the peers report (as many of them as could
        be faulty, and one more: `reached_by_many`), nor at `reached`, the height the signer of
        `position` may have been working on. A copy that stopped signed only up to the height then in
        progress, at most one above the reported one. A lone validator is only told."""
        e = self.engine
        assert e is not None
        s = e.signed_state
        me = self.svc.key.public_key
        height, round_, step = position
        vals = self.store.validators(self.store.height + 1)
        reported = reached_by_many(self.peer_heights(), (len(vals) - 1) // 3)
        until = max(reported + 2, self.store.height + 2, reached + 1)
        recorded = f"h={s.height} r={s.round} {STEP_NAMES[s.step]}" if s is not None else "nothing"
        if tuple(vals) == (me,):
            # Alone, holding back would stop the chain for good; nobody else signs to conflict with.
            if not self._lone_beyond_record_said:
                self._lone_beyond_record_said = True
                log.warning("event=signed_beyond_record height=%d round=%d step=%s recorded=%r reason=%r",
                            height, round_, STEP_NAMES[step], recorded, f"{found} (this validator is the only one)")
            return
        log.critical("event=signed_beyond_record height=%d round=%d step=%s recorded=%r until_height=%d reason=%r",
                     height, round_, STEP_NAMES[step], recorded, until,
                     f"{found}: its data folder was restored from an older copy, or another process signs "
                     "with its key (stop it); it signs nothing below until_height")
        self._absorb(out, e.hold_back(until))

    async def _after_commit(self, block: Block, result: ExecutionResult, source: str) -> None:
        h = block.header.height
        self._check_clock(block, source)
        started = self._height_started_at if source == "consensus" else None
        self._height_started_at = None
        self._last_block_at = time.monotonic()
        self._early = {d: m for d, m in self._early.items() if m.message.height > h}
        await self.svc.after_commit(block, result, started, source)
        if self.outbox is not None:
            self.outbox.new_height(h)
        self._check_voted_in()
        if len(self.svc.mempool):
            await self.svc.recheck_mempool(result.state_writes, self.block_txs)
        # Left-over transactions have waited already: the next height starts at once.
        self._pending_since = float("-inf") if len(self.svc.mempool) else None

    def _check_clock(self, block: Block, source: str) -> None:
        """Warn (once a minute at most) when this node's clock seems wrong by more than a voter accepts.

        Behind: the network committed a block timed that far ahead of it. More than 2/3 of the
        authorities took that time, so it is this clock that is behind, and until it is set right this
        node refuses every proposal.
        Ahead: blocks of two or more other proposers in a row, committed by consensus as they were made,
        were timed that far behind it. Then the others refuse this node's proposals (timed too far ahead
        of them), and each height it should propose costs the network a timeout."""
        header = block.header
        ahead = header.time - now_ms()
        now = time.monotonic()
        if ahead > self.max_drift_ms and now >= self._clock_warned_at + CLOCK_WARNING_EVERY_S:
            self._clock_warned_at = now
            log.warning("event=clock_behind height=%d ms_behind=%d reason=%r", header.height, ahead,
                        "the network committed a block timed this far ahead of this node's clock: set the "
                        "clock right (NTP); until then this node refuses every proposal and does not vote")
        if source != "consensus" or header.proposer == self.svc.key.public_key:
            return
        if -ahead <= self.max_drift_ms:
            self._late_proposers.clear()
            return
        self._late_proposers.add(header.proposer)
        if len(self._late_proposers) >= 2 and now >= self._clock_ahead_warned_at + CLOCK_WARNING_EVERY_S:
            self._clock_ahead_warned_at = now
            log.warning("event=clock_ahead height=%d ms_ahead=%d reason=%r", header.height, -ahead,
                        "blocks of other proposers are timed this far behind this node's clock: set the "
                        "clock right (NTP); until then the others refuse this node's proposals")


def load_signed(raw: bytes | None) -> SignedState | None:
    """The persisted SignedState (None if this node never signed anything)."""
    if raw is None:
        return None
    try:
        return SignedState.decode(raw)
    except DecodeError as exc:
        raise StoreError(f"the stored consensus state (consensus/signed) is corrupt: {exc}") from None
