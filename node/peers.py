"""Peers and gossip: who this node talks to, the signed envelopes they exchange, and the queues between.

Protocol (all bodies canonical msgpack, ler.codec):

    POST /peer/v1/gossip      an envelope {"from": node key (32), "body": bytes, "sig": (64)}
                              sig = Ed25519 by `from` over
                                    ler.keys.signing_bytes("peer", chain_id, SHA-256(body))
                              body = {"boot": 8 random bytes per process start, "seq": the
                                      envelope's place in what the sender sent (below),
                                      "height": the sender's committed height, "url": where the
                                      sender listens, "proposals": [Proposal bytes],
                                      "votes": [Vote bytes], "txs": [transaction bytes],
                                      and, only when it carries some, "evidence": [pieces of
                                      evidence of equivocation, node/evidence.py]}
                              seq = max(the sender's clock in µs since 1970, its last seq + 1):
                              it grows with every envelope a process sends, whatever its clock does,
                              and a later process start begins above an earlier one's.
                              200 -> {"boot", "height"} of the receiver; 400 malformed, 403 unknown
                              sender or bad signature, 413 too large, 503 busy (retry later); every
                              refusal is JSON {"error": reason}.
    GET  /peer/v1/consensus?signer=K   the messages signed by key K (64 hex digits) of heights not yet
                              committed that this node holds: 200 -> {"height": its committed height,
                              "proposals": [Proposal bytes], "votes": [Vote bytes], "complete": false
                              if some were left out for size or dropped from a full log}; 400 for a
                              bad K. Public: each message carries its own signature.
    GET  /peer/v1/blocks?from=A&to=B   (node/sync.py) committed blocks with their certificates.

Who is known (may send us envelopes) is explained in node/config.py. An envelope from an unknown key
or with a bad signature is refused before anything in it is looked at. A peer that refuses ours so
(403) gets our clients' transactions at its public POST /v1/txs instead, until an envelope is taken.

Gossip: our own consensus messages go to every validator peer at once; messages of others that the
engine accepted are relayed by the repair tick (every `resend_s`) to the peers not known to have them
(a peer has a message if it sent it to us, or took it from us while working on that height; a peer
that restarts, seen by a new `boot`, is assumed to have nothing). An envelope whose `seq` is below the
highest seen from its sender (a copy of an earlier one, replayed by anyone who saw it) is still read
for what it carries, each item checked on its own, but moves nothing of what is known of the sender:
neither its process start nor its height. The tick also re-sends our own
latest votes of the height in progress to everyone, since a peer that was behind may have dropped
them. Transactions: one a client gave us goes to every peer. One learnt from a peer goes no further
unless `relay_txs` is on (then to every peer but the one it came from): where the authorities are all
peers of each other (the usual set-up, and the test network's) each already had it from its origin,
and relaying would deliver every transaction to every node three times over. A transaction that
misses a node (a link down) still commits: the nodes that have it propose it in their turn. A peer
keeps what it is gossiped only in memory, so the node a client gave a transaction to (the one that
stored it as pending) sends it again to a peer seen restarted, and to every peer while it stays
pending (`rebroadcast_s`): what an observer's clients submit commits only through its peers.
Consensus messages go only to peers that are validators of the message's height (or whose key we do
not know yet); transactions to all.

Sending and hearing are separate facts. A link is up (connected, in /health and /metrics) while what we
send to its URL is taken; the peer's own envelopes arriving only cut a back-off short, since they may come
while our sends to a mistyped URL go nowhere. Once the node at a configured URL answers, it is asked who
it is (its GET /v1/status names its key): a did in [peers] that is not that node's is named as such
(event=peer_key_mismatch), and the replies from that URL are then not taken for the configured peer's.

Each peer has two bounded outbound queues (consensus, transactions), each drained by its own task:
one request in flight per queue, items batched per request, on failure the items go back and the
task backs off exponentially (to `backoff_max_s`). A slow or dead peer only fills its own queues,
which drop their oldest items when full; it never delays another peer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from consensus import Proposal
from consensus.messages import Message, sender
from ler import codec, keys
from ler.block import Vote
from ler.errors import DecodeError, LerError
from ler.keys import sha256
from ler.tx import MAX_TX_BYTES, Tx
from node.client import json_or_none
from node.evidence import (
    EVIDENCE_PER_VALIDATOR,
    EVIDENCE_PREFIX,
    MAX_PIECE_BYTES,
    BadEvidence,
    Piece,
    height_prefix,
)
from node.evidence import check as check_evidence
from node.listener import expect_within, reading_body
from node.service import NodeService
from node.validator import ConsensusDriver, Incoming, decode_proposal

log = logging.getLogger("ler.peers")

PEER_DOMAIN = "peer"
#: Earlier process starts remembered per peer (to tell two processes with one key from restarts).
PAST_BOOTS = 8
#: A peer unreachable for this many of its longest back-offs ([gossip] backoff_max_s, 30 s by default) is
#: named in a WARNING, and again every UNREACHABLE_WARN_EVERY_S while it stays so.
UNREACHABLE_AFTER = 6
UNREACHABLE_WARN_EVERY_S = 600.0
SHARED_KEY_WARNING_EVERY_S = 60.0
#: A peer refusing our envelopes (4xx) is named in a WARNING when it starts, then at most this often.
REFUSED_WARN_EVERY_S = 60.0
MAX_ENVELOPE = codec.MAX_MESSAGE_BYTES + 256 * 1024  # one largest proposal and some votes
MAX_ITEMS = 20_000                                   # messages and transactions in one envelope
SEND_BYTES = 4 * 1024 * 1024                         # aim for envelopes about this size
SEND_TXS = 5000
CONSENSUS_QUEUE = 4096                               # items per peer
TX_QUEUE = 100_000
TX_QUEUE_BYTES = 32 * 1024 * 1024
LOG_LIMIT = 4096                                     # messages of the height in progress we keep
MAX_PEERS = 256
ASK_BYTES = MAX_ENVELOPE                             # messages in one answer to GET /peer/v1/consensus
HELLO_EVERY = 4                                      # resend ticks between hellos to a quiet peer
OK, RETRY, DROP = "ok", "retry", "drop"              # what became of one envelope
EVIDENCE_KEPT_FROM_PEERS = 64                        # pieces against one validator taken from peers
MAX_EVIDENCE = 256                                   # pieces of evidence in one envelope
EVIDENCE_SERVED = 256                                # latest pieces a peer's GET /peer/v1/evidence gets
EVIDENCE_FETCH_RETRY_S = 60.0                        # after a failed fetch of a peer's evidence
PASSED_OVER_SAID_EVERY_S = 60.0                      # evidence_passed_over at INFO, per peer
PASSED_OVER_REASONS = 10                             # distinct reasons named in that line
OWN_KEY_EVIDENCE_SHOWN_S = 3600.0                    # /health shows evidence against our key this long


class KeyUsedElsewhere(Exception):
    """Another running node signs with this node's key: this one stops rather than sign beside it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerRefusal(Exception):
    """A peer request this node refuses: HTTP `status` with `reason`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Item:
    height: int
    digest: bytes
    kind: str  # "proposals", "votes" or "evidence"
    raw: bytes


@dataclass(slots=True)
class _Logged:
    item: _Item
    signer: bytes
    own: bool
    at: float
    round: int
    is_vote: bool
    nil: bool


@dataclass(slots=True)
class PeerLink:
    """One peer: where it is, what we know of it, and its two outbound queues."""

    url: str
    key: bytes | None = None
    learnt: bool = False  # from the peer's own envelopes, not from our config
    boot: bytes | None = None
    height: int | None = None
    height_at: float = 0.0
    # Whether our last envelope to `url` was taken: what "connected" (/health, /metrics) counts. Hearing
    # from the peer is another fact (`heard_at`): its envelopes may arrive while ours to a mistyped URL
    # go nowhere.
    connected: bool = False
    ever_connected: bool = False
    heard_at: float = float("-inf")
    heard_url: str = ""  # where the peer's last envelope said it listens
    last_sent: float = 0.0
    last_error: str = ""
    known: set[bytes] = field(default_factory=set)
    queued: set[bytes] = field(default_factory=set)
    cq: deque[_Item] = field(default_factory=deque)
    tq: deque[bytes] = field(default_factory=deque)
    tq_bytes: int = 0
    c_ready: asyncio.Event = field(default_factory=asyncio.Event)
    t_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the peer shows it is up (it sent us something): a sender backing off retries at once
    # (once per back-off: see `Network._send_forever`).
    c_revived: asyncio.Event = field(default_factory=asyncio.Event)
    t_revived: asyncio.Event = field(default_factory=asyncio.Event)
    hello_due: bool = True
    # The peer refused our envelopes as from an unknown sender (403): it does not list this node (an
    # observer its operators did not add). Transactions then go to its public API, like a client's.
    public_only: bool = False
    # Whether the peer's public API serves this node's chain (its genesis hash), once asked: None until
    # then. A peer of another chain gets no transaction through it (they would be a foreign ledger's).
    same_chain: bool | None = None

    # The peer's earlier process starts (a few), and when we last warned that two processes share its key.
    past_boots: deque[bytes] = field(default_factory=lambda: deque(maxlen=PAST_BOOTS))
    shared_warned_at: float = float("-inf")
    # The highest envelope `seq` seen from the peer (see the module's docstring).
    latest_seq: int = -1
    # Since when every attempt to reach the peer failed (None while it answers), and when that was last
    # worth a WARNING (`Network._down`).
    down_since: float | None = None
    unreachable_warned_at: float = float("-inf")
    # The key of the node that answers at `url`, by its GET /v1/status (None until it told), and when it
    # was last asked (`Network._check_identity`): a configured did that is not this one is a mistake in
    # [peers], not two processes sharing a key.
    answers_as: bytes | None = None
    identity_asked_at: float = float("-inf")
    # When a refusal of our envelopes (4xx) was last worth a WARNING, and how many came since.
    refused_warned_at: float = float("-inf")
    refused_since_warned: int = 0
    # The peer's process start whose evidence this node fetched (`Network._fetch_evidence_due`), and
    # when a failed fetch may be tried again.
    evidence_of: bytes | None = None
    evidence_retry_at: float = float("-inf")

    @property
    def did(self) -> str:
        return keys.did_from_public_key(self.key) if self.key else "?"

    @property
    def misnamed(self) -> bool:
        """Whether the node at `url` answers under another key than the one we know this peer by."""
        return self.answers_as is not None and self.answers_as != self.key

    def _shared_key(self) -> None:
        now = time.monotonic()
        if now >= self.shared_warned_at + SHARED_KEY_WARNING_EVERY_S:
            self.shared_warned_at = now
            log.warning("event=peer_key_shared url=%s peer=%s reason=%r", self.url, self.did,
                        "two running nodes send as this peer, with its key (a copied data folder?): both "
                        "may sign votes as that authority, and conflicting ones are evidence against it; "
                        "its operator must stop one")

    def fresh(self, boot: bytes, seq: int) -> bool:
        """Whether an envelope of `seq` from process start `boot` is news: above every seq seen from this
        peer before (or that very seq again from the current process start, a retry). Only then may it move
        what is known of the peer: a replayed copy of an old envelope would otherwise pass for a restart
        (and a later genuine one for a second process with the same key), or pull its height back."""
        if seq > self.latest_seq or (seq == self.latest_seq and boot == self.boot):
            self.latest_seq = seq
            return True
        return False

    def observe(self, boot: bytes | None, height: int) -> bool:
        """Note the peer's process start and height; True if it has restarted since last seen.

        A process start seen before, replaced since, cannot come back: two processes are sending as this
        peer, with one key (a copied data folder, say). That is no restart, and is said in a warning."""
        restarted = False
        if boot is not None and boot != self.boot:
            if self.boot is not None:
                if boot in self.past_boots:
                    self._shared_key()
                else:
                    log.info("event=peer_restarted url=%s", self.url)
                    restarted = True
                self.past_boots.append(self.boot)
            self.boot = boot
            self.known.clear()  # a restarted peer remembers nothing of the height in progress
        self.height = height
        self.height_at = time.monotonic()
        return restarted


class Network:
    """The peer set and gossip. `run()` owns the HTTP client session and every per-peer task."""

    def __init__(self, svc: NodeService, driver: ConsensusDriver) -> None:
        self.svc = svc
        self.store = svc.store
        self.driver = driver
        self.chain_id = svc.chain_id
        cfg = svc.config
        self.settings = cfg.gossip
        self.my_key = svc.key.public_key
        self.my_url = cfg.advertised_url
        self.boot = os.urandom(8)
        self._seq = 0  # the last envelope's seq
        self._started_us = time.time_ns() // 1000  # no envelope of this process has a seq below it
        # Set when an envelope signed with this node's own key comes from another running process.
        self.key_elsewhere = asyncio.Event()
        self.key_elsewhere_reason = ""
        self.links: dict[str, PeerLink] = {}
        self.configured_keys: set[bytes] = set()
        for spec in cfg.peer_nodes:
            if spec.url == self.my_url:
                continue
            key = keys.public_key_from_did(spec.did) if spec.did else None
            if key == self.my_key:
                continue
            self.links[spec.url] = PeerLink(url=spec.url, key=key)
            if key is not None:
                self.configured_keys.add(key)
        self._log: OrderedDict[bytes, _Logged] = OrderedDict()
        # The last committed height's messages: a peer still deciding it gets them (a commit needs only
        # the proposal and the precommits), rather than waiting to notice it must fetch the block.
        self._prev: dict[bytes, _Logged] = {}
        self._known_cache: tuple[int, frozenset[bytes]] = (-1, frozenset())
        self._dropped_up_to = 0  # the highest height of a message the full log dropped
        self._committed = asyncio.Event()  # set at each commit (consensus or sync): `_ask_own` waits on it
        self._session: aiohttp.ClientSession | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._ticks = 0
        # Own clients' pending transactions as of the last rebroadcast pass (see `_rebroadcast`).
        self._pending_seen: frozenset[bytes] = frozenset()
        self._rebroadcast_at = time.monotonic() + self.settings.rebroadcast_s
        self.on_height_seen: list[Callable[[int], None]] = []  # told each height a peer reports
        self._kept: dict[bytes, int] | None = None  # evidence stored per validator (`_evidence_kept`)
        self._evidence_lock = threading.Lock()
        # Evidence against this node's own key that peers handed on: its highest height, and when the last
        # came (`_own_key_evidence`).
        self._own_key_evidence_height = 0
        self._own_key_evidence_at = float("-inf")
        self._passed_over_said: dict[bytes, float] = {}  # per peer key: see `_take_evidence`
        svc.tx_listeners.append(self.broadcast_txs)

    # --- who is who ------------------------------------------------------------------------------------
    def known_keys(self) -> frozenset[bytes]:
        """Keys whose envelopes we accept: configured peers, authorities, validators of the next heights."""
        h = self.store.height
        if self._known_cache[0] != h:
            known = set(self.configured_keys)
            known.update(self.store.get_authorities().keys)
            known.update(self.store.validators(h + 1))
            known.update(self.store.validators(h + 2))
            known.discard(self.my_key)
            self._known_cache = (h, frozenset(known))
        return self._known_cache[1]

    def _wants_consensus(self, link: PeerLink, height: int) -> bool:
        if link.key is None:
            return True  # might be a validator; we cannot tell before it says who it is
        if not 1 <= height <= self.store.height + 2:
            return False
        return link.key in self.store.validators(height)

    @property
    def connected(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    # --- running -------------------------------------------------------------------------------------
    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as tg:
                self._session = session
                self._tg = tg
                for link in list(self.links.values()):
                    self._start_link(link)
                tg.create_task(self._repair_forever(), name="gossip-repair")
                if self.driver.listening:
                    tg.create_task(self.ask_own(), name="gossip-ask-own")
        finally:
            self._tg = None
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        return self._session

    def _start_link(self, link: PeerLink) -> None:
        assert self._tg is not None
        self._tg.create_task(self._send_forever(link, consensus=True), name=f"gossip-c {link.url}")
        self._tg.create_task(self._send_forever(link, consensus=False), name=f"gossip-t {link.url}")

    def _add_dynamic(self, url: str, key: bytes) -> PeerLink | None:
        if len(self.links) >= MAX_PEERS or self._tg is None or url == self.my_url:
            return None
        link = PeerLink(url=url, key=key, learnt=True)
        self.links[url] = link
        self._start_link(link)
        log.info("event=peer_learnt url=%s node=%s", url, link.did)
        return link

    # --- what the driver and the service hand us ---------------------------------------------------
    def broadcast(self, message: Message, raw: bytes, digest: bytes) -> None:
        entry = self._remember(message, raw, digest, own=True)
        for link in self.links.values():
            if self._wants_consensus(link, message.height):
                self._enqueue(link, entry.item)

    def accepted(self, message: Message, raw: bytes, digest: bytes) -> None:
        self._remember(message, raw, digest, own=False)

    def new_height(self, committed: int) -> None:
        self._committed.set()
        self._prev = {d: e for d, e in self._log.items() if e.item.height == committed}
        for digest in [d for d, e in self._log.items() if e.item.height <= committed]:
            del self._log[digest]
        for link in self.links.values():
            # What a peer has of the decided height no longer matters, except of the one just decided.
            link.known = {d for d in link.known if d in self._prev}
            if link.key is not None and not self._wants_consensus(link, committed + 1):
                # Observers and non-voting nodes follow by sync: tell them there is a new block.
                link.hello_due = True
                link.c_ready.set()

    def evidence(self, piece: Piece, source: bytes | None) -> None:
        item = _Item(piece.height, sha256(piece.raw), "evidence", piece.raw)
        for link in self.links.values():
            if source is None or link.key != source:
                self._enqueue(link, item)

    def broadcast_txs(self, txs: list[Tx], source: bytes | None) -> None:
        if source is not None and not self.settings.relay_txs:
            return
        for link in self.links.values():
            if source is not None and link.key == source:
                continue
            self._queue_txs(link, txs)

    def _queue_txs(self, link: PeerLink, txs: Iterable[Tx]) -> None:
        for tx in txs:
            if len(link.tq) >= TX_QUEUE or link.tq_bytes + len(tx.raw) > TX_QUEUE_BYTES:
                self.svc.metrics.gossip_dropped += 1
                continue
            link.tq.append(tx.raw)
            link.tq_bytes += len(tx.raw)
        link.t_ready.set()

    def _own_pending(self, ids: frozenset[bytes] | None = None) -> list[Tx]:
        """This node's clients' transactions still in the mempool (of `ids` if given), in arrival order
        (a signer's later transactions may depend on its earlier ones)."""
        ids = self.store.pending_ids() if ids is None else ids
        if not ids:
            return []
        pool = self.svc.mempool
        return [tx for tx_id in pool.all_ids() if tx_id in ids and (tx := pool.get(tx_id)) is not None]

    def _rebroadcast(self) -> None:
        """Own clients' transactions pending since the last pass go to every peer again. A peer keeps a
        gossiped transaction only in memory: one that lost it (a restart, a full pool) would otherwise
        never get it from us again, and what an observer's clients submit commits only through its
        peers. (An authority would propose its own in its turn; the copies cost a peer a lookup each.)"""
        pending = self.store.pending_ids()
        again = self._own_pending(pending & self._pending_seen)
        self._pending_seen = pending
        if again:
            log.info("event=txs_rebroadcast count=%d peers=%d", len(again), len(self.links))
            for link in self.links.values():
                self._queue_txs(link, again)

    def _peer_restarted(self, link: PeerLink) -> None:
        """A restarted peer lost the transactions we gave it that it had not committed: send ours again."""
        own = self._own_pending()
        if own:
            log.info("event=txs_resent url=%s count=%d", link.url, len(own))
            self._queue_txs(link, own)

    def _remember(self, message: Message, raw: bytes, digest: bytes, own: bool) -> _Logged:
        entry = self._log.get(digest)
        if entry is None:
            is_vote = isinstance(message, Vote)
            entry = _Logged(_Item(message.height, digest, "votes" if is_vote else "proposals", raw),
                            sender(message), own, time.monotonic(), message.round, is_vote,
                            is_vote and message.block is None)  # type: ignore[union-attr]
            self._log[digest] = entry
            while len(self._log) > LOG_LIMIT:
                oldest = next((d for d, e in self._log.items() if not e.own), None)
                if oldest is None:
                    break
                self._dropped_up_to = max(self._dropped_up_to, self._log[oldest].item.height)
                del self._log[oldest]
        return entry

    def _enqueue(self, link: PeerLink, item: _Item) -> None:
        if item.digest in link.queued:
            return
        if len(link.cq) >= CONSENSUS_QUEUE:
            old = link.cq.popleft()
            link.queued.discard(old.digest)
            self.svc.metrics.gossip_dropped += 1
        link.cq.append(item)
        link.queued.add(item.digest)
        link.c_ready.set()

    # --- the repair tick -------------------------------------------------------------------------------
    async def _repair_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resend_s)
            self._repair()

    def _repair(self) -> None:
        self._ticks += 1
        now = time.monotonic()
        self._fetch_evidence_due(now)
        if self.settings.rebroadcast_s > 0 and now >= self._rebroadcast_at:
            self._rebroadcast_at = now + self.settings.rebroadcast_s
            self._rebroadcast()
        current = self.store.height + 1
        entries = [e for e in self._log.values() if e.item.height >= current]
        latest_round = max((e.round for e in entries if e.own), default=-1)
        own_votes = [e for e in entries if e.own and e.is_vote and (not e.nil or e.round >= latest_round - 1)]
        for link in self.links.values():
            if self._prev and link.height == current - 2 and self._wants_consensus(link, current - 1):
                for e in self._prev.values():  # it is one height behind: help it decide that height
                    if e.item.digest not in link.known:
                        self._enqueue(link, e.item)
            if entries and self._wants_consensus(link, current):
                for e in entries:
                    if e.item.digest in link.known:
                        continue
                    if e.own or now - e.at >= self.settings.resend_s:
                        self._enqueue(link, e.item)
                if self.driver.in_height:
                    for e in own_votes:  # the peer may have dropped them while it was elsewhere
                        self._enqueue(link, e.item)
            if now - link.last_sent >= self.settings.resend_s * HELLO_EVERY:
                link.hello_due = True
                link.c_ready.set()

    # --- sending ---------------------------------------------------------------------------------------
    async def _send_forever(self, link: PeerLink, consensus: bool) -> None:
        ready = link.c_ready if consensus else link.t_ready
        revived = link.c_revived if consensus else link.t_revived
        backoff = 0.0
        revived_retry = False  # the last attempt was made early, on hearing from the peer
        while True:
            await ready.wait()
            ready.clear()
            while True:
                if consensus:
                    items = self._take_consensus(link)
                    if not items and not link.hello_due:
                        break
                    link.hello_due = False
                    outcome = await self._post_contained(link, items, [])
                    if outcome == RETRY:
                        self._requeue_consensus(link, items)
                else:
                    txs = self._take_txs(link)
                    if not txs:
                        break
                    outcome = await self._post_contained(link, [], txs)
                    if outcome == RETRY:
                        self._requeue_txs(link, txs)
                if outcome == OK:
                    backoff, revived_retry = 0.0, False
                    continue
                self.svc.metrics.gossip_failed += 1
                backoff = min(self.settings.backoff_max_s, max(0.05, backoff * 2))
                if revived_retry:
                    # Hearing from the peer did not make our envelopes reach it (a mistyped URL with the
                    # right did, say): wait this back-off out, or every envelope of its would bring a retry.
                    revived_retry = False
                    await asyncio.sleep(backoff)
                else:
                    revived.clear()
                    try:
                        async with asyncio.timeout(backoff):  # not wait_for (see node.daemon.cancelled)
                            await revived.wait()
                        revived_retry = True  # it seems back: try now rather than wait
                    except TimeoutError:
                        pass

    def _take_consensus(self, link: PeerLink) -> list[_Item]:
        items: list[_Item] = []
        size = evidence = 0
        floor = self.store.height  # the last committed height's messages may still help a slower peer
        while link.cq and len(items) < MAX_ITEMS:
            item = link.cq[0]
            if item.height < floor and item.kind != "evidence":  # long decided: the peer gets that block by
                # sync if it needs it (evidence of a decided height still proves its signer's fault)
                link.cq.popleft()
                link.queued.discard(item.digest)
                continue
            if items and size + len(item.raw) > SEND_BYTES:
                break
            if item.kind == "evidence":
                if evidence == MAX_EVIDENCE:
                    break  # the rest goes in the next envelope
                evidence += 1
            link.cq.popleft()
            link.queued.discard(item.digest)
            items.append(item)
            size += len(item.raw)
        return items

    def _requeue_consensus(self, link: PeerLink, items: list[_Item]) -> None:
        for item in reversed(items):
            if item.digest not in link.queued and len(link.cq) < CONSENSUS_QUEUE:
                link.cq.appendleft(item)
                link.queued.add(item.digest)

    def _take_txs(self, link: PeerLink) -> list[bytes]:
        txs: list[bytes] = []
        size = 0
        while link.tq and len(txs) < SEND_TXS:
            raw = link.tq[0]
            if txs and size + len(raw) > SEND_BYTES:
                break
            link.tq.popleft()
            link.tq_bytes -= len(raw)
            txs.append(raw)
            size += len(raw)
        return txs

    def _requeue_txs(self, link: PeerLink, txs: list[bytes]) -> None:
        for raw in reversed(txs):
            if len(link.tq) < TX_QUEUE:
                link.tq.appendleft(raw)
                link.tq_bytes += len(raw)

    def envelope(self, items: Iterable[_Item], txs: list[bytes]) -> bytes:
        self._seq = max(time.time_ns() // 1000, self._seq + 1)
        body: dict[str, Any] = {"boot": self.boot, "seq": self._seq, "height": self.store.height,
                                "url": self.my_url, "proposals": [], "votes": [], "txs": txs}
        for item in items:
            body.setdefault(item.kind, []).append(item.raw)
        raw_body = codec.encode(body)
        return codec.encode({"from": self.my_key, "body": raw_body,
                             "sig": sign_envelope(self.svc.key, self.chain_id, raw_body)})

    async def _post_contained(self, link: PeerLink, items: list[_Item], txs: list[bytes]) -> str:
        """`_post`, with any fault it meets kept to this peer: logged with its traceback, then treated as
        an unreachable peer (the items are kept and offered again after a back-off). A peer's answer,
        however strange, never stops the node."""
        try:
            return await self._post(link, items, txs)
        except Exception:
            log.exception("event=gossip_error peer=%s", link.url)
            self._down(link, "an answer this node could not handle (see the log)")
            return RETRY

    async def _post(self, link: PeerLink, items: list[_Item], txs: list[bytes]) -> str:
        """One envelope to one peer: OK (it took them), RETRY (keep the items) or DROP (give them up)."""
        session = self._session
        if session is None:
            return RETRY
        if txs and link.public_only:
            return await self._submit_public(session, link, txs)
        data = self.envelope(items, txs)
        link.last_sent = time.monotonic()
        try:
            async with session.post(link.url + "/peer/v1/gossip", data=data,
                                    headers={"Content-Type": "application/msgpack"}) as resp:
                payload = await read_response(resp, 64 * 1024)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._down(link, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return RETRY
        if status == 200:
            try:
                reply = codec.decode(payload, 1024)
                boot, height = reply["boot"], reply["height"]
                if not isinstance(boot, bytes) or not isinstance(height, int) or isinstance(height, bool):
                    raise DecodeError("boot and height expected")
            except (DecodeError, KeyError, TypeError) as exc:
                self._down(link, f"malformed reply: {exc}")
                return DROP
            await self._check_identity(session, link, "")
            self._up(link)
            link.public_only = False
            # The reply comes from whichever node listens at the URL: if that is not the peer we know by
            # this key, its process starts are not the peer's (mixing them would look like two processes
            # with the peer's key), and its envelopes tell the peer's.
            if not link.misnamed and link.observe(boot, height):
                self._peer_restarted(link)
            self._note_height(height)
            for item in items:
                if item.height <= height + 1:
                    link.known.add(item.digest)
            return OK
        reason = _error_text(payload) or f"HTTP {status}"
        if status == 403:
            await self._check_identity(session, link, reason)
        if status == 403 and not link.public_only:
            link.public_only = True  # until an envelope of ours is taken again (see above)
            log.info("event=peer_public_only url=%s reason=%r", link.url, reason)
            if txs:
                return await self._submit_public(session, link, txs)
        if status < 500:
            self._refused(link, status, reason)
        self._down(link, f"HTTP {status}: {reason}", answered=True)
        # 5xx (503: busy): the same items may go through later. A 4xx will not change by repeating
        # it (the peer does not know us, or finds the items malformed): drop them, still back off.
        return RETRY if status >= 500 else DROP

    async def _submit_public(self, session: aiohttp.ClientSession, link: PeerLink, txs: list[bytes]) -> str:
        """Transactions to a peer's public submission endpoint (POST /v1/txs), as a client sends them.

        For a peer that does not know this node's key: what a client gave us still reaches it, and
        the peer checks each transaction as it checks any client's. Only once its /v1/status has shown
        the peer serves this node's chain: a node of another network that happens to be listed (two local
        test networks, say) must not be handed this one's records."""
        if link.same_chain is None:
            try:
                async with session.get(link.url + "/v1/status", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    status = json_or_none(await read_response(resp, 64 * 1024)) if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self._down(link, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                return RETRY
            if not isinstance(status, dict) or not isinstance(status.get("genesis_hash"), str):
                return RETRY  # not a node answering as one: ask again later
            link.same_chain = status["genesis_hash"] == self.store.genesis_hash().hex()
            if not link.same_chain:
                log.warning("event=peer_other_chain url=%s genesis=%.64s ours=%s reason=%r", link.url,
                            status["genesis_hash"], self.store.genesis_hash().hex(),
                            "this peer serves another chain: no transaction goes to it; check [peers] in "
                            "config.toml")
        if not link.same_chain:
            return DROP
        try:
            async with session.post(link.url + "/v1/txs", data=codec.encode(txs),
                                    headers={"Content-Type": "application/msgpack"}) as resp:
                status = resp.status
                payload = await read_response(resp, 4 * 1024 * 1024)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._down(link, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return RETRY
        if status in (200, 202):
            return OK
        if status >= 500:
            return RETRY
        # 400: the peer refused every one of them (each reason is in the answer); nothing to retry.
        log.info("event=peer_refused_txs url=%s status=%d count=%d reason=%r", link.url, status, len(txs),
                 _error_text(payload)[:200])
        return DROP

    async def _check_identity(self, session: aiohttp.ClientSession, link: PeerLink, refused: str) -> None:
        """Ask the node answering at a configured peer's URL for its key (GET /v1/status names it), once it
        answers our envelopes, and warn if it is not the did [peers] gives for that URL.

        A did copied from another line of [peers] (or of nobody) otherwise shows in odd ways: the node at
        the URL takes our envelopes while those of the did's real node arrive from elsewhere, and their
        process starts mixed on one link would pass for two processes sharing a key (peer_key_shared),
        sending the operator after a copied data folder that does not exist. Asked once; again after
        SHARED_KEY_WARNING_EVERY_S if there was no answer, and every UNREACHABLE_WARN_EVERY_S (with the
        warning) while the mismatch lasts. `refused`: why the node refused our envelope, if it did."""
        if link.key is None or link.learnt:
            return  # no did configured, or known from the peer's own envelopes: nothing to check
        now = time.monotonic()
        if link.answers_as == link.key:
            return
        wait = UNREACHABLE_WARN_EVERY_S if link.misnamed else SHARED_KEY_WARNING_EVERY_S
        if now < link.identity_asked_at + wait:
            return
        link.identity_asked_at = now
        try:
            async with session.get(link.url + "/v1/status", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                status = json_or_none(await read_response(resp, 64 * 1024)) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return
        if not isinstance(status, dict) or status.get("genesis_hash") != self.store.genesis_hash().hex():
            return  # not a node of this chain answering as one (another chain's is named elsewhere)
        try:
            answers = keys.public_key_from_did(status.get("node", ""))
        except (LerError, ValueError):
            return
        link.answers_as = answers
        if answers == link.key:
            return
        log.warning("event=peer_key_mismatch url=%s configured=%s answers=%s our_envelopes=%s hint=%r",
                    link.url, link.did, keys.did_from_public_key(answers),
                    f"refused ({refused})" if refused else "taken",
                    f"the node at {link.url} has the key {keys.did_from_public_key(answers)}, not the did "
                    "[peers] gives for that URL: correct the peer's did in [peers] (config.toml) and restart; "
                    "meanwhile what this node sends there goes to that node, under the other's name")

    def _refused(self, link: PeerLink, status: int, reason: str) -> None:
        """The peer refused an envelope of ours (4xx). Worth an operator's eye (e.g. the peer does not list
        this node's did, node/config.py): one WARNING when it starts, then at most one every
        REFUSED_WARN_EVERY_S with the count since, whatever happened between (a peer restarting, or our
        transactions going to its public API, while it refuses our hellos every few seconds); the
        others at DEBUG."""
        now = time.monotonic()
        link.refused_since_warned += 1
        if now - link.refused_warned_at < REFUSED_WARN_EVERY_S:
            log.debug("event=peer_refused_us url=%s status=%d reason=%r", link.url, status, reason)
            return
        log.warning("event=peer_refused_us url=%s status=%d refused=%d reason=%r", link.url, status,
                    link.refused_since_warned, reason)
        link.refused_warned_at = now
        link.refused_since_warned = 0

    def _heard(self, link: PeerLink, url: str) -> None:
        """The peer sent us an envelope. That it is up says nothing of whether ours reach it at `link.url`
        (a mistyped URL with the right did), so it does not make the link "up"; it only cuts short a
        back-off, since a peer that was down and sends again is likely to take ours again too."""
        link.heard_at = time.monotonic()
        link.heard_url = url
        if not link.connected:
            link.c_revived.set()
            link.t_revived.set()

    def _up(self, link: PeerLink) -> None:
        """An envelope of ours was taken at `link.url` (the only thing that makes a link "up")."""
        if not link.connected:
            log.info("event=peer_up url=%s", link.url)
        link.connected = True
        link.ever_connected = True
        link.last_error = ""
        link.down_since = None

    def _down(self, link: PeerLink, reason: str, answered: bool = False) -> None:
        """A failed attempt to reach the peer. Said at INFO when a peer that answered stops; a peer that
        has not answered for UNREACHABLE_AFTER back-offs (never, say: a mistyped URL, a node not started)
        is worth an operator's eye: one WARNING, again every UNREACHABLE_WARN_EVERY_S while it lasts. A
        peer whose own envelopes keep arriving meanwhile runs: then the URL is what is wrong, and the
        warning says so (with the URL the peer gives for itself). `answered`: the node at the URL answered,
        refusing (4xx, named by `_refused`) or busy (5xx): it is not unreachable, whatever it says."""
        if link.connected or (not link.last_error and link.ever_connected):
            log.info("event=peer_down url=%s reason=%r", link.url, reason)
        elif reason != link.last_error:
            log.debug("event=peer_unreachable url=%s reason=%r", link.url, reason)
        link.connected = False
        link.last_error = reason
        now = time.monotonic()
        if answered:
            link.down_since = None
            return
        if link.down_since is None:
            link.down_since = now
        elif (now - link.down_since >= UNREACHABLE_AFTER * self.settings.backoff_max_s
              and now - link.unreachable_warned_at >= UNREACHABLE_WARN_EVERY_S):
            link.unreachable_warned_at = now
            heard = now - link.heard_at <= UNREACHABLE_AFTER * self.settings.backoff_max_s
            if heard:
                hint = (f"the peer is heard from (its envelopes arrive, saying it listens at {link.heard_url}) "
                        "but nothing this node sends to the configured URL reaches it: check the peer's URL "
                        "in [peers]")
            elif link.ever_connected:
                hint = ("it took this node's envelopes before: check that its node still runs and that the "
                        "network between lets this node reach it")
            else:
                hint = ("check the peer's URL in [peers] and that its node runs: nothing this node sends "
                        "reaches it")
            log.warning("event=peer_unreachable url=%s seconds=%.0f ever_answered=%s heard=%s reason=%r hint=%r",
                        link.url, now - link.down_since, link.ever_connected, heard, reason, hint)

    def _note_height(self, height: int) -> None:
        for callback in self.on_height_seen:
            callback(height)

    # --- receiving -------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.post("/peer/v1/gossip", self.handle_gossip, expect_handler=expect_within(MAX_ENVELOPE)),
                web.get("/peer/v1/consensus", self.handle_held),
                web.get("/peer/v1/evidence", self.handle_evidence)]

    # --- evidence a node did not see arrive (it was down, or its folder was made afresh) -------------
    def _fetch_evidence_due(self, now: float) -> None:
        """Fetch each peer's latest evidence once per process start of the peer (so once after this
        node starts, too), as soon as this node is at most one block behind the peer: a piece is
        checked against the validators of its height, known up to two heights past this node's. Gossip
        hands on only what is found while a node runs; a node rebuilt from peers would otherwise never
        learn of an equivocation from before."""
        if self._tg is None:
            return
        height = self.store.height
        for link in self.links.values():
            if (link.key is None or link.boot is None or link.boot == link.evidence_of or not link.connected
                    or link.height is None or link.height > height + 1 or now < link.evidence_retry_at):
                continue
            link.evidence_of = link.boot
            self._tg.create_task(self._fetch_evidence(link, link.key), name=f"evidence {link.url}")

    async def _fetch_evidence(self, link: PeerLink, key: bytes) -> None:
        try:
            await self._fetch_evidence_of(link, key)
        except Exception:  # whatever a peer's answer trips stays here, not in the task group of the node
            log.exception("event=evidence_fetch_error url=%s", link.url)

    async def _fetch_evidence_of(self, link: PeerLink, key: bytes) -> None:
        session = self._session
        if session is None:
            return
        try:
            async with session.get(f"{link.url}/peer/v1/evidence",
                                   timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s)) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                data = await read_response(resp, EVIDENCE_SERVED * MAX_PIECE_BYTES + 1024)
            obj = codec.decode(data, EVIDENCE_SERVED * MAX_PIECE_BYTES + 1024)
            pieces = obj.get("evidence") if isinstance(obj, dict) else None
            if not isinstance(pieces, list) or not all(isinstance(p, bytes) for p in pieces):
                raise ValueError("the answer is not a map with a list of pieces under evidence")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, LerError) as exc:
            link.evidence_of, link.evidence_retry_at = None, time.monotonic() + EVIDENCE_FETCH_RETRY_S
            log.debug("event=evidence_fetch_failed url=%s reason=%r", link.url, str(exc))
            return
        new = await asyncio.to_thread(self._take_fetched, pieces[:EVIDENCE_SERVED], key)
        if new:
            self.svc.metrics.evidence += len(new)
            log.warning("event=evidence_fetched url=%s count=%d heights=%s validators=%s", link.url, len(new),
                        sorted({p.height for p in new})[:20],
                        sorted({keys.did_from_public_key(p.who) for p in new})[:10])

    def _take_fetched(self, pieces: list[bytes], source: bytes) -> list[Piece]:
        """`_take_evidence` of what a peer holds, less the pieces stored here byte for byte: after every
        start of a peer most are, and their signatures need no second check."""
        held = {value for _, value in self.store.list_meta(EVIDENCE_PREFIX, 1 << 30)}
        return self._take_evidence([raw for raw in pieces if raw not in held], source)

    async def handle_evidence(self, request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(self.store.list_meta, EVIDENCE_PREFIX, EVIDENCE_SERVED, True)
        return web.Response(body=codec.encode({"evidence": [value for _, value in rows]}),
                            content_type="application/msgpack")

    # --- what a starting validator asks its peers ----------------------------------------------------
    async def ask_own(self) -> None:
        """At start, ask every peer that may be a validator for the messages of our key it holds (a
        folder restored from an older copy learns so what it signed since, node/validator.py), and end
        the driver's listening time once every other validator has answered, or is not running (nothing
        listens at its address: it holds nothing), and none is ahead of us; behind them, ask again
        once block sync has brought us level. A validator we reach by URL only, or not at all, cannot
        be told apart, so it leaves the listening its full length."""
        try:
            await self._ask_own()
        except Exception:  # whatever a peer's answer trips stays here: the listening runs its full length
            log.exception("event=ask_own_error")

    async def _ask_own(self) -> None:
        started = time.monotonic()
        deadline = started + self.driver.listen_s
        while time.monotonic() < deadline and self.driver.listening:
            height = self.store.height
            links = [link for link in self.links.values() if self._wants_consensus(link, height + 1)]
            answers = await asyncio.gather(*(self._ask_one(link) for link in links))
            unknown = sum(1 for a in answers if a is None)
            ahead = [a for a in answers if a is not None and a > height]
            told = {link.key for link, a in zip(links, answers, strict=True) if a is not None}
            unasked = len(set(self.store.validators(height + 1)) - told - {self.my_key})
            if not (unknown or ahead or unasked or self.store.height != height):
                log.info("event=peers_asked peers=%d running=%d ms=%d", len(links),
                         sum(1 for a in answers if a is not None and a >= 0), 1000 * (time.monotonic() - started))
                self.driver.listened(height)
                return
            if unknown or unasked or ahead:
                log.info("event=listen_on peers=%d no_answer=%d ahead=%d unasked=%d", len(links), unknown,
                         len(ahead), unasked)
            if unknown or unasked:
                return
            # Behind some (or we moved meanwhile): what they hold is of a height we have not reached. Once
            # block sync has brought us there, ask again, as long as the listening lasts.
            target = max(ahead, default=height)
            while True:
                self._committed.clear()
                if self.store.height >= target:
                    break
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await self._committed.wait()
                except TimeoutError:
                    return

    async def _ask_one(self, link: PeerLink) -> int | None:
        """Offer the driver what `link` holds of our key: its committed height, -1 if it is not running,
        None if it could not tell (no answer in time, a refusal, a malformed or incomplete answer)."""
        session = self._session
        if session is None:
            return None
        url = f"{link.url}/peer/v1/consensus?signer={self.my_key.hex()}"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=self.driver.listen_s)) as resp:
                if resp.status != 200:
                    return None
                data = await read_response(resp, ASK_BYTES + 1024)
        except aiohttp.ClientConnectorError as exc:
            return -1 if isinstance(exc.os_error, ConnectionRefusedError) else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None
        try:
            height, proposals, votes, complete = parse_held(data)
            messages = await asyncio.to_thread(decode_messages, proposals, votes)
        except PeerRefusal as exc:
            log.warning("event=peer_answer_malformed url=%s reason=%r", link.url, exc.reason)
            return None
        for message, raw, digest in messages:
            if sender(message) == self.my_key and not self.driver.offer(Incoming(message, raw, digest,
                                                                                 link.key or b"")):
                return None
        return height if complete else None

    async def handle_held(self, request: web.Request) -> web.Response:
        text = request.query.get("signer", "")
        if not _HEX64.fullmatch(text):
            return web.json_response({"error": "query parameter signer must be a key: 64 hex digits"}, status=400)
        signer = bytes.fromhex(text)
        body: dict[str, Any] = {"height": self.store.height, "proposals": [], "votes": [],
                                "complete": self._dropped_up_to <= self.store.height}
        size = 0
        for e in self._log.values():
            if e.signer != signer:
                continue
            if size + len(e.item.raw) > ASK_BYTES:
                body["complete"] = False
                break
            body[e.item.kind].append(e.item.raw)
            size += len(e.item.raw)
        return web.Response(body=codec.encode(body), content_type="application/msgpack")

    async def handle_gossip(self, request: web.Request) -> web.Response:
        try:
            return await self._gossip(request)
        except PeerRefusal as exc:
            self.svc.metrics.peer_rejected += 1
            log.debug("event=peer_refused status=%d reason=%r", exc.status, exc.reason)
            return web.json_response({"error": exc.reason}, status=exc.status)

    async def _gossip(self, request: web.Request) -> web.Response:
        raw = await read_limited(request, MAX_ENVELOPE)
        sender, body_raw, sig = parse_envelope(raw)
        if sender == self.my_key:
            if verify_envelope(sender, self.chain_id, body_raw, sig):
                self._own_key_seen(parse_body(body_raw), request.remote)
            raise PeerRefusal(400, "the envelope is from this node's own key")
        if sender not in self.known_keys():
            raise PeerRefusal(403, f"{keys.did_from_public_key(sender)} is not a known peer of this node")
        if not verify_envelope(sender, self.chain_id, body_raw, sig):
            raise PeerRefusal(403, "the envelope's signature does not verify for its sender's key")
        body = parse_body(body_raw)
        # Most envelopes under load carry transactions only: no thread hop for nothing to decode.
        messages = (await asyncio.to_thread(decode_messages, body["proposals"], body["votes"])
                    if body["proposals"] or body["votes"] else [])
        link = self._link_for(sender, body["url"])
        if link is not None:
            if not link.fresh(body["boot"], body["seq"]):
                log.debug("event=peer_envelope_stale url=%s seq=%d latest=%d", link.url, body["seq"],
                          link.latest_seq)
            elif link.observe(body["boot"], body["height"]):
                self._peer_restarted(link)
            self._heard(link, body["url"])
        self._note_height(body["height"])
        for message, item_raw, digest in messages:
            if not self.driver.offer(Incoming(message, item_raw, digest, sender)):
                raise PeerRefusal(503, "this node's consensus queue is full; retry shortly")
            if link is not None:
                link.known.add(digest)
            if isinstance(message, Vote):
                self.svc.metrics.votes_received += 1
            else:
                self.svc.metrics.proposals_received += 1
        if body.get("evidence"):
            for piece in await asyncio.to_thread(self._take_evidence, body["evidence"], sender):
                self.svc.metrics.evidence += 1
                origin = link.url if link else keys.did_from_public_key(sender)
                log.warning("event=evidence kind=%s height=%d round=%d step=%s validator=%s from=%s",
                            piece.kind, piece.height, piece.round, piece.step,
                            keys.did_from_public_key(piece.who), origin)
                if piece.who == self.my_key:
                    self._own_key_evidence(piece, origin)
                self.evidence(piece, sender)
        if body["txs"]:
            await self.svc.ingest(body["txs"], sender)
        return web.Response(body=codec.encode({"boot": self.boot, "height": self.store.height}),
                            content_type="application/msgpack")

    def _take_evidence(self, pieces: list[bytes], source: bytes) -> list[Piece]:
        """In a worker thread: check and store the pieces of evidence a peer sent; the ones new here.

        A piece that proves nothing is passed over (logged), not refused with the envelope: the
        validator set of its height may only be unknown to this node yet (it is behind), and the
        envelope's other items are good. A validator's pieces per height are capped as the engine caps
        its own (one proves the fault; a faulty validator could sign a pair for every round)."""
        new: list[Piece] = []
        passed_over: dict[str, int] = {}  # reason -> how many pieces
        for raw in pieces:
            try:
                piece = check_evidence(raw, self.chain_id, self.store.validators)
            except BadEvidence as exc:
                passed_over[str(exc)] = passed_over.get(str(exc), 0) + 1
                continue
            with self._evidence_lock:  # two envelopes may bring one piece at once: counted once
                if self.store.get_meta(piece.key) is not None:
                    continue
                held = sum(1 for k, _ in self.store.list_meta(height_prefix(piece.height), 4096)
                           if k.endswith(piece.who))
                kept = self._evidence_kept()
                if held >= EVIDENCE_PER_VALIDATOR or kept.get(piece.who, 0) >= EVIDENCE_KEPT_FROM_PEERS:
                    continue
                self.store.put_meta(piece.key, piece.raw)
                kept[piece.who] = kept.get(piece.who, 0) + 1
            new.append(piece)
        if passed_over:
            # One line per envelope, and at INFO at most once a minute per peer: a peer could otherwise
            # write a line per piece, thousands per envelope, into the log.
            now = time.monotonic()
            quiet = now - self._passed_over_said.get(source, float("-inf")) < PASSED_OVER_SAID_EVERY_S
            if not quiet:
                self._passed_over_said[source] = now
            reasons = sorted(passed_over.items(), key=lambda kv: -kv[1])[:PASSED_OVER_REASONS]
            log.log(logging.DEBUG if quiet else logging.INFO,
                    "event=evidence_passed_over from=%s count=%d reasons=%r", keys.did_from_public_key(source),
                    sum(passed_over.values()), [f"{n} x {why[:160]}" for why, n in reasons])
        return new

    def _evidence_kept(self) -> dict[bytes, int]:
        """Pieces stored per validator (counted from the database once): a faulty validator could sign
        conflicting pairs for every height it ever voted in, and have peers fill every node's disk with
        them. Past EVIDENCE_KEPT_FROM_PEERS pieces against one validator, more from peers prove nothing new."""
        if self._kept is None:
            kept: dict[bytes, int] = {}
            for k, _ in self.store.list_meta(EVIDENCE_PREFIX, 1 << 30):
                kept[k[-32:]] = kept.get(k[-32:], 0) + 1
            self._kept = kept
        return self._kept

    @property
    def own_key_evidence(self) -> int | None:
        """The highest height of evidence against this node's key handed on lately, for /health."""
        if time.monotonic() - self._own_key_evidence_at > OWN_KEY_EVIDENCE_SHOWN_S:
            return None
        return self._own_key_evidence_height

    def _own_key_evidence(self, piece: Piece, origin: str) -> None:
        """A peer handed on evidence against this node's own key: its key signed two conflicting messages,
        which this node never does, so another node signs with it, or did (a copied data folder or
        node.key; a folder restored from a copy that ran). Said at CRITICAL (once per process) and in
        /health until OWN_KEY_EVIDENCE_SHOWN_S after the last such piece. The node does not stop for it,
        unlike for an envelope of its own key made after it started (`_own_key_seen`): a piece may be of
        a height long past, and anyone holding one could replay it."""
        first = self._own_key_evidence_at == float("-inf")
        self._own_key_evidence_at = time.monotonic()
        self._own_key_evidence_height = max(piece.height, self._own_key_evidence_height)
        if first:
            log.critical("event=evidence_against_own_key height=%d round=%d step=%s from=%s reason=%r",
                         piece.height, piece.round, piece.step, origin,
                         "this node's key signed two conflicting messages, which this node never does: another "
                         "node signs with this key (a copied data folder or node.key?); find it and stop it, "
                         "or its votes beside this node's are evidence against this authority")

    def _own_key_seen(self, body: dict[str, Any], remote: str | None) -> None:
        """An envelope signed with this node's key: from this very process (a peer list naming this
        node's URL under another did, say), a copy of an old one (its seq is from before this process
        started), or another running node with this key, which for an authority means two processes
        signing votes as one authority. Those would conflict, and the conflicting votes are evidence
        against it: an authority stops rather than sign beside the other."""
        if body["boot"] == self.boot or body["seq"] <= self._started_us or self.key_elsewhere_reason:
            return  # (said once: an observer goes on, and would otherwise say it for every envelope)
        self.key_elsewhere_reason = (
            f"another running node signs with this node's key ({keys.did_from_public_key(self.my_key)}): an "
            f"envelope from it came from {remote or 'an unknown address'}, saying it is at {body['url']}. Two "
            "nodes with one authority key sign conflicting votes, which are evidence against that authority; "
            "this node stopped so as not to. Give each node its own key (a copied data folder carries its "
            "node.key), then start this one again")
        if self.svc.config.role == "authority":
            log.critical("event=key_used_elsewhere url=%s remote=%s reason=%r", body["url"], remote,
                         self.key_elsewhere_reason)
            self.key_elsewhere.set()
        else:  # an observer signs no votes: it goes on, and says so
            log.warning("event=key_used_elsewhere url=%s remote=%s reason=%r", body["url"], remote,
                        "another running node signs with this node's key: give each node its own key")

    def _link_for(self, key: bytes, url: str) -> PeerLink | None:
        """The link an envelope from `key`, saying it listens at `url`, belongs to: the one of that key
        and URL, else one of that key (a peer configured under another URL for it, or a second process
        with its key). Where [peers] gives one did for two URLs (a did copied from a neighbouring line),
        the peer's envelopes stay with its own URL's link, not with the misnamed one."""
        by_key = None
        for link in self.links.values():
            if link.key == key:
                if link.url == url:
                    return link
                by_key = by_key or link
        if by_key is not None:
            return by_key
        by_url = self.links.get(url)
        if by_url is not None:
            if by_url.key is None:
                by_url.key = key  # a peer configured by URL only has now said who it is
                return by_url
            return None  # that URL belongs to another key in our config: keep ours
        return self._add_dynamic(url, key)


# --- decoding what peers send (pure functions, so they can be tested without a server) ---------------

async def read_response(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """A peer's whole answer; ValueError past `limit` bytes (a peer cannot make us hold more)."""
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        buf += chunk
        if len(buf) > limit:
            raise ValueError(f"the answer is larger than {limit} bytes")
    return bytes(buf)


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (read in chunks; nothing larger is held)."""
    if request.content_length is not None and request.content_length > limit:
        raise PeerRefusal(413, f"request body too large (limit {limit} bytes)")
    data = bytearray()
    async with reading_body(request):
        async for chunk in request.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > limit:
                raise PeerRefusal(413, f"request body too large (limit {limit} bytes)")
    if not data:
        raise PeerRefusal(400, "empty request body; expected a peer envelope (msgpack)")
    return bytes(data)


def sign_envelope(key: keys.KeyPair, chain_id: str, body: bytes) -> bytes:
    """An envelope's signature: over the body's SHA-256, not the body itself.

    Ed25519 hashes what it signs twice (and verifying once more) with SHA-512 in software; a body
    holding a proposal is hundreds of kilobytes and goes to each peer in an envelope of its own.
    One SHA-256 pass (in hardware on most machines) binds the body as firmly.
    """
    return key.sign_payload(PEER_DOMAIN, chain_id, sha256(body))


def verify_envelope(sender: bytes, chain_id: str, body: bytes, sig: bytes) -> bool:
    return keys.verify_signed(sender, PEER_DOMAIN, chain_id, sha256(body), sig)


def parse_envelope(raw: bytes) -> tuple[bytes, bytes, bytes]:
    try:
        env = codec.decode(raw, MAX_ENVELOPE)
    except DecodeError as exc:
        raise PeerRefusal(400, f"malformed envelope: {exc}") from None
    if not isinstance(env, dict) or set(env) != {"from", "body", "sig"}:
        raise PeerRefusal(400, "an envelope is a map of exactly from, body and sig")
    sender, body, sig = env["from"], env["body"], env["sig"]
    if not isinstance(sender, bytes) or len(sender) != 32:
        raise PeerRefusal(400, "envelope.from must be a 32-byte node key")
    if not isinstance(body, bytes):
        raise PeerRefusal(400, "envelope.body must be bytes")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise PeerRefusal(400, "envelope.sig must be a 64-byte signature")
    return sender, body, sig


BODY_FIELDS = {"boot", "seq", "height", "url", "proposals", "votes", "txs"}


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = codec.decode(raw, MAX_ENVELOPE)
    except DecodeError as exc:
        raise PeerRefusal(400, f"malformed envelope body: {exc}") from None
    if not isinstance(body, dict) or not BODY_FIELDS <= set(body) <= BODY_FIELDS | {"evidence"}:
        raise PeerRefusal(400, f"an envelope body is a map of exactly {', '.join(sorted(BODY_FIELDS))}, and "
                               "evidence if it carries some")
    if not isinstance(body["boot"], bytes) or len(body["boot"]) != 8:
        raise PeerRefusal(400, "body.boot must be 8 bytes")
    h = body["height"]
    if not isinstance(h, int) or isinstance(h, bool) or h < 0:
        raise PeerRefusal(400, "body.height must be a height")
    seq = body["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**64:
        raise PeerRefusal(400, "body.seq must be an integer from 0 to 2^64 - 1")
    url = body["url"]
    if not isinstance(url, str) or len(url) > 300 or not _is_http_url(url):
        raise PeerRefusal(400, "body.url must be the sender's http(s) URL")
    for name in ("proposals", "votes", "txs"):
        items = body[name]
        if not isinstance(items, list) or not all(isinstance(x, bytes) for x in items):
            raise PeerRefusal(400, f"body.{name} must be a list of byte strings")
    evidence = body.get("evidence", [])
    if not isinstance(evidence, list) or not all(isinstance(x, bytes) for x in evidence):
        raise PeerRefusal(400, "body.evidence must be a list of byte strings")
    if len(evidence) > MAX_EVIDENCE:
        raise PeerRefusal(413, f"more than {MAX_EVIDENCE} pieces of evidence in one envelope")
    if any(len(x) > MAX_PIECE_BYTES for x in evidence):
        raise PeerRefusal(400, f"a piece of evidence is larger than {MAX_PIECE_BYTES} bytes")
    if len(body["proposals"]) + len(body["votes"]) + len(body["txs"]) + len(evidence) > MAX_ITEMS:
        raise PeerRefusal(413, f"more than {MAX_ITEMS} items in one envelope")
    if any(len(t) > MAX_TX_BYTES for t in body["txs"]):
        raise PeerRefusal(400, f"a transaction in body.txs is larger than {MAX_TX_BYTES} bytes")
    return body


def parse_held(raw: bytes) -> tuple[int, list[bytes], list[bytes], bool]:
    """An answer to GET /peer/v1/consensus: (height, proposals, votes, complete); PeerRefusal if it is
    malformed."""
    try:
        body = codec.decode(raw, ASK_BYTES + 1024)
    except DecodeError as exc:
        raise PeerRefusal(400, f"malformed answer: {exc}") from None
    if not isinstance(body, dict) or set(body) != {"height", "proposals", "votes", "complete"}:
        raise PeerRefusal(400, "an answer is a map of exactly height, proposals, votes and complete")
    h = body["height"]
    if not isinstance(h, int) or isinstance(h, bool) or h < 0:
        raise PeerRefusal(400, "height must be a height")
    for name in ("proposals", "votes"):
        items = body[name]
        if not isinstance(items, list) or not all(isinstance(x, bytes) for x in items):
            raise PeerRefusal(400, f"{name} must be a list of byte strings")
    if not isinstance(body["complete"], bool):
        raise PeerRefusal(400, "complete must be true or false")
    return h, body["proposals"], body["votes"], body["complete"]


def decode_messages(proposals: list[bytes], votes: list[bytes]) -> list[tuple[Message, bytes, bytes]]:
    """Decode every consensus message (strictly); PeerRefusal 400 naming the first bad one."""
    out: list[tuple[Message, bytes, bytes]] = []
    for i, raw in enumerate(proposals):
        try:
            p: Proposal = decode_proposal(raw)
        except (LerError, ValueError) as exc:
            raise PeerRefusal(400, f"body.proposals[{i}]: {exc}") from None
        out.append((p, raw, sha256(raw)))
    for i, raw in enumerate(votes):
        try:
            v = Vote.decode(raw)
        except (LerError, ValueError) as exc:
            raise PeerRefusal(400, f"body.votes[{i}]: {exc}") from None
        out.append((v, raw, sha256(raw)))
    return out


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_http_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _error_text(payload: bytes) -> str:
    obj = json_or_none(payload)
    return str(obj.get("error", "")) if isinstance(obj, dict) else ""
