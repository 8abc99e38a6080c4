"""The mempool: transactions whose signature this node has checked, waiting for a block.

Bounded by count and bytes, deduplicated by tx id, and fair: each signer has its own queue (first in,
first out, so one signer's dependent transactions keep their order), blocks draw from the signers in
turn, and no signer may hold more than a quarter of the pool. One busy issuer cannot starve the others.
A transaction is in the pool only after its signature verified, so block validation skips it there.

Each transaction also carries the state keys its admission check read (None: not known, or its
validity depends on the clock): after a block commits, only those whose keys the block wrote, or
whose keys are not known, need checking again (`affected`).

Thread-safe: the HTTP handlers and gossip add on the event loop while the consensus thread takes and
checks membership (a lock guards every change and every walk over the queues).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable

from ler.errors import LerError
from ler.tx import Tx


class MempoolFull(LerError):
    """The pool (or this signer's share of it) is full; try again after the next block."""


class Mempool:
    def __init__(self, max_txs: int, max_bytes: int) -> None:
        self.max_txs = max(1, max_txs)
        self.max_bytes = max(1, max_bytes)
        self.per_signer = max(1, self.max_txs // 4)
        self._txs: dict[bytes, Tx] = {}
        self._reads: dict[bytes, frozenset[bytes] | None] = {}
        self._readers: dict[bytes, set[bytes]] = {}  # state key -> ids of the txs that read it
        self._unknown: set[bytes] = set()  # ids of the txs whose reads are not known
        # Each signer's ids in arrival order. Removal is lazy: a removed id stays in its queue, listed in
        # `_dead`, until it reaches the front or the dead outnumber the live (see `_remove`).
        self._queues: OrderedDict[bytes, deque[bytes]] = OrderedDict()
        self._counts: dict[bytes, int] = {}  # signer -> how many of its transactions are pooled
        self._dead: set[bytes] = set()
        self._bytes = 0
        #: Since when (time.monotonic) the pool has held transactions without a pause, None while empty: how
        #: long its oldest waiting one has waited at most (/health warns when blocks stop coming for them).
        self.waiting_since: float | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._txs

    def get(self, tx_id: bytes) -> Tx | None:
        return self._txs.get(tx_id)

    def add(self, tx: Tx, reads: frozenset[bytes] | None = None) -> bool:
        """Add a checked transaction, with the state keys its check read; False if it is here already.

        Raises MempoolFull."""
        with self._lock:
            if not self._add(tx):
                return False
            self._set_reads(tx.tx_id, reads)
            return True

    def set_reads(self, tx_id: bytes, reads: frozenset[bytes] | None) -> None:
        """What a new check of a pooled transaction read."""
        with self._lock:
            if tx_id in self._txs:
                self._drop_reads(tx_id)
                self._set_reads(tx_id, reads)

    def _set_reads(self, tx_id: bytes, reads: frozenset[bytes] | None) -> None:
        self._reads[tx_id] = reads
        if reads is None:
            self._unknown.add(tx_id)
            return
        for key in reads:
            readers = self._readers.get(key)
            if readers is None:
                self._readers[key] = {tx_id}
            else:
                readers.add(tx_id)

    def _drop_reads(self, tx_id: bytes) -> None:
        reads = self._reads.pop(tx_id, None)
        if reads is None:
            self._unknown.discard(tx_id)
            return
        for key in reads:
            readers = self._readers.get(key)
            if readers is not None:
                readers.discard(tx_id)
                if not readers:
                    del self._readers[key]

    def affected(self, written: Iterable[bytes], limit: int) -> list[Tx]:
        """Up to `limit` pooled transactions whose check read a key in `written`, or whose reads are not
        known (in arrival order per signer, as `take` gives them)."""
        with self._lock:
            ids = set(self._unknown)
            for key in written:
                readers = self._readers.get(key)
                if readers:
                    ids |= readers
            if not ids:
                return []
            out: list[Tx] = []
            for queue in self._queues.values():
                for tx_id in queue:
                    if tx_id in ids:  # (only pooled ids have reads or are unknown: no dead one is here)
                        out.append(self._txs[tx_id])
                        if len(out) >= limit:
                            return out
            return out

    def _add(self, tx: Tx) -> bool:
        if tx.tx_id in self._txs:
            return False
        if len(self._txs) >= self.max_txs or self._bytes + len(tx.raw) > self.max_bytes:
            raise MempoolFull("the node's mempool is full; retry after the next block")
        signer = tx.signer
        count = self._counts.get(signer, 0)
        if count >= self.per_signer:
            raise MempoolFull("this signer already has its share of the mempool pending; retry shortly")
        if count:
            queue = self._queues[signer]
            if tx.tx_id in self._dead:  # back after a removal: its old place goes, so it is listed once
                self._dead.discard(tx.tx_id)
                queue = self._queues[signer] = deque(t for t in queue if t != tx.tx_id)
        else:
            queue = self._queues[signer] = deque()
        queue.append(tx.tx_id)
        self._counts[signer] = count + 1
        if not self._txs:
            self.waiting_since = time.monotonic()
        self._txs[tx.tx_id] = tx
        self._bytes += len(tx.raw)
        return True

    def take(self, limit: int, max_bytes: int | None = None) -> list[Tx]:
        """Up to `limit` transactions, round-robin over signers, each signer's in arrival order.

        They stay in the pool until `remove` (after their block commits or they are refused)."""
        with self._lock:
            return self._take(limit, max_bytes)

    def _take(self, limit: int, max_bytes: int | None) -> list[Tx]:
        out: list[Tx] = []
        size = 0
        txs = self._txs
        # The lock keeps the queues unchanged. A cursor skips removed ids (`_dead`: not in `txs`).
        cursors = {signer: filter(txs.__contains__, q) for signer, q in self._queues.items()}
        while cursors and len(out) < limit:
            for signer in list(cursors):
                tx_id = next(cursors[signer], None)
                if tx_id is None:
                    del cursors[signer]
                    continue
                tx = txs[tx_id]
                if max_bytes is not None and size + len(tx.raw) > max_bytes:
                    return out
                out.append(tx)
                size += len(tx.raw)
                if len(out) >= limit:
                    break
        return out

    def remove(self, tx_ids: Iterable[bytes]) -> None:
        with self._lock:
            self._remove(tx_ids)

    def _remove(self, tx_ids: Iterable[bytes]) -> None:
        removed: dict[bytes, int] = {}  # signer -> how many of its transactions this call removed
        txs, dead = self._txs, self._dead
        for tx_id in tx_ids:
            tx = txs.pop(tx_id, None)
            if tx is None:
                continue
            self._drop_reads(tx_id)
            self._bytes -= len(tx.raw)
            dead.add(tx_id)
            removed[tx.signer] = removed.get(tx.signer, 0) + 1
        if not txs:
            self.waiting_since = None
        counts = self._counts
        for signer, n in removed.items():
            live = counts[signer] - n
            queue = self._queues[signer]
            if not live:
                dead.difference_update(queue)
                del self._queues[signer], counts[signer]
                continue
            counts[signer] = live
            # The removed ids stay where they are, so a removal costs the same wherever it is in the
            # queue (a block's are at the front on its proposer, anywhere on the others, whose gossip
            # brought them in another order). Those at the front go now (a live id remains behind them);
            # the rest when they get there, or all at once when they outnumber the live ones, so a
            # queue is at most about twice its live length and each id is walked over a bounded
            # number of times.
            while queue[0] in dead:
                dead.discard(queue.popleft())
            if len(queue) > 2 * live + 16:
                dead.difference_update(t for t in queue if t not in txs)
                self._queues[signer] = deque(t for t in queue if t in txs)

    def all_ids(self) -> list[bytes]:
        with self._lock:
            return list(self._txs)

    # Last in the class: from here on `bytes` in an annotation would name this property, not the type.
    @property
    def bytes(self) -> int:
        """Total size of the pooled transactions."""
        return self._bytes
