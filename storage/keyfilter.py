"""A Bloom filter in memory in front of LevelDB, for keys that are nearly always absent when looked up.

Most lookups a busy node makes are of keys that were never written: the id of each new transaction (is
it committed already?), at admission and again in its block, and the state key of each new record.
LevelDB answers those through its memtable, a skip list of tens of MB here (the write buffer is large
to cut compaction, see storage/chain.py), then its tables' own Bloom filters: about 5 µs measured
alone on this machine, more in a busy node. This filter answers most of them in under a microsecond.

It never answers "absent" for a key that was added (no false negatives), so a caller may skip the
database whenever `may_hold` is False. That holds only if every key the filtered prefixes get is
added before the write that stores it becomes visible, which ChainStore does; then a lookup that the
filter answers "absent" is one that the database would have answered the same way at that moment.

Until `ready` (the keys already stored have been scanned, see `fill`), every key may be held.

The bit work also exists in C (storage/_keyfilter_native.c), which sets and reads the same bits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ler.native import load

_BITS_PER_KEY = 16  # three probes: about 0.5% false positives when a segment is full, less before
_MASK64 = (1 << 64) - 1


class KeyFilter:
    """A growing Bloom filter over byte strings; thread-safe.

    It grows by segments, each with room for twice as many keys as the one before; a lookup asks
    each segment (a handful at most). Positions come from Python's own hash of the key, which is
    seeded anew in every process, so nobody can choose keys that all collide.
    """

    __slots__ = ("_count", "_lock", "_segments", "ready")

    def __init__(self, capacity: int = 1 << 20) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._lock = threading.Lock()
        self._segments: list[tuple[bytearray, int, int]] = []  # (bits, bit mask, capacity in keys)
        self._count = 0  # keys in the newest segment
        self.ready = False
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        nbits = 1 << max(6, (capacity * _BITS_PER_KEY - 1).bit_length())
        self._segments.append((bytearray(nbits // 8), nbits - 1, capacity))
        self._count = 0

    def add_many(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            if _native is None:
                for key in keys:
                    self._add(key)
                return
            todo = keys if type(keys) is list else list(keys)
            done = 0
            while done < len(todo):  # as `_add` key by key: a full segment gets a successor first
                bits, mask, capacity = self._segments[-1]
                room = capacity - self._count
                if room <= 0:
                    self._grow(capacity * 2)
                    continue
                chunk = todo if done == 0 and len(todo) <= room else todo[done:done + room]
                _native.add(bits, mask, chunk)
                self._count += len(chunk)
                done += len(chunk)

    def _add(self, key: bytes) -> None:
        bits, mask, capacity = self._segments[-1]
        if self._count >= capacity:
            self._grow(capacity * 2)
            bits, mask, capacity = self._segments[-1]
        h = hash(key) & _MASK64
        a, b = h & 0xFFFFFFFF, (h >> 32) | 1
        i = a & mask
        bits[i >> 3] |= 1 << (i & 7)
        i = (a + b) & mask
        bits[i >> 3] |= 1 << (i & 7)
        i = (a + 2 * b) & mask
        bits[i >> 3] |= 1 << (i & 7)
        self._count += 1

    def may_hold(self, key: bytes) -> bool:
        """False only if `key` was never added (and the filter is ready); True otherwise."""
        if not self.ready:
            return True
        if _native is not None:
            return _native.may_hold(self._segments, key)
        h = hash(key) & _MASK64
        a, b = h & 0xFFFFFFFF, (h >> 32) | 1
        # Lock-free: a segment a concurrent `add` appends starts empty, and bits are only ever set.
        for bits, mask, _ in self._segments:
            i = a & mask
            if not bits[i >> 3] >> (i & 7) & 1:
                continue
            i = (a + b) & mask
            if not bits[i >> 3] >> (i & 7) & 1:
                continue
            i = (a + 2 * b) & mask
            if bits[i >> 3] >> (i & 7) & 1:
                return True
        return False

    @property
    def size_bytes(self) -> int:
        return sum(len(bits) for bits, _, _ in self._segments)

    def fill(self, keys: Iterable[bytes], stop: threading.Event | None = None, chunk: int = 4096) -> bool:
        """Add every key of `keys` (those already stored), then become ready; False if `stop` was set
        first (the filter then stays not ready). Keys are added in chunks, so that the writers' `add_many`
        calls wait for one chunk at most."""
        batch: list[bytes] = []
        for key in keys:
            batch.append(key)
            if len(batch) >= chunk:
                self.add_many(batch)
                batch.clear()
                if stop is not None and stop.is_set():
                    return False
        self.add_many(batch)
        self.ready = True
        return True


_native = load("storage._keyfilter_native", "LER_FILTER_IN_PYTHON")
