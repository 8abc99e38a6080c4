"""The persisted history tree gives exactly ler.merkle's roots and proofs, from O(log n) reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import plyvel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler import merkle
from storage.history import HistoryError, HistoryTree, StagedWrites

PREFIX = b"hist/"


class DictKV(dict[bytes, bytes]):
    """The smallest store the tree runs on; counts reads so the tests can check the cost."""

    reads = 0

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        self.reads += 1
        return super().get(key, default)

    def put(self, key: bytes, value: bytes) -> None:
        self[key] = value


def leaves_of(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(8, "big")).digest() for i in range(n)]


def build(leaves: list[bytes]) -> tuple[DictKV, HistoryTree]:
    kv = DictKV()
    tree = HistoryTree(kv, PREFIX)
    for i, leaf in enumerate(leaves):
        tree.append(i, leaf)
    return kv, tree


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=140), st.binary(max_size=4))
def test_roots_equal_merkle_for_every_size(n: int, salt: bytes) -> None:
    leaves = leaves_of(n, salt)
    _, tree = build(leaves)
    for size in range(n + 1):
        assert tree.root(size) == merkle.root(leaves[:size])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_equals_merkle(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=300), label="leaves")
    leaves = leaves_of(n)
    _, tree = build(leaves)
    for _ in range(5):
        size = data.draw(st.integers(min_value=1, max_value=n), label="size")
        index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
        proof = tree.inclusion_proof(index, size)
        assert proof == merkle.inclusion_proof(leaves[:size], index)
        assert merkle.verify_inclusion(merkle.leaf_hash(leaves[index]), index, size, proof, tree.root(size))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_equals_merkle(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=0, max_value=300), label="leaves")
    leaves = leaves_of(n)
    _, tree = build(leaves)
    for _ in range(5):
        new = data.draw(st.integers(min_value=0, max_value=n), label="new size")
        old = data.draw(st.integers(min_value=0, max_value=new), label="old size")
        proof = tree.consistency_proof(old, new)
        assert proof == merkle.consistency_proof(leaves[:new], old)
        assert merkle.verify_consistency(old, new, proof, tree.root(old), tree.root(new))


def test_every_inclusion_and_consistency_for_small_trees() -> None:
    # Exhaustive where hypothesis samples: every (index, size) and (old, new) pair up to 33 leaves.
    leaves = leaves_of(33)
    _, tree = build(leaves)
    for new in range(34):
        for old in range(new + 1):
            assert tree.consistency_proof(old, new) == merkle.consistency_proof(leaves[:new], old)
        for index in range(new):
            assert tree.inclusion_proof(index, new) == merkle.inclusion_proof(leaves[:new], index)


def test_reads_are_logarithmic() -> None:
    n = 5000
    leaves = leaves_of(n)
    kv, tree = build(leaves)
    for size in (1, 2, 3, 1023, 1024, 1025, 4097, 4999, 5000):
        kv.reads = 0
        tree.root(size)
        assert kv.reads == bin(size).count("1")  # one read per perfect subtree
        for index in (0, size // 2, size - 1):
            kv.reads = 0
            tree.inclusion_proof(index, size)
            assert kv.reads <= 2 * size.bit_length()
        kv.reads = 0
        tree.consistency_proof(size // 3, size)
        assert kv.reads <= 2 * size.bit_length() + 2
    # Appending reads the leaf before it, checks its own slot and one left sibling per completed subtree.
    kv.reads = 0
    tree.append(n, b"x")
    assert kv.reads <= 2 + n.bit_length()


def test_staged_appends_read_their_own_writes() -> None:
    # Several leaves appended before their batch is written (as a block commit stages them) must see
    # each other's nodes, and nothing may reach the base store until the batch is written.
    base = DictKV()
    leaves = leaves_of(11)
    HistoryTree(base, PREFIX).append(0, leaves[0])
    staged = StagedWrites(base)
    tree = HistoryTree(staged, PREFIX)
    for i in range(1, 11):
        tree.append(i, leaves[i])
    assert len(base) == 1
    assert tree.root(11) == merkle.root(leaves)

    class Batch:
        def put(self, key: bytes, value: bytes) -> None:
            base[key] = value

        def delete(self, key: bytes) -> None:
            base.pop(key, None)

    staged.write_to(Batch())
    assert HistoryTree(base, PREFIX).root(11) == merkle.root(leaves)


def test_refusals() -> None:
    kv, tree = build(leaves_of(5))
    with pytest.raises(HistoryError, match="leaf 6"):
        tree.append(7, b"gap")
    with pytest.raises(HistoryError, match="already stored"):
        tree.append(3, b"overwrite")
    with pytest.raises(HistoryError, match="not stored"):
        tree.root(6)  # more leaves than appended
    with pytest.raises(HistoryError):
        tree.inclusion_proof(0, 9)
    with pytest.raises(ValueError):
        tree.inclusion_proof(5, 5)
    with pytest.raises(ValueError):
        tree.inclusion_proof(-1, 5)
    with pytest.raises(ValueError):
        tree.consistency_proof(4, 3)
    with pytest.raises(ValueError):
        tree.root(-1)
    assert tree.root(0) == merkle.EMPTY_ROOT
    assert tree.consistency_proof(0, 5) == [] and tree.consistency_proof(5, 5) == []
    kv[PREFIX + bytes((0,)) + (2).to_bytes(8, "big")] = b"short"
    with pytest.raises(HistoryError, match="malformed"):
        tree.inclusion_proof(3, 4)


def test_persists_in_leveldb_across_reopen(tmp_path: Path) -> None:
    leaves = leaves_of(77, b"db")
    path = str(tmp_path / "db")
    db = plyvel.DB(path, create_if_missing=True)
    # Append in batches of varying size, each written atomically like a block.
    i = 0
    for chunk in (1, 1, 5, 13, 20, 37):
        staged = StagedWrites(db)
        tree = HistoryTree(staged, PREFIX)
        for _ in range(chunk):
            tree.append(i, leaves[i])
            i += 1
        batch = db.write_batch(sync=True)
        staged.write_to(batch)
        batch.write()
    assert i == len(leaves)
    db.close()

    db = plyvel.DB(path)
    try:
        tree = HistoryTree(db, PREFIX)
        for size in range(len(leaves) + 1):
            assert tree.root(size) == merkle.root(leaves[:size])
        for size, index in ((77, 0), (77, 76), (64, 63), (33, 32), (50, 17)):
            assert tree.inclusion_proof(index, size) == merkle.inclusion_proof(leaves[:size], index)
        for old, new in ((1, 77), (32, 77), (33, 64), (50, 76)):
            assert tree.consistency_proof(old, new) == merkle.consistency_proof(leaves[:new], old)
        # Exactly one node per perfect subtree: n leaves + n - popcount(n) inner nodes.
        stored = sum(1 for _ in db.iterator(prefix=PREFIX, include_value=False))
        assert stored == 2 * 77 - bin(77).count("1")
    finally:
        db.close()
