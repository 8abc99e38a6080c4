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

The update (`_Update`) also exists in C, storage/_smt_native.c, which makes the same nodes several
times faster; `update_many` uses it when the install could compile it (see `_native`).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Protocol

from ler.native import load
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

    def put_nodes(self, nodes: Mapping[bytes, bytes]) -> None: ...


class MemoryNodeStore:
    """A NodeStore in a dict: for tests, and for staging a block's writes before they are committed."""

    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}

    def get_node(self, h: bytes) -> bytes | None:
        return self.nodes.get(h)

    def put_nodes(self, nodes: Mapping[bytes, bytes]) -> None:
        self.nodes.update(nodes)

    def __len__(self) -> int:
        return len(self.nodes)


class NodeStoreError(Exception):
    """A node the tree needs is missing or malformed: a root the store never held, or a damaged store."""


def _checked(h: bytes, data: bytes | None) -> bytes:
    """`data`, read from the store for node `h`, if it is a well-formed node."""
    if data is None:
        raise NodeStoreError(f"state node {h.hex()} is not in the store")
    n = len(data)
    if not ((n == _NODE_LEN and data[0] == _NODE) or (n >= _LEAF_MIN_LEN and data[0] == _LEAF)):
        raise NodeStoreError(f"state node {h.hex()} is malformed")
    return data


_MAX_DEPTH = 8 * KEY_SIZE


def _too_deep(h: bytes) -> NodeStoreError:
    """A path deeper than keys have bits: only a damaged or altered store holds one (an inner node stored
    under a hash one of its children repeats, say)."""
    return NodeStoreError(f"state node {h.hex()} lies deeper than a key has bits: the store is damaged")


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
        return _checked(h, self.store.get_node(h))

    def get(self, root: bytes, key: bytes) -> bytes | None:
        """The value at `key` under `root`, or None if the key is absent."""
        _check_key(key)
        h, depth = root, 0
        while h != EMPTY:
            data = self._load(h)
            if data[0] == _LEAF:
                return data[1 + KEY_SIZE:] if data[1:1 + KEY_SIZE] == key else None
            if depth >= _MAX_DEPTH:
                raise _too_deep(h)
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
            if len(siblings) >= _MAX_DEPTH:
                raise _too_deep(h)
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
        stack = [(root, 0)]
        while stack:
            h, depth = stack.pop()
            if h == EMPTY:
                continue
            data = self._load(h)
            if data[0] == _LEAF:
                yield data[1:1 + KEY_SIZE], h
            elif depth >= _MAX_DEPTH:
                raise _too_deep(h)
            else:
                stack.append((data[33:65], depth + 1))
                stack.append((data[1:33], depth + 1))  # popped first: left before right

    # --- writing --------------------------------------------------------------------------------------
    def update(self, root: bytes, key: bytes, value: bytes | None) -> bytes:
        """The root after setting `key` to `value` (None deletes). `root` itself stays valid."""
        return self.update_many(root, {key: value})

    def update_many(self, root: bytes, items: Mapping[bytes, bytes | None]) -> bytes:
        """The root after applying every (key, value) in `items` (value None deletes), in one pass.

        Doing them together writes each new node once, instead of once per item for nodes near the root.
        The new nodes reach the store together, once the new root is known.
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
        if _native is not None:
            new_root, new = _native.update(self.store.get_node, _checked, root, sorted(items.items()))
        else:
            update = _Update(self.store)
            new_root, new = update.apply((root, None), 0, sorted(items.items()))[0], update.new
        if new:
            self.store.put_nodes(new)
        return new_root


class _Update:
    """One `update_many` pass: it reads the store through `get` and keeps the nodes it makes in `new`.

    It is the tree's hot path (every block builds or checks one over all the keys it changes), so the
    node encodings and hashes are spelt out in the loops rather than called for: `_inner` and `_leaf`
    say what they are. The nodes are those of the recursive definition, less the re-write of an existing
    leaf that a new key lands on.
    """

    __slots__ = ("get", "new")

    def __init__(self, store: NodeStore) -> None:
        self.get = store.get_node
        self.new: dict[bytes, bytes] = {}

    def _load(self, h: bytes) -> bytes:
        return _checked(h, self.get(h))

    def _is_leaf(self, sub: _Sub) -> bool:
        h, is_leaf = sub
        if is_leaf is not None:
            return is_leaf
        return h != EMPTY and self._load(h)[0] == _LEAF

    def apply(self, sub: _Sub, depth: int, items: list[tuple[bytes, bytes | None]]) -> _Sub:
        """`sub`, the subtree at `depth`, after applying `items` (sorted by key, all under this subtree)."""
        if len(items) == 1:
            return self._apply_one(sub, depth, *items[0])
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
        if depth >= _MAX_DEPTH:
            raise _too_deep(h)
        left, right = data[1:33], data[33:65]
        # Items are sorted and share their first `depth` bits, so those going left (bit 0 at this depth)
        # come first, and the first going right is the first at or above that prefix, then a 1, then 0s.
        byte, b = depth >> 3, 0x80 >> (depth & 7)
        k0 = items[0][0]
        if k0[byte] & b:
            cut = 0  # all go right
        elif items[-1][0][byte] & b:
            split = k0[:byte] + bytes(((k0[byte] & -b & 0xFF) | b,)) + bytes(KEY_SIZE - 1 - byte)
            cut = bisect_left(items, (split,))
        else:
            cut = len(items)  # all go left
        new_left = self.apply((left, None), depth + 1, items[:cut]) if cut else (left, None)
        new_right = self.apply((right, None), depth + 1, items[cut:]) if cut < len(items) else (right, None)
        if new_left[0] == left and new_right[0] == right:
            return h, False
        return self._join(new_left, new_right)

    def _apply_one(self, sub: _Sub, depth: int, key: bytes, value: bytes | None) -> _Sub:
        """`apply` with a single item, as a loop: below the top levels of a block's update nearly every
        subtree holds one changed key."""
        h = sub[0]
        get = self.get
        path: list[tuple[bytes, int]] = []  # (untouched sibling, whether the key went right)
        d = depth
        while h != EMPTY:
            data = get(h)
            if data is None or len(data) != _NODE_LEN or data[0] != _NODE:
                data = _checked(h, data)  # a leaf, or it raises
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
                return self._rejoin(self._pair(d, old_key, h, key, self._leaf(key, value)), path)
            if d >= _MAX_DEPTH:
                raise _too_deep(h)
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
            return self._rejoin((self._leaf(key, value), True), path)
        return self._rejoin(self._build(d, entries), path)

    def _rejoin(self, sub: _Sub, path: list[tuple[bytes, int]]) -> _Sub:
        """The subtree `sub`, rejoined with the untouched siblings of `path`, bottom up."""
        h, is_leaf = sub
        new, sha = self.new, _sha256
        for sibling, right in reversed(path):
            if h != EMPTY and sibling != EMPTY:  # nothing can collapse: a plain inner node (_inner)
                data = b"\x01" + sibling + h if right else b"\x01" + h + sibling
                h = sha(data).digest()
                new[h] = data
                is_leaf = False
            elif right:
                h, is_leaf = self._join((sibling, None), (h, is_leaf))
            else:
                h, is_leaf = self._join((h, is_leaf), (sibling, None))
        return h, is_leaf

    def _build(self, depth: int, entries: dict[bytes, bytes]) -> _Sub:
        """A fresh subtree at `depth` holding exactly `entries` (keys sharing their first `depth` bits)."""
        if not entries:
            return EMPTY, False
        if len(entries) == 1:
            ((key, value),) = entries.items()
            return self._leaf(key, value), True
        if len(entries) == 2:
            (k1, v1), (k2, v2) = entries.items()
            return self._pair(depth, k1, self._leaf(k1, v1), k2, self._leaf(k2, v2))
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
        h = self._inner(h2, h1) if bit(k1, p) else self._inner(h1, h2)
        for level in range(p - 1, depth - 1, -1):
            h = self._inner(EMPTY, h) if bit(k1, level) else self._inner(h, EMPTY)
        return h, False

    def _join(self, left: _Sub, right: _Sub) -> _Sub:
        """The subtree with these two children, compressed: no leaves is EMPTY, one leaf is that leaf."""
        if left[0] == EMPTY and (right[0] == EMPTY or self._is_leaf(right)):
            return right[0], right[0] != EMPTY
        if right[0] == EMPTY and self._is_leaf(left):
            return left[0], True
        return self._inner(left[0], right[0]), False

    def _leaf(self, key: bytes, value: bytes) -> bytes:
        """A new leaf of (key, value); its hash, `leaf_hash(key, value)`."""
        h = _sha256(b"\x00" + key + _sha256(value).digest()).digest()
        self.new[h] = b"\x00" + key + value
        return h

    def _inner(self, left: bytes, right: bytes) -> bytes:
        """A new inner node over these children; its hash, `node_hash(left, right)`."""
        data = b"\x01" + left + right
        h = _sha256(data).digest()
        self.new[h] = data
        return h

_sha256 = hashlib.sha256


_native = load("storage._smt_native", "LER_TREE_IN_PYTHON")  # `_Update.apply` from a root in C
