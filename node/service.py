"""The node's core, without HTTP or consensus: the chain store, the mempool, and what enters and leaves it.

Submission: a transaction is decoded, checked once (chain id, signature), tried against the committed
state (so a broken rule is answered at once, not after a block), written to the store's durable
pending set, and only then acknowledged. A node killed after acknowledging reloads it on restart.
Transactions from peers (gossip) pass the same checks (signature once, dry run) but are not made
durable: this node acknowledged them to nobody, and the peer that did keeps them.

Blocks are made and agreed on by the consensus driver (node/validator.py), for one authority as for
many; block sync (node/sync.py) commits blocks learnt from peers through the same driver. After every
commit `after_commit` removes the block's transactions from the mempool, re-checks what is left
against the new state (dropping what the block made invalid) and answers the clients waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ler.block import MAX_BLOCK_TXS, Block
from ler.errors import DecodeError, LerError, RuleError
from ler.keys import KeyPair, public_key_from_did, sha256
from ler.ledger import Context, apply_tx, check_tx, clock_dependent
from ler.state import StateView
from ler.tx import MAX_TX_BYTES, Tx
from node.config import NodeConfig
from node.mempool import Mempool, MempoolFull
from node.metrics import Metrics
from storage.chain import ChainStore, ExecutionResult, write_buffer_mb_for

log = logging.getLogger("ler.node")

PENDING, COMMITTED, REJECTED = "pending", "committed", "rejected"
_REJECTED_MEMORY = 100_000
#: Transaction ids kept in NodeService.verified_ids: the checks of the last few seconds under full load.
VERIFIED_IDS = 2 * MAX_BLOCK_TXS
#: The longest block validation waits for admission to finish checking transactions it also holds.
ADMISSION_WAIT_S = 1.0

#: No block for this many heartbeats (when `[blocks] heartbeat_s` is set) is a stall, not a slow height.
STALL_HEARTBEATS = 3

#: Called with transactions newly in the mempool and the peer key they came from (None: a client).
TxListener = Callable[[list[Tx], bytes | None], None]


@dataclass(slots=True)
class SubmitResult:
    tx_id: bytes | None
    status: str
    height: int | None = None
    index: int | None = None
    error: str | None = None
    rule: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"id": self.tx_id.hex() if self.tx_id else None, "status": self.status, "height": self.height,
                "index": self.index, "error": self.error, "rule": self.rule}


class _ReadRecorder:
    """A StateView that notes the keys read through it (what one transaction's check depends on)."""

    __slots__ = ("base", "keys")

    def __init__(self, base: StateView) -> None:
        self.base = base
        self.keys: set[bytes] = set()

    def get(self, key: bytes) -> bytes | None:
        self.keys.add(key)
        return self.base.get(key)

    def set(self, key: bytes, value: bytes | None) -> None:  # pragma: no cover - always overlaid
        raise RuntimeError("the committed state is read-only here")


def now_ms() -> int:
    return int(time.time() * 1000)


class NodeService:
    def __init__(self, config: NodeConfig, key: KeyPair) -> None:
        self.config = config
        self.key = key
        self.genesis = config.load_genesis()
        self.store = ChainStore(config.db_path, self.genesis, write_buffer_mb_for(
            key.public_key, [public_key_from_did(a.did) for a in self.genesis.authorities]))
        self.chain_id = self.genesis.chain_id
        self.mempool = Mempool(config.limits.mempool_txs, config.limits.mempool_bytes)
        self.metrics = Metrics()
        self.tx_listeners: list[TxListener] = []
        self._committed = asyncio.Condition()
        self._rejected: OrderedDict[bytes, tuple[str, str]] = OrderedDict()
        self._rejected_lock = threading.Lock()
        # Admission has threads of its own: a flood of transactions must not keep the shared pool
        # (which decodes proposals and votes) from consensus work.
        self._admission = ThreadPoolExecutor(2, thread_name_prefix="admission")
        self._stopping = False
        self.started = time.monotonic()
        self.last_commit_ms: float | None = None
        #: When this node last committed a block (by consensus or sync), else when it started.
        self.last_block_at = self.started
        # Ids of transactions whose signatures this node checked lately, by admission (before the
        # transaction reaches the mempool) or by block validation (a proposal that outran their gossip):
        # whichever comes second finds the id here, or in the mempool, and does not check it again.
        self.verified_ids: OrderedDict[bytes, None] = OrderedDict()
        self._verified_lock = threading.Lock()  # admission threads and the consensus thread all add
        # Ids an admission thread is checking now: block validation waits for those instead of checking
        # the same signatures at the same time (a proposal and the gossip of its transactions often
        # arrive together, in the same order).
        self._admitting: dict[bytes, int] = {}
        self._admitted = threading.Condition()

    def remember_verified(self, tx_ids: Iterable[bytes]) -> None:
        with self._verified_lock:
            seen = self.verified_ids
            for tx_id in tx_ids:
                seen[tx_id] = None
            while len(seen) > VERIFIED_IDS:
                seen.popitem(last=False)  # O(1); a plain dict would scan the deleted slots at its front

    def wait_admitted(self, tx_ids: list[bytes], timeout: float = ADMISSION_WAIT_S) -> None:
        """Return once no admission thread is checking any of `tx_ids` (or after `timeout`)."""
        with self._admitted:
            self._admitted.wait_for(lambda: not any(i in self._admitting for i in tx_ids), timeout)

    @contextlib.contextmanager
    def _admitting_now(self, tx_ids: list[bytes]) -> Iterator[None]:
        with self._admitted:
            for i in tx_ids:
                self._admitting[i] = self._admitting.get(i, 0) + 1
        try:
            yield
        finally:
            with self._admitted:
                for i in tx_ids:
                    if self._admitting[i] == 1:
                        del self._admitting[i]
                    else:
                        self._admitting[i] -= 1
                self._admitted.notify_all()

    def signature_valid(self, tx: Tx) -> bool:
        """The signature check, once per node: a transaction checked lately is not checked again, and
        one that passes is remembered at once (block validation may be about to check it too)."""
        if tx.tx_id in self.verified_ids:
            return True
        if not tx.signature_valid():
            return False
        self.remember_verified((tx.tx_id,))
        return True

    # --- lifecycle ---------------------------------------------------------------------------------
    def reload_pending(self) -> int:
        """Put back into the mempool what was acknowledged before a restart and is not yet committed."""
        n = 0
        stale = []
        reloaded: list[Tx] = []
        for raw in self.store.pending():
            try:
                tx = Tx.decode(raw)
                check_tx(tx, self.chain_id)
                if self.store.find_tx(tx.tx_id) is not None:
                    stale.append(tx.tx_id)
                    continue
                if self.mempool.add(tx):
                    n += 1
                    reloaded.append(tx)
            except (LerError, MempoolFull) as exc:
                log.warning("event=pending_dropped reason=%r", str(exc))
        if stale:
            self.store.remove_pending(stale)
        if reloaded:
            self._announce(reloaded, None)
        return n

    def close(self) -> None:
        self._admission.shutdown(wait=True)
        self.store.close()

    @property
    def is_producer(self) -> bool:
        """Whether this node alone makes the next block (the only validator: no other vote is needed)."""
        vals = self.store.validators(self.store.height + 1)
        return self.config.role == "authority" and vals == (self.key.public_key,)

    @property
    def is_validator(self) -> bool:
        """Whether this node votes on the next block (an authority among that height's validators)."""
        vals = self.store.validators(self.store.height + 1)
        return self.config.role == "authority" and self.key.public_key in vals

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stall_after_s(self) -> float:
        """How long without a block is more than a slow height: three rounds' consensus timeouts (a dead
        proposer costs a round, a second one in a row another), and three heartbeats where heartbeats
        are set. Later than that, the authorities likely cannot make a block at all."""
        c = self.config.consensus
        rounds = sum(c.propose + c.prevote + c.precommit
                     + r * (c.propose_increment + c.prevote_increment + c.precommit_increment) for r in range(3))
        return max(rounds + self.config.blocks.batch_ms / 1000, STALL_HEARTBEATS * self.config.blocks.heartbeat_s)

    def stall_warning(self) -> str | None:
        """Why no block seems to come, for /health, or None. Blocks are due when transactions wait (or a
        heartbeat is set), so a node with nothing to commit and no heartbeat is never stalled.
        Consensus needs more than 2/3 of the authorities up and connected: when fewer are, every node
        (an observer too, which hears of no new block) still serves, but nothing commits."""
        now = time.monotonic()
        waiting_since = self.mempool.waiting_since
        heartbeat = self.config.blocks.heartbeat_s
        since = self.last_block_at if waiting_since is None else max(self.last_block_at, waiting_since)
        if waiting_since is None and heartbeat <= 0:
            return None
        quiet = now - since
        if quiet < self.stall_after_s():
            return None
        age = now - self.last_block_at  # what /health's last_block_age_s shows
        why = (f"while {len(self.mempool)} transaction(s) wait, for {quiet:.0f} s" if waiting_since is not None
               else f"though [blocks] heartbeat_s = {heartbeat:g}")
        return (f"no block for {age:.0f} s {why}: the authorities may have no quorum (a block needs more "
                "than 2/3 of them up and connected)")

    def _announce(self, txs: list[Tx], source: bytes | None) -> None:
        for listener in self.tx_listeners:
            listener(txs, source)

    # --- submission --------------------------------------------------------------------------------
    def status_of(self, tx_id: bytes) -> SubmitResult:
        loc = self.store.find_tx(tx_id)
        if loc is not None:
            return SubmitResult(tx_id, COMMITTED, loc[0], loc[1])
        if tx_id in self.mempool:
            return SubmitResult(tx_id, PENDING)
        refused = self._rejected.get(tx_id)
        if refused is not None:
            rule, reason = refused
            return SubmitResult(tx_id, REJECTED, error=reason, rule=rule)
        return SubmitResult(tx_id, "unknown")

    async def submit(self, txs: Sequence[Tx | LerError]) -> list[SubmitResult]:
        """Check and accept transactions. Items that failed to decode arrive as their error.

        The checks run in an admission thread, so the event loop keeps serving consensus messages while
        a large batch is checked; accepted transactions are durable before this returns."""
        return await self.submit_body(lambda _raw: txs, b"")

    async def submit_body(self, decode: Callable[[bytes], Sequence[Tx | LerError]],
                          raw: bytes) -> list[SubmitResult]:
        """`submit` of what `decode(raw)` gives, decoded in the same admission thread (its errors,
        e.g. the API's 400 for a malformed body, propagate before anything is accepted)."""
        results, accepted = await asyncio.get_running_loop().run_in_executor(
            self._admission, lambda: self._submit_sync(decode(raw)))
        if accepted:
            self._announce(accepted, None)
        return results

    def _submit_sync(self, txs: Sequence[Tx | LerError]) -> tuple[list[SubmitResult], list[Tx]]:
        decoded = [t for t in txs if isinstance(t, Tx)]
        with self._admitting_now([t.tx_id for t in decoded]):
            return self._submit_decoded(txs, decoded)

    def _submit_decoded(self, txs: Sequence[Tx | LerError],
                        decoded: list[Tx]) -> tuple[list[SubmitResult], list[Tx]]:
        results: list[SubmitResult] = []
        ok_by_id = {t.tx_id: self.signature_valid(t) for t in decoded}
        h = self.store.height
        view = self.store.state_view(h)
        ctx = Context(self.chain_id, h + 1, now_ms(), seen=lambda _i: False)
        accepted: list[Tx] = []
        for item in txs:
            if not isinstance(item, Tx):
                results.append(SubmitResult(None, REJECTED, error=str(item), rule="tx.decode"))
                continue
            tx = item
            res, reads = self._accept(tx, ok_by_id[tx.tx_id], view, ctx)
            if res.status == PENDING and tx.tx_id not in self.mempool:
                try:
                    self.mempool.add(tx, reads)
                    accepted.append(tx)
                except MempoolFull as exc:
                    res = SubmitResult(tx.tx_id, REJECTED, error=str(exc), rule="mempool.full")
            if res.status == REJECTED and res.rule not in ("tx.replay", "mempool.full") and res.error:
                # So that GET /v1/txs/{id} can say why, not just "unknown" (replays read as committed;
                # a full mempool is transient).
                self._remember_rejected(tx.tx_id, res.rule or "tx.rule", res.error)
            results.append(res)
        if accepted:
            # Durable before acknowledged: a crash after this answer loses none of these.
            self.store.add_pending([(t.tx_id, t.raw) for t in accepted])
        return results, accepted

    async def ingest(self, raws: Sequence[bytes], source: bytes) -> int:
        """Transactions gossiped by the peer with node key `source`: the same checks as a submission.

        Known ones (pending, committed, refused here before) cost a hash and a lookup, nothing more.
        The checks run in a worker thread (as for a submission). Returns how many entered the mempool.
        """
        added = await asyncio.get_running_loop().run_in_executor(self._admission, self._ingest_sync, raws)
        self.metrics.txs_gossiped_in += len(added)
        if added:
            self._announce(added, source)
        return len(added)

    def _ingest_sync(self, raws: Sequence[bytes]) -> list[Tx]:
        fresh: list[Tx] = []
        seen: set[bytes] = set()
        for raw in raws:
            if not isinstance(raw, bytes) or len(raw) > MAX_TX_BYTES:
                continue
            tx_id = sha256(raw)
            if tx_id in seen or tx_id in self.mempool or tx_id in self._rejected:
                continue
            seen.add(tx_id)
            if self.store.find_tx(tx_id) is not None:
                continue  # committed already (a late copy): not worth decoding
            try:
                tx = Tx.decode(raw, tx_id)
            except LerError:
                continue  # a peer relays what a client gave it; a bad one is simply not taken
            if tx.chain != self.chain_id:
                continue
            fresh.append(tx)
        if not fresh:
            return []
        with self._admitting_now([t.tx_id for t in fresh]):
            return self._ingest_decoded(fresh)

    def _ingest_decoded(self, fresh: list[Tx]) -> list[Tx]:
        sig_ok = [self.signature_valid(t) for t in fresh]
        h = self.store.height
        view = self.store.state_view(h)
        ctx = Context(self.chain_id, h + 1, now_ms(), seen=lambda _i: False)
        added: list[Tx] = []
        for tx, ok in zip(fresh, sig_ok, strict=True):
            if tx.tx_id in self.mempool:
                continue
            res, reads = self._accept(tx, ok, view, ctx, known_new=True)
            if res.status != PENDING:
                continue
            try:
                self.mempool.add(tx, reads)
            except MempoolFull:
                self.metrics.gossip_dropped += 1
                continue
            added.append(tx)
        return added

    def _accept(self, tx: Tx, sig_ok: bool, view: StateView, ctx: Context,
                known_new: bool = False) -> tuple[SubmitResult, frozenset[bytes] | None]:
        """The verdict on one transaction, and the state keys its dry run read (for `recheck_mempool`).

        `known_new`: the caller has just found `tx` uncommitted (one index lookup per transaction)."""
        if tx.tx_id in self.mempool:
            return SubmitResult(tx.tx_id, PENDING), None
        loc = None if known_new else self.store.find_tx(tx.tx_id)
        if loc is not None:
            return SubmitResult(tx.tx_id, REJECTED, loc[0], loc[1], rule="tx.replay",
                                error=f"tx.replay: this transaction was already committed at height {loc[0]}"), None
        if tx.chain != self.chain_id:
            return SubmitResult(tx.tx_id, REJECTED, rule="tx.chain",
                                error=f"tx.chain: transaction is for chain {tx.chain!r}, "
                                      f"this node serves {self.chain_id!r}"), None
        if not sig_ok:
            return SubmitResult(tx.tx_id, REJECTED, rule="tx.signature",
                                error="tx.signature: the signature does not verify for the signer's key"), None
        recorder = _ReadRecorder(view)
        try:
            apply_tx(recorder, ctx, tx, dry=True)  # against the committed state
        except RuleError as exc:
            return SubmitResult(tx.tx_id, REJECTED, error=str(exc), rule=exc.rule), None
        except DecodeError as exc:
            return SubmitResult(tx.tx_id, REJECTED, error=str(exc), rule="state.decode"), None
        return SubmitResult(tx.tx_id, PENDING), None if clock_dependent(tx) else frozenset(recorder.keys)

    async def wait_for(self, tx_ids: Sequence[bytes], timeout: float) -> None:
        """Return once every tx is committed or refused, or the timeout passes, or the node stops."""
        deadline = time.monotonic() + timeout

        def settled() -> bool:
            # Stopping: no block will come; answer now (the txs stay pending, durably) rather than
            # hold the shutdown up for the rest of the client's wait.
            return self._stopping or all(i not in self.mempool for i in tx_ids)

        async with self._committed:
            while not settled():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    async with asyncio.timeout(remaining):
                        await self._committed.wait()
                except TimeoutError:
                    return

    def _remember_rejected(self, tx_id: bytes, rule: str, reason: str) -> None:
        with self._rejected_lock:  # written by submissions' worker threads and by the event loop
            self._rejected[tx_id] = (rule, reason)
            while len(self._rejected) > _REJECTED_MEMORY:
                self._rejected.popitem(last=False)

    async def _notify(self) -> None:
        async with self._committed:
            self._committed.notify_all()

    # --- what leaves the mempool ---------------------------------------------------------------------
    async def refuse(self, refused: Sequence[tuple[Tx, RuleError]]) -> None:
        """Transactions a block could not take (a rule refuses them now): drop them, answer their waiters."""
        if not refused:
            return
        for tx, err in refused:
            self._remember_rejected(tx.tx_id, err.rule, str(err))
        ids = [tx.tx_id for tx, _ in refused]
        self.mempool.remove(ids)
        await asyncio.to_thread(self.store.remove_pending, ids)
        log.info("event=txs_refused count=%d first_rule=%s", len(ids), refused[0][1].rule)
        await self._notify()

    async def after_commit(self, block: Block, result: ExecutionResult, started: float | None,
                           source: str) -> None:
        """Bookkeeping after `block` is durable: mempool, metrics, waiters, one log line."""
        h = block.header.height
        self.mempool.remove([t.tx_id for t in result.applied])
        self.last_block_at = time.monotonic()
        self.metrics.blocks_committed += 1
        self.metrics.txs_committed += len(result.applied)
        if source == "sync":
            self.metrics.sync_blocks += 1
        latency = time.monotonic() - started if started is not None else None
        if latency is not None:
            self.metrics.commit_latency.observe(latency)
            self.last_commit_ms = latency * 1000
        log.info("event=block_committed height=%d round=%d txs=%d source=%s latency_ms=%s hash=%s",
                 h, block.header.round, len(result.applied), source,
                 f"{latency * 1000:.1f}" if latency is not None else "-", block.hash.hex()[:16])
        await self._notify()

    async def recheck_mempool(self, written: Iterable[bytes], limit: int) -> int:
        """Dry-run again, against the latest state, up to `limit` pending transactions that a committed
        block's writes (`written`, its state keys) may have made invalid; refuse what fails.

        A committed block can make a pending transaction invalid (a record anchored by another issuer's
        transaction, an issuer suspended); without this such transactions would linger, and a node with
        only dead transactions would keep starting heights for nothing. Only the transactions whose own
        check read one of the written keys (or whose validity depends on the clock, or whose reads are
        not known) can have changed. Returns how many were refused.
        """
        candidates = self.mempool.affected(written, limit)
        if not candidates:
            return 0

        def check() -> list[tuple[Tx, RuleError]]:
            h = self.store.height
            view = self.store.state_view(h)
            ctx = Context(self.chain_id, h + 1, now_ms(), seen=lambda _i: False)
            bad: list[tuple[Tx, RuleError]] = []
            for tx in candidates:
                recorder = _ReadRecorder(view)
                try:
                    apply_tx(recorder, ctx, tx, dry=True)
                except RuleError as exc:
                    bad.append((tx, exc))
                    continue
                except DecodeError as exc:
                    bad.append((tx, RuleError("state.decode", str(exc))))
                    continue
                self.mempool.set_reads(tx.tx_id, None if clock_dependent(tx) else frozenset(recorder.keys))
            return bad

        bad = await asyncio.to_thread(check)
        await self.refuse(bad)
        return len(bad)

    def stop(self) -> None:
        self._stopping = True

    async def release_waiters(self) -> None:
        """After stop(): wake every ?wait request so it answers with what it has."""
        await self._notify()
