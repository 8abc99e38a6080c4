"""The node's core, without HTTP: the chain store, the mempool, and block production.

Submission: a transaction is decoded, checked once (chain id, signature), tried against the committed
state (so a broken rule is answered at once, not after a block), written to the store's durable
pending set, and only then acknowledged. A node killed after acknowledging reloads it on restart.

Production (single authority): when the mempool holds transactions, wait `batch_ms` for more, take a
fair selection, build and execute the block, sign its commit certificate with the node key and commit it
in one durable write. No transactions, no block (unless a heartbeat is configured). With more than one
validator a block needs the BFT round among authorities; this node then only follows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ler.block import PRECOMMIT, CertSig, CommitCertificate, Vote
from ler.errors import DecodeError, LerError, RuleError
from ler.keys import KeyPair
from ler.ledger import Context, Overlay, apply_tx, check_tx
from ler.tx import Tx
from node.config import NodeConfig
from node.mempool import Mempool, MempoolFull
from storage.chain import ChainStore

log = logging.getLogger("ler.node")

PENDING, COMMITTED, REJECTED = "pending", "committed", "rejected"
_REJECTED_MEMORY = 100_000


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


class _StoreView:
    """The committed state as a read-only StateView (writes go to an Overlay on top)."""

    def __init__(self, store: ChainStore) -> None:
        self.store = store

    def get(self, key: bytes) -> bytes | None:
        return self.store.state_get(key)

    def set(self, key: bytes, value: bytes | None) -> None:  # pragma: no cover - always overlaid
        raise RuntimeError("the committed state is read-only here")


def now_ms() -> int:
    return int(time.time() * 1000)


class NodeService:
    def __init__(self, config: NodeConfig, key: KeyPair) -> None:
        self.config = config
        self.key = key
        self.genesis = config.load_genesis()
        self.store = ChainStore(config.db_path, self.genesis)
        self.chain_id = self.genesis.chain_id
        self.mempool = Mempool(config.limits.mempool_txs, config.limits.mempool_bytes)
        self._wake = asyncio.Event()
        self._committed = asyncio.Condition()
        self._rejected: OrderedDict[bytes, tuple[str, str]] = OrderedDict()
        self._stopping = False
        self.started = time.monotonic()
        self.blocks_made = 0
        self.last_commit_ms: float | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def reload_pending(self) -> int:
        """Put back into the mempool what was acknowledged before a restart and is not yet committed."""
        n = 0
        stale = []
        for raw in self.store.pending():
            try:
                tx = Tx.decode(raw)
                check_tx(tx, self.chain_id)
                if self.store.find_tx(tx.tx_id) is not None:
                    stale.append(tx.tx_id)
                    continue
                if self.mempool.add(tx):
                    n += 1
            except (LerError, MempoolFull) as exc:
                log.warning("event=pending_dropped reason=%r", str(exc))
        if stale:
            self.store.remove_pending(stale)
        if n:
            self._wake.set()
        return n

    def close(self) -> None:
        self.store.close()

    @property
    def is_producer(self) -> bool:
        """A single-authority chain whose authority is this node: it alone commits blocks."""
        vals = self.store.validators(self.store.height + 1)
        return self.config.role == "authority" and vals == (self.key.public_key,)

    # --- submission --------------------------------------------------------------------------------
    def status_of(self, tx_id: bytes) -> SubmitResult:
        loc = self.store.find_tx(tx_id)
        if loc is not None:
            return SubmitResult(tx_id, COMMITTED, loc[0], loc[1])
        if tx_id in self.mempool:
            return SubmitResult(tx_id, PENDING)
        if tx_id in self._rejected:
            rule, reason = self._rejected[tx_id]
            return SubmitResult(tx_id, REJECTED, error=reason, rule=rule)
        return SubmitResult(tx_id, "unknown")

    async def submit(self, txs: Sequence[Tx | LerError]) -> list[SubmitResult]:
        """Check and accept transactions. Items that failed to decode arrive as their error."""
        results: list[SubmitResult] = []
        decoded = [t for t in txs if isinstance(t, Tx)]
        if len(decoded) > 32:
            sig_ok = await asyncio.to_thread(lambda: [t.signature_valid() for t in decoded])
        else:
            sig_ok = [t.signature_valid() for t in decoded]
        ok_by_id = {t.tx_id: ok for t, ok in zip(decoded, sig_ok, strict=True)}
        view = _StoreView(self.store)
        ctx = Context(self.chain_id, self.store.height + 1, now_ms(), seen=lambda _i: False)
        accepted: list[Tx] = []
        for item in txs:
            if not isinstance(item, Tx):
                results.append(SubmitResult(None, REJECTED, error=str(item), rule="tx.decode"))
                continue
            tx = item
            res = self._accept(tx, ok_by_id[tx.tx_id], view, ctx)
            if res.status == PENDING and tx.tx_id not in self.mempool:
                try:
                    self.mempool.add(tx)
                    accepted.append(tx)
                except MempoolFull as exc:
                    res = SubmitResult(tx.tx_id, REJECTED, error=str(exc), rule="mempool.full")
            results.append(res)
        if accepted:
            # Durable before acknowledged: a crash after this answer loses none of these.
            await asyncio.to_thread(self.store.add_pending, [(t.tx_id, t.raw) for t in accepted])
            self._wake.set()
        return results

    def _accept(self, tx: Tx, sig_ok: bool, view: _StoreView, ctx: Context) -> SubmitResult:
        if tx.tx_id in self.mempool:
            return SubmitResult(tx.tx_id, PENDING)
        loc = self.store.find_tx(tx.tx_id)
        if loc is not None:
            return SubmitResult(tx.tx_id, REJECTED, loc[0], loc[1], rule="tx.replay",
                                error=f"tx.replay: this transaction was already committed at height {loc[0]}")
        if tx.chain != self.chain_id:
            return SubmitResult(tx.tx_id, REJECTED, rule="tx.chain",
                                error=f"tx.chain: transaction is for chain {tx.chain!r}, "
                                      f"this node serves {self.chain_id!r}")
        if not sig_ok:
            return SubmitResult(tx.tx_id, REJECTED, rule="tx.signature",
                                error="tx.signature: the signature does not verify for the signer's key")
        try:
            apply_tx(Overlay(view), ctx, tx)  # dry run against the committed state; writes discarded
        except RuleError as exc:
            return SubmitResult(tx.tx_id, REJECTED, error=str(exc), rule=exc.rule)
        except DecodeError as exc:
            return SubmitResult(tx.tx_id, REJECTED, error=str(exc), rule="state.decode")
        return SubmitResult(tx.tx_id, PENDING)

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
                    await asyncio.wait_for(self._committed.wait(), remaining)
                except TimeoutError:
                    return

    def _remember_rejected(self, tx_id: bytes, rule: str, reason: str) -> None:
        self._rejected[tx_id] = (rule, reason)
        while len(self._rejected) > _REJECTED_MEMORY:
            self._rejected.popitem(last=False)

    # --- block production --------------------------------------------------------------------------
    async def produce_forever(self) -> None:
        heartbeat = self.config.blocks.heartbeat_s
        while not self._stopping:
            if not len(self.mempool):
                self._wake.clear()
                try:
                    if heartbeat > 0:
                        await asyncio.wait_for(self._wake.wait(), heartbeat)
                    else:
                        await self._wake.wait()
                except TimeoutError:
                    pass
            if self._stopping:
                return
            if not self.is_producer:
                # More than one validator: blocks come from the BFT round, not from this loop.
                self._wake.clear()
                await asyncio.sleep(1.0)
                continue
            if len(self.mempool) < self.config.limits.block_txs:
                await asyncio.sleep(self.config.blocks.batch_ms / 1000)
            await self.produce_block()

    async def produce_block(self) -> int | None:
        """Build, certify and commit one block from the mempool; its height, or None if nothing to do."""
        txs = self.mempool.take(self.config.limits.block_txs, max_bytes=self.config.limits.max_body_bytes)
        if not txs and self.config.blocks.heartbeat_s <= 0:
            return None
        t0 = time.perf_counter()
        block, result, _cert = await asyncio.to_thread(self._make_and_commit, txs)
        h = block.header.height
        for tx, err in result.rejected:
            self._remember_rejected(tx.tx_id, err.rule, str(err))
        dropped = [tx.tx_id for tx, _ in result.rejected]
        self.mempool.remove([t.tx_id for t in result.applied] + dropped)
        if dropped:
            await asyncio.to_thread(self.store.remove_pending, dropped)
        self.blocks_made += 1
        self.last_commit_ms = (time.perf_counter() - t0) * 1000
        log.info("event=block_committed height=%d round=%d txs=%d rejected=%d ms=%.1f hash=%s",
                 h, block.header.round, len(result.applied), len(dropped), self.last_commit_ms,
                 block.hash.hex()[:16])
        async with self._committed:
            self._committed.notify_all()
        return h

    def _make_and_commit(self, txs: list[Tx]) -> tuple:  # type: ignore[type-arg]
        parent = self.store.latest_header()
        t = max(now_ms(), (parent.time if parent else self.genesis.genesis_time) + 1)
        h = self.store.height + 1
        last_cert = self.store.cert(h - 1) if h > 1 else None
        block, result = self.store.make_block(txs, t, 0, self.key.public_key, last_cert)
        vote = Vote.make(self.key, self.chain_id, PRECOMMIT, h, 0, block.hash)
        cert = CommitCertificate(height=h, round=0, block=block.hash,
                                 sigs=(CertSig(vote.validator, vote.sig),))
        self.store.commit_block(block, cert, result)
        return block, result, cert

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def release_waiters(self) -> None:
        """After stop(): wake every ?wait request so it answers with what it has."""
        async with self._committed:
            self._committed.notify_all()
