"""The compressed sparse Merkle tree of the ledger state, over a pluggable content-addressed node store.

Hashing and the proof format are `ler.smt`'s; this module builds, reads and proves the tree. Nodes are
stored under their hash and never changed or deleted, so an update writes only the new nodes on the
changed paths, and every root the tree ever had can still be read and proved.

Stored node encodings:
- inner node: 0x01 || left (32) || right (32), under node_hash(left, right) (the SHA-256 of the encoding);
- leaf:       0x00 || key (32) || value, under leaf_hash(key, value). The full value is kept so the value
  at any historical root can be read back.
The empty subtree is EMPTY and is never stored.

An update walks down to where the changed keys leave the existing tree and rebuilds only those paths, so it
costs O(depth) hashes and writes, depth being about log2(number of keys), not 256.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Protocol

from ler.smt import (
    EMPTY,
    KEY_SIZE,
    MAX_VALUE_BYTES,
    StateProof,
    bit,
    value_hash,
)

#: The first byte of a stored leaf's encoding (an inner node's is 0x01).
LEAF_TAG = 0x00
_LEAF = LEAF_TAG
_NODE = 0x01
_NODE_LEN = 1 + 32 + 32
_LEAF_MIN_LEN = 1 + KEY_SIZE

# An edited subtree as (hash, is_leaf). is_leaf is None for a subtree left untouched: whether it is a
# single leaf is looked up only when a collapse depends on it, so untouched siblings cost no read.
_Sub = tuple[bytes, bool | None]


class NodeStore(Protocol):
    """Where tree nodes live, keyed by their hash. Writes may be staged: the tree never reads back a node
    it wrote during the same update."""

    def get_node(self, h: bytes) -> bytes | None: ...

    def put_node(self, h: bytes, data: bytes) -> None: ...


class MemoryNodeStore:
    """A NodeStore in a dict: for tests, and for staging a block's writes before they are committed."""

    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}

    def get_node(self, h: bytes) -> bytes | None:
        return self.nodes.get(h)

    def put_node(self, h: bytes, data: bytes) -> None:
        self.nodes[h] = data

    def __len__(self) -> int:
        return len(self.nodes)


class NodeStoreError(Exception):
    """A node the tree needs is missing or malformed: a root the store never held, or a damaged store."""


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError("a state key is 32 bytes")


class SparseMerkleTree:
    """Reads, updates and proves trees by root. Holds no root of its own: callers keep the roots."""

    __slots__ = ("store",)

    def __init__(self, store: NodeStore) -> None:
        self.store = store

    # --- reading --------------------------------------------------------------------------------------
    def _load(self, h: bytes) -> bytes:
        data = self.store.get_node(h)
        if data is None:
            raise NodeStoreError(f"state node {h.hex()} is not in the store")
        n = len(data)
        if not ((n == _NODE_LEN and data[0] == _NODE) or (n >= _LEAF_MIN_LEN and data[0] == _LEAF)):
            raise NodeStoreError(f"state node {h.hex()} is malformed")
        return data

    def _is_leaf(self, sub: _Sub) -> bool:
        h, is_leaf = sub
        if is_leaf is not None:
            return is_leaf
        return h != EMPTY and self._load(h)[0] == _LEAF

    def get(self, root: bytes, key: bytes) -> bytes | None:
        """The value at `key` under `root`, or None if the key is absent."""
        _check_key(key)
        h, depth = root, 0
        while h != EMPTY:
            data = self._load(h)
            if data[0] == _LEAF:
                return data[1 + KEY_SIZE:] if data[1:1 + KEY_SIZE] == key else None
            h = data[33:65] if bit(key, depth) else data[1:33]
            depth += 1
        return None

    def prove(self, root: bytes, key: bytes) -> StateProof:
        """The shortest proof of what `root` holds at `key`: its value, or its absence."""
        _check_key(key)
        siblings: list[bytes] = []
        h = root
        while h != EMPTY:
            data = self._load(h)
            if data[0] == _LEAF:
                leaf_key, value = data[1:1 + KEY_SIZE], data[1 + KEY_SIZE:]
                if leaf_key == key:
                    return StateProof(key, value, tuple(siblings), None, None)
                return StateProof(key, None, tuple(siblings), leaf_key, value_hash(value))
            left, right = data[1:33], data[33:65]
            if bit(key, len(siblings)):
                siblings.append(left)
                h = right
            else:
                siblings.append(right)
                h = left
        return StateProof(key, None, tuple(siblings), None, None)

    def leaf(self, h: bytes) -> tuple[bytes, bytes]:
        """The (key, value) of the stored leaf named `h`; NodeStoreError if `h` names no stored leaf."""
        data = self._load(h)
        if data[0] != _LEAF:
            raise NodeStoreError(f"state node {h.hex()} is not a leaf")
        return data[1:1 + KEY_SIZE], data[1 + KEY_SIZE:]

    def leaves(self, root: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, leaf hash) of the tree under `root`, in key order: one read of each of its nodes."""
        stack = [root]
        while stack:
            h = stack.pop()
            if h == EMPTY:
                continue
            data = self._load(h)
            if data[0] == _LEAF:
                yield data[1:1 + KEY_SIZE], h
            else:
                stack.append(data[33:65])
                stack.append(data[1:33])  # popped first: left before right

    # --- writing --------------------------------------------------------------------------------------
    def update(self, root: bytes, key: bytes, value: bytes | None) -> bytes:
        """The root after setting `key` to `value` (None deletes). `root` itself stays valid."""
        return self.update_many(root, {key: value})

    def update_many(self, root: bytes, items: Mapping[bytes, bytes | None]) -> bytes:
        """The root after applying every (key, value) in `items` (value None deletes), in one pass.

        Doing them together writes each new node once, instead of once per item for nodes near the root.
        """
        for key, value in items.items():
            _check_key(key)
            if value is not None:
                if not isinstance(value, bytes):
                    raise ValueError("a state value is bytes")
                if len(value) > MAX_VALUE_BYTES:
                    raise ValueError(f"a state value is at most {MAX_VALUE_BYTES} bytes")
        if not items:
            return root
        return self._update((root, None), 0, sorted(items.items()))[0]

    def _update(self, sub: _Sub, depth: int, items: list[tuple[bytes, bytes | None]]) -> _Sub:
        """`sub`, the subtree at `depth`, after applying `items` (sorted by key, all under this subtree)."""
        if not items:
            return sub
        if len(items) == 1:
            return self._update_one(sub, depth, *items[0])
        h = sub[0]
        if h == EMPTY:
            return self._build(depth, {k: v for k, v in items if v is not None})
        data = self._load(h)
        if data[0] == _LEAF:
            # The subtree is one leaf: merge it with the items and rebuild it from scratch.
            old_key, old_value = data[1:1 + KEY_SIZE], data[1 + KEY_SIZE:]
            entries = {old_key: old_value}
            for k, v in items:
                if v is None:
                    entries.pop(k, None)
                else:
                    entries[k] = v
            if entries == {old_key: old_value}:
                return h, True
            return self._build(depth, entries)
        left, right = data[1:33], data[33:65]
        # Items are sorted and share their first `depth` bits, so those going left (bit 0 at this depth)
        # come first, and the first going right is the first at or above that prefix, then a 1, then 0s.
        byte, b = depth >> 3, 0x80 >> (depth & 7)
        k0 = items[0][0]
        split = k0[:byte] + bytes(((k0[byte] & -b & 0xFF) | b,)) + bytes(KEY_SIZE - 1 - byte)
        cut = bisect_left(items, (split,))
        new_left = self._update((left, None), depth + 1, items[:cut])
        new_right = self._update((right, None), depth + 1, items[cut:])
        if new_left[0] == left and new_right[0] == right:
            return h, False
        return self._join(new_left, new_right)

    def _update_one(self, sub: _Sub, depth: int, key: bytes, value: bytes | None) -> _Sub:
        """`_update` with a single item, as a loop: below the top levels of a block's update nearly every
        subtree holds one changed key. The nodes are those the recursion makes, less the re-write of an
        existing leaf that a new key lands on."""
        h = sub[0]
        path: list[tuple[bytes, int]] = []  # (untouched sibling, whether the key went right)
        d = depth
        while h != EMPTY:
            data = self._load(h)
            if data[0] == _LEAF:
                old_key, old_value = data[1:1 + KEY_SIZE], data[1 + KEY_SIZE:]
                if old_key == key:
                    if value == old_value:
                        return sub
                    entries = {key: value} if value is not None else {}
                    break
                if value is None:
                    return sub  # deleting a key the tree does not hold
                # A new key lands on another's leaf: the two leaves go below a new inner node. The old
                # leaf is in the store already, under `h`: neither hashed nor written again.
                new = self._pair(d, old_key, h, key, self._put_leaf(key, value))
                return self._rejoin(new, path)
            if (key[d >> 3] >> (7 - (d & 7))) & 1:  # bit(key, d): the key goes right
                path.append((data[1:33], 1))
                h = data[33:65]
            else:
                path.append((data[33:65], 0))
                h = data[1:33]
            d += 1
        else:
            if value is None:
                return sub
            entries = {key: value}
        return self._rejoin(self._build(d, entries), path)

    def _rejoin(self, new: _Sub, path: list[tuple[bytes, int]]) -> _Sub:
        """The subtree `new`, rejoined with the untouched siblings of `path`, bottom up."""
        for sibling, right in reversed(path):
            if new[0] != EMPTY and sibling != EMPTY:  # nothing can collapse: a plain inner node
                new = (self._put_inner(sibling, new[0]) if right else self._put_inner(new[0], sibling)), False
            else:
                new = self._join((sibling, None), new) if right else self._join(new, (sibling, None))
        return new

    def _build(self, depth: int, entries: dict[bytes, bytes]) -> _Sub:
        """A fresh subtree at `depth` holding exactly `entries` (keys sharing their first `depth` bits)."""
        if not entries:
            return EMPTY, False
        if len(entries) == 1:
            ((key, value),) = entries.items()
            return self._put_leaf(key, value), True
        if len(entries) == 2:
            (k1, v1), (k2, v2) = entries.items()
            return self._pair(depth, k1, self._put_leaf(k1, v1), k2, self._put_leaf(k2, v2))
        byte, shift = depth >> 3, 7 - (depth & 7)  # bit(k, depth) is k[byte] >> shift & 1
        left = {k: v for k, v in entries.items() if not k[byte] >> shift & 1}
        right = {k: v for k, v in entries.items() if k[byte] >> shift & 1}
        # Two or more keys always part within 256 bits, so this recursion ends by depth 255.
        return self._join(self._build(depth + 1, left), self._build(depth + 1, right))

    def _pair(self, depth: int, k1: bytes, h1: bytes, k2: bytes, h2: bytes) -> _Sub:
        """The subtree at `depth` holding exactly the two stored leaves (k1 under h1, k2 under h2): they
        part at bit p, where an inner node joins them; above it, up to `depth`, a chain of inner nodes
        with one empty side (two leaves never collapse)."""
        p = 8 * KEY_SIZE - (int.from_bytes(k1, "big") ^ int.from_bytes(k2, "big")).bit_length()
        h = self._put_inner(h2, h1) if bit(k1, p) else self._put_inner(h1, h2)
        for level in range(p - 1, depth - 1, -1):
            h = self._put_inner(EMPTY, h) if bit(k1, level) else self._put_inner(h, EMPTY)
        return h, False

    def _join(self, left: _Sub, right: _Sub) -> _Sub:
        """The subtree with these two children, compressed: no leaves is EMPTY, one leaf is that leaf."""
        if left[0] == EMPTY and (right[0] == EMPTY or self._is_leaf(right)):
            return right[0], right[0] != EMPTY
        if right[0] == EMPTY and self._is_leaf(left):
            return left[0], True
        return self._put_inner(left[0], right[0]), False

    def _put_leaf(self, key: bytes, value: bytes) -> bytes:
        """Store the leaf of (key, value); its hash: `leaf_hash(key, value)`, spelt out here because its
        two nested helper calls cost more than the hashing (one new leaf per new key of a block)."""
        h = _sha256(b"\x00" + key + _sha256(value).digest()).digest()
        self.store.put_node(h, b"\x00" + key + value)
        return h

    def _put_inner(self, left: bytes, right: bytes) -> bytes:
        """Store the inner node over these children; its hash (`node_hash`: the SHA-256 of its encoding)."""
        data = b"\x01" + left + right
        h = _sha256(data).digest()
        self.store.put_node(h, data)
        return h


_sha256 = hashlib.sha256
