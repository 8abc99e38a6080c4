"""The history tree, persisted: an append-only RFC 6962 tree whose proofs cost O(log n) reads, not O(n).

Leaf i of the chain's history tree is the genesis hash for i == 0 and the hash of block i for i >= 1;
the header of block h carries its root over the first h leaves. `ler.merkle` computes roots and proofs
from the whole leaf list, which a node cannot afford to re-hash for every proof once the chain is long.

Theory of operation. Every subtree the RFC's recursion ever asks for, MTH(D[lo:hi]), starts at a
multiple of the largest power of two not above its size, so it splits into at most log2(n) *perfect*
subtrees (power-of-two sized and aligned). Those never change once their last leaf is appended, so we
store each one as it completes, keyed by (level, index): the node at level L, index i covers leaves
[i * 2**L, (i + 1) * 2**L). Appending leaf n writes its leaf hash and then one node per trailing one-bit
of n (each newly completed ancestor), reading only the left siblings. A root or a proof element is then
a handful of reads and at most log2(n) hashes, and the proofs come out identical to `ler.merkle`'s.

Keys are `prefix || level (1 byte) || index (8 bytes, big-endian)`; values are the 32-byte hashes.
The tree is a view over a small key-value interface (`get`, and `put` for appending), so the chain store
can hand it a `StagedWrites` that collects a block's writes for one atomic LevelDB batch while still
letting later reads in the same block see them, and tests can hand it a dict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ler.merkle import EMPTY_ROOT, HASH_SIZE, consistency_path, inclusion_path, leaf_hash, node_hash

#: The largest number of leaves the key format can address (the index is 8 bytes).
MAX_LEAVES = 2**63


class Reader(Protocol):
    """Reads a key; None when absent. A dict and a plyvel.DB both fit."""

    def get(self, key: bytes, /) -> bytes | None: ...


class ReadWriter(Reader, Protocol):
    def put(self, key: bytes, value: bytes, /) -> None: ...


class BatchWriter(Protocol):
    """What a plyvel WriteBatch offers, and all `StagedWrites.write_to` needs."""

    def put(self, key: bytes, value: bytes, /) -> None: ...

    def delete(self, key: bytes, /) -> None: ...


class StagedWrites:
    """Writes bound for one atomic batch, readable (over `base`) before the batch is written.

    A block's writes are gathered here while the block is being committed, then handed to one LevelDB
    write batch. Nothing reaches the database if anything fails before `write_to`, so a refusal halfway
    through leaves no trace. A value of None records a deletion.
    """

    __slots__ = ("base", "writes")

    def __init__(self, base: Reader) -> None:
        self.base = base
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes, /) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.base.get(key)

    def put(self, key: bytes, value: bytes, /) -> None:
        self.writes[key] = value

    def delete(self, key: bytes, /) -> None:
        self.writes[key] = None

    def write_to(self, batch: BatchWriter) -> None:
        for key, value in self.writes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)

    def __len__(self) -> int:
        return len(self.writes)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.writes)


class HistoryError(Exception):
    """A node the tree needs is not stored: a size beyond the appended leaves, or a damaged store."""


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): where RFC 9162 splits D[n]."""
    return 1 << ((n - 1).bit_length() - 1)


class HistoryTree:
    """The history tree stored under `prefix` in `kv`. Holds no size of its own: callers know it.

    Only `append` writes; reading needs nothing but `get`, so a plyvel.DB serves for queries.
    """

    __slots__ = ("kv", "prefix")

    def __init__(self, kv: ReadWriter, prefix: bytes) -> None:
        self.kv = kv
        self.prefix = prefix

    def _key(self, level: int, index: int) -> bytes:
        return self.prefix + bytes((level,)) + index.to_bytes(8, "big")

    def _node(self, level: int, index: int) -> bytes:
        h = self.kv.get(self._key(level, index))
        if h is None:
            raise HistoryError(f"history tree node (level {level}, index {index}) is not stored")
        if len(h) != HASH_SIZE:
            raise HistoryError(f"history tree node (level {level}, index {index}) is malformed")
        return bytes(h)

    # --- writing --------------------------------------------------------------------------------------
    def append(self, index: int, leaf_data: bytes) -> None:
        """Append leaf number `index` (which must be the current size) with raw data `leaf_data`.

        Writes through `kv.put`: with a `StagedWrites`, nothing is durable until its batch is written,
        and several appends staged together still read each other's nodes.
        """
        put = self.kv.put
        if not 0 <= index < MAX_LEAVES:
            raise ValueError(f"leaf index {index} is out of range")
        # Refuse a gap or an overwrite: either would silently corrupt every later root.
        if index > 0 and self.kv.get(self._key(0, index - 1)) is None:
            raise HistoryError(f"cannot append leaf {index}: leaf {index - 1} is not stored")
        if self.kv.get(self._key(0, index)) is not None:
            raise HistoryError(f"leaf {index} is already stored")
        h = leaf_hash(leaf_data)
        level, i = 0, index
        put(self._key(level, i), h)
        # Leaf `index` completes one perfect subtree per trailing one-bit of `index`.
        while i & 1:
            h = node_hash(self._node(level, i - 1), h)
            level += 1
            i >>= 1
            put(self._key(level, i), h)

    # --- reading --------------------------------------------------------------------------------------
    def _subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range the RFC's recursion produces (lo aligned to hi - lo's power of two)."""
        n = hi - lo
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            if lo & (n - 1):  # a programming error: the RFC's ranges are always aligned
                raise AssertionError(f"range [{lo}, {hi}) is not an aligned perfect subtree")
            return self._node(level, lo >> level)
        k = _split(n)
        return node_hash(self._subtree(lo, lo + k), self._subtree(lo + k, hi))

    def leaf_hash(self, index: int) -> bytes:
        """The stored RFC 6962 leaf hash of leaf `index`."""
        return self._node(0, index)

    def root(self, size: int) -> bytes:
        """MTH over the first `size` leaves (EMPTY_ROOT for 0). At most log2(size) reads."""
        _check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size]): equal to ler.merkle.inclusion_proof(leaves[:size], index)."""
        _check_size(size)
        return inclusion_path(index, size, self._subtree)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[new_size]), equal to merkle.consistency_proof(leaves[:new_size], old_size)."""
        _check_size(new_size)
        return consistency_path(old_size, new_size, self._subtree)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_LEAVES:
        raise ValueError(f"tree size {size!r} is out of range")
