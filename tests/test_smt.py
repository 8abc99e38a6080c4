"""The state's sparse Merkle tree: the hashing rules, the tree over a node store, and its proofs."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler.errors import DecodeError
from ler.smt import (
    EMPTY,
    StateProof,
    bit,
    key_for,
    leaf_hash,
    leaf_hash_from_value_hash,
    node_hash,
    state_root_from_proof,
    verify_state_proof,
)
from storage.smt import MemoryNodeStore, NodeStoreError, SparseMerkleTree


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def key(first: int, last: int = 0) -> bytes:
    """A key with the given first and last bytes and zeros between."""
    return bytes([first]) + bytes(30) + bytes([last])


def ref_root(entries: dict[bytes, bytes], depth: int = 0) -> bytes:
    """The root straight from the specification's compression rule."""
    if not entries:
        return EMPTY
    if len(entries) == 1:
        ((k, v),) = entries.items()
        return leaf_hash(k, v)
    left = {k: v for k, v in entries.items() if bit(k, depth) == 0}
    right = {k: v for k, v in entries.items() if bit(k, depth) == 1}
    return node_hash(ref_root(left, depth + 1), ref_root(right, depth + 1))


def new_tree() -> SparseMerkleTree:
    return SparseMerkleTree(MemoryNodeStore())


def build(entries: dict[bytes, bytes]) -> tuple[SparseMerkleTree, bytes]:
    tree = new_tree()
    return tree, tree.update_many(EMPTY, entries)


def rand_keys(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


# --- hashing rules ------------------------------------------------------------------------------------

def test_bits_count_from_the_most_significant_bit_of_the_first_byte() -> None:
    k = bytes([0b1010_0000]) + bytes(30) + b"\x01"
    assert [bit(k, i) for i in range(4)] == [1, 0, 1, 0]
    assert bit(k, 255) == 1
    assert bit(k, 254) == 0


def test_hash_formulas() -> None:
    k, v = key(7), b"value"
    assert leaf_hash(k, v) == sha(b"\x00" + k + sha(v))
    assert leaf_hash_from_value_hash(k, sha(v)) == leaf_hash(k, v)
    assert node_hash(k, EMPTY) == sha(b"\x01" + k + EMPTY)
    assert EMPTY == bytes(32)


def test_key_for() -> None:
    assert key_for("record", b"abc") == sha(b"record\x00abc")
    # the separator keeps namespace and ident from sliding into each other
    assert key_for("ab", b"c") != key_for("a", b"bc")
    assert len(key_for("issuer", b"")) == 32


def test_roots_follow_the_compression_rule() -> None:
    tree = new_tree()
    a, b, c = key(0x00), key(0x10), key(0xFF)
    la, lb, lc = leaf_hash(a, b"A"), leaf_hash(b, b"B"), leaf_hash(c, b"C")
    r1 = tree.update(EMPTY, a, b"A")
    assert r1 == la  # a lone leaf is the root
    r2 = tree.update(r1, b, b"B")
    # a and b first differ at bit 3: three single-child nodes above their split
    assert r2 == node_hash(node_hash(node_hash(node_hash(la, lb), EMPTY), EMPTY), EMPTY)
    r3 = tree.update(r2, c, b"C")
    assert r3 == node_hash(node_hash(node_hash(node_hash(la, lb), EMPTY), EMPTY), lc)
    # deleting b leaves a alone in the left half: it rises to depth 1
    r4 = tree.update(r3, b, None)
    assert r4 == node_hash(la, lc)
    assert tree.update(r4, c, None) == la
    assert tree.update(la, a, None) == EMPTY


# --- reading and updating -----------------------------------------------------------------------------

def test_empty_tree() -> None:
    tree = new_tree()
    k = key(1)
    assert tree.get(EMPTY, k) is None
    proof = tree.prove(EMPTY, k)
    assert proof == StateProof(k, None, (), None, None)
    assert verify_state_proof(EMPTY, proof)
    assert tree.update(EMPTY, k, None) == EMPTY


def test_get_update_delete_reinsert() -> None:
    keys = rand_keys(60)
    tree = new_tree()
    root = EMPTY
    for n, k in enumerate(keys):
        root = tree.update(root, k, b"v%d" % n)
    for n, k in enumerate(keys):
        assert tree.get(root, k) == b"v%d" % n
    assert tree.get(root, key(0xAB)) is None
    before = root
    root = tree.update(root, keys[10], b"changed")
    assert tree.get(root, keys[10]) == b"changed"
    assert tree.update(root, keys[10], b"v10") == before
    without = tree.update(before, keys[10], None)
    assert tree.get(without, keys[10]) is None
    assert without == ref_root({k: b"v%d" % n for n, k in enumerate(keys) if n != 10})
    assert tree.update(without, keys[10], b"v10") == before


def test_deletes_walk_back_through_every_earlier_root() -> None:
    keys = rand_keys(120, seed=2)
    tree = new_tree()
    roots = [EMPTY]
    for n, k in enumerate(keys):
        roots.append(tree.update(roots[-1], k, bytes([n]) * (n % 5)))
    root = roots[-1]
    for n in range(len(keys) - 1, -1, -1):
        root = tree.update(root, keys[n], None)
        assert root == roots[n]


def test_old_roots_stay_readable_and_provable() -> None:
    keys = rand_keys(40, seed=3)
    tree = new_tree()
    history = []
    root = EMPTY
    for step in range(5):
        root = tree.update_many(root, {k: b"%d:%d" % (step, n) for n, k in enumerate(keys) if n % 5 >= step})
        history.append(root)
    for step, old_root in enumerate(history):
        for n, k in enumerate(keys):
            expected = b"%d:%d" % (min(step, n % 5), n)  # the last step that wrote this key
            assert tree.get(old_root, k) == expected
            proof = tree.prove(old_root, k)
            assert proof.value == expected
            assert verify_state_proof(old_root, proof)


def test_writes_are_minimal() -> None:
    tree, root = build({k: b"x" for k in rand_keys(50)})
    store = tree.store
    assert isinstance(store, MemoryNodeStore)
    size = len(store)
    assert tree.update(root, rand_keys(50)[0], b"x") == root  # same value: no new nodes
    assert tree.update(root, key(0x42), None) == root  # deleting an absent key: no new nodes
    assert tree.update_many(root, {}) == root
    assert len(store) == size


def test_bad_input_is_refused() -> None:
    tree = new_tree()
    with pytest.raises(ValueError):
        tree.update(EMPTY, b"short", b"v")
    with pytest.raises(ValueError):
        tree.update(EMPTY, key(1), bytes(65537))
    with pytest.raises(ValueError):
        tree.get(EMPTY, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(NodeStoreError):
        tree.get(sha(b"no such root"), key(1))
    with pytest.raises(NodeStoreError):
        tree.prove(sha(b"no such root"), key(1))


class CountingStore(MemoryNodeStore):
    __slots__ = ("gets", "puts")

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0
        self.gets = 0

    def put_nodes(self, nodes: Mapping[bytes, bytes]) -> None:
        self.puts += len(nodes)
        super().put_nodes(nodes)

    def get_node(self, h: bytes) -> bytes | None:
        self.gets += 1
        return super().get_node(h)


def test_an_update_touches_o_log_n_nodes() -> None:
    store = CountingStore()
    tree = SparseMerkleTree(store)
    keys = rand_keys(5000, seed=4)
    root = tree.update_many(EMPTY, {k: b"v" for k in keys})
    for change in ({rand_keys(1, seed=5)[0]: b"new"}, {keys[123]: b"other"}, {keys[456]: None}):
        store.puts = store.gets = 0
        root = tree.update_many(root, change)
        # depth in a tree of 5000 random keys is about log2(5000) ~ 13, far from 256
        assert store.puts <= 64, store.puts
        assert store.gets <= 64, store.gets


def test_keys_that_part_only_at_the_last_bit() -> None:
    a, b = key(0x5A, 0b0), key(0x5A, 0b1)
    tree, root = build({a: b"A", b: b"B"})
    assert root == ref_root({a: b"A", b: b"B"})
    for k in (a, b):
        proof = tree.prove(root, k)
        assert len(proof.siblings) == 256
        assert verify_state_proof(root, proof)
    absent = key(0x5A, 0b10)  # parts from both at bit 254
    proof = tree.prove(root, absent)
    assert proof.value is None and proof.other_key is None and len(proof.siblings) == 255
    assert verify_state_proof(root, proof)
    assert tree.update(root, a, None) == leaf_hash(b, b"B")


@settings(max_examples=60, deadline=None)
@given(entries=st.dictionaries(st.binary(min_size=32, max_size=32), st.binary(max_size=20), max_size=40),
       seed=st.integers(0, 2**32))
def test_root_is_independent_of_insertion_order(entries: dict[bytes, bytes], seed: int) -> None:
    expected = ref_root(entries)
    tree = new_tree()
    assert tree.update_many(EMPTY, entries) == expected
    order = list(entries.items())
    random.Random(seed).shuffle(order)
    root = EMPTY
    for k, v in order:
        root = tree.update(root, k, v)
    assert root == expected


@settings(max_examples=60, deadline=None)
@given(entries=st.dictionaries(st.binary(min_size=32, max_size=32), st.binary(max_size=20), max_size=30),
       changes=st.dictionaries(st.binary(min_size=32, max_size=32),
                               st.none() | st.binary(max_size=20), max_size=30),
       data=st.data())
def test_batch_updates_match_the_specification(entries: dict[bytes, bytes],
                                               changes: dict[bytes, bytes | None],
                                               data: st.DataObject) -> None:
    # some changes hit existing keys, so updates and deletes of present keys are covered
    present = sorted(entries)
    for k in data.draw(st.lists(st.sampled_from(present), max_size=10)) if present else []:
        changes[k] = data.draw(st.none() | st.binary(max_size=20))
    tree, root = build(entries)
    after = dict(entries)
    for k, v in changes.items():
        if v is None:
            after.pop(k, None)
        else:
            after[k] = v
    new_root = tree.update_many(root, changes)
    assert new_root == ref_root(after)
    for k in set(entries) | set(changes):
        assert tree.get(new_root, k) == after.get(k)
        assert tree.get(root, k) == entries.get(k)
        proof = tree.prove(new_root, k)
        assert proof.value == after.get(k)
        assert verify_state_proof(new_root, proof)
        assert verify_state_proof(root, proof) == (new_root == root)


def clustered_keys(rng: random.Random, n: int) -> list[bytes]:
    """Keys that share long prefixes (a few random bits, then zeros, then a random tail bit or byte), so
    that paths run deep, leaves split far down and deletions collapse long chains."""
    out = []
    for _ in range(n):
        k = bytearray(32)
        k[0] = rng.choice((0x00, 0x01, 0x80, 0xFF))
        k[rng.randrange(1, 32)] = rng.choice((0x01, 0x80, rng.randrange(256)))
        out.append(bytes(k))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_single_and_batch_updates_agree_with_the_specification_on_deep_paths(seed: int) -> None:
    """Each update on its own (one changed key: the tree's loop) and the same updates as one batch (the
    recursion down to one key per subtree) give the specification's root, node for node."""
    rng = random.Random(seed)
    pool = clustered_keys(rng, 24)
    state: dict[bytes, bytes] = {}
    single, batch = SparseMerkleTree(CountingStore()), SparseMerkleTree(CountingStore())
    root_single = root_batch = EMPTY
    for _ in range(6):
        changes: dict[bytes, bytes | None] = {}
        for k in rng.sample(pool, rng.randrange(1, 12)):
            changes[k] = None if rng.random() < 0.4 else rng.choice((b"", b"v", bytes([rng.randrange(9)])))
        for k, v in changes.items():
            root_single = single.update(root_single, k, v)
        root_batch = batch.update_many(root_batch, changes)
        for k, v in changes.items():
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
        assert root_single == root_batch == ref_root(state)
        for k in pool:
            assert single.get(root_single, k) == state.get(k)
            assert verify_state_proof(root_single, single.prove(root_single, k))
    # What the single updates wrote is what they needed: an update that changes nothing writes nothing.
    store = single.store
    assert isinstance(store, CountingStore)
    store.puts = 0
    for k in pool:
        assert single.update(root_single, k, state[k] if k in state else None) == root_single
    assert store.puts == 0


# --- proofs -------------------------------------------------------------------------------------------

A, B = key(0x00), key(0x80)
NEAR_A = key(0x40)  # shares bit 0 with A: lands on A's leaf
C, D = key(0x00, 1), key(0x10)  # C and D part at bit 3


def test_membership_proof() -> None:
    tree, root = build({A: b"a", B: b"b"})
    proof = tree.prove(root, A)
    assert proof == StateProof(A, b"a", (leaf_hash(B, b"b"),), None, None)
    assert proof.is_membership and proof.depth == 1
    assert state_root_from_proof(proof) == root
    assert verify_state_proof(root, proof)


def test_non_membership_by_another_leaf() -> None:
    tree, root = build({A: b"a", B: b"b"})
    proof = tree.prove(root, NEAR_A)
    assert proof == StateProof(NEAR_A, None, (leaf_hash(B, b"b"),), A, sha(b"a"))
    assert not proof.is_membership
    assert verify_state_proof(root, proof)


def test_non_membership_by_an_empty_subtree() -> None:
    tree, root = build({C: b"c", D: b"d"})
    proof = tree.prove(root, NEAR_A)  # bit 0 = 0 like C and D, bit 1 = 1 unlike both: an empty subtree
    assert proof == StateProof(NEAR_A, None, (EMPTY, ref_root({C: b"c", D: b"d"}, 2)), None, None)
    assert verify_state_proof(root, proof)


def _flip(b: bytes, i: int) -> bytes:
    return (int.from_bytes(b, "big") ^ (1 << (255 - i))).to_bytes(32, "big")


def _tamperings(proof: StateProof) -> list[StateProof]:
    """Ways to damage a good proof that must all be caught."""
    r = dataclasses.replace
    out = [
        r(proof, siblings=(*proof.siblings, EMPTY)),
        r(proof, siblings=(EMPTY, *proof.siblings)),
        r(proof, siblings=(*proof.siblings, sha(b"x"))),
    ]
    if proof.value is not None:
        out.append(r(proof, key=_flip(proof.key, 255)))
    if proof.siblings:
        # Only a key on another path: a non-membership proof legitimately covers every key that shares
        # the first d bits (and is not the other leaf's).
        out.append(r(proof, key=_flip(proof.key, 0)))
    if proof.siblings:
        out.append(r(proof, siblings=proof.siblings[:-1]))
        out.append(r(proof, siblings=proof.siblings[1:]))
        for n, s in enumerate(proof.siblings):
            for i in (0, 100, 255):
                out.append(r(proof, siblings=(*proof.siblings[:n], _flip(s, i), *proof.siblings[n + 1:])))
    if proof.value is not None:
        out.append(r(proof, value=proof.value + b"!"))
        out.append(r(proof, value=b""))
        out.append(r(proof, value=None))  # a member claimed absent
    elif proof.other_key is not None:
        assert proof.other_value_hash is not None
        out.append(r(proof, other_value_hash=_flip(proof.other_value_hash, 7)))
        out.append(r(proof, other_key=None, other_value_hash=None))
        out.append(r(proof, other_key=_flip(proof.other_key, 255)))
        out.append(r(proof, value=b"anything", other_key=None, other_value_hash=None))
    else:
        out.append(r(proof, value=b"anything"))  # an absent key claimed present
        out.append(r(proof, value=b""))
    return out


def test_tampered_proofs_are_rejected() -> None:
    keys = rand_keys(200, seed=6)
    tree, root = build({k: b"v" + k[:3] for k in keys})
    kinds = set()
    for k in [*keys[:20], *rand_keys(40, seed=7)]:
        proof = tree.prove(root, k)
        kinds.add("member" if proof.value is not None else "other" if proof.other_key else "empty")
        assert verify_state_proof(root, proof)
        assert not verify_state_proof(sha(b"another root"), proof)
        assert not verify_state_proof(EMPTY, proof)
        for bad in _tamperings(proof):
            assert not verify_state_proof(root, bad), bad
    assert kinds == {"member", "other", "empty"}


def test_other_leaf_must_share_the_path() -> None:
    tree, root = build({A: b"a", B: b"b"})
    good = tree.prove(root, NEAR_A)
    assert verify_state_proof(root, good)
    # B's leaf is the sibling, not on NEAR_A's path: NEAR_A's bit 0 is 0, B's is 1
    wrong_side = StateProof(NEAR_A, None, (leaf_hash(A, b"a"),), B, sha(b"b"))
    assert node_hash(leaf_hash(A, b"a"), leaf_hash(B, b"b")) == root
    assert state_root_from_proof(wrong_side) is None
    assert not verify_state_proof(root, wrong_side)
    # a leaf can never prove its own key absent
    self_proof = StateProof(A, None, (leaf_hash(B, b"b"),), A, sha(b"a"))
    assert state_root_from_proof(self_proof) is None
    assert not verify_state_proof(root, self_proof)


def test_prefix_rule_holds_at_every_bit() -> None:
    # In a one-leaf tree (depth 0) any other key is proved absent by that leaf; deeper, a differing bit
    # anywhere in the first d bits breaks the proof.
    tree, root = build({A: b"a"})
    assert verify_state_proof(root, tree.prove(root, B))
    c_root = tree.update_many(EMPTY, {C: b"c", D: b"d"})
    near_c = _flip(C, 200)
    proof = tree.prove(c_root, near_c)
    assert proof.other_key == C and len(proof.siblings) == 4
    assert verify_state_proof(c_root, proof)
    for i in range(4):
        assert not verify_state_proof(c_root, dataclasses.replace(proof, other_key=_flip(C, i)))


def test_verify_never_raises() -> None:
    tree, root = build({A: b"a", B: b"b"})
    proof = tree.prove(root, A)
    for bad_root in (None, b"", root[:31], root + b"\x00", bytearray(root), root.hex(), 5):
        assert not verify_state_proof(bad_root, proof)  # type: ignore[arg-type]
    for bad_proof in (None, {}, proof.to_obj(), proof.encode(), "proof"):
        assert not verify_state_proof(root, bad_proof)  # type: ignore[arg-type]
        assert state_root_from_proof(bad_proof) is None  # type: ignore[arg-type]


# --- the wire form ------------------------------------------------------------------------------------

def _sample_proofs() -> list[StateProof]:
    tree, root = build({A: b"a", B: b"\x00" * 1000, C: b"", D: b"d"})
    return [tree.prove(root, A), tree.prove(root, B), tree.prove(root, C),
            tree.prove(root, NEAR_A), tree.prove(root, key(0xC0)), tree.prove(EMPTY, A)]


def test_state_proof_round_trips() -> None:
    for proof in _sample_proofs():
        assert StateProof.decode(proof.encode()) == proof
        assert StateProof.from_json(proof.to_json()) == proof
        assert StateProof.from_obj(proof.to_obj()) == proof


def test_a_value_of_64_kib_fits() -> None:
    tree, root = build({A: bytes(65536)})
    proof = tree.prove(root, A)
    assert StateProof.decode(proof.encode()) == proof
    assert verify_state_proof(root, proof)


def test_malformed_state_proofs_are_decode_errors() -> None:
    h = sha(b"h")
    with pytest.raises(DecodeError):
        StateProof(A, None, (h[:31],), None, None)
    with pytest.raises(DecodeError):
        StateProof(A, None, (h, "x" * 32), None, None)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        StateProof(A, None, [h], None, None)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        StateProof(A, None, (h,) * 257, None, None)
    with pytest.raises(DecodeError):
        StateProof(A, b"v", (), B, h)  # a value and another leaf at once
    with pytest.raises(DecodeError):
        StateProof(A, None, (), B, None)
    with pytest.raises(DecodeError):
        StateProof(A, None, (), None, h)
    with pytest.raises(DecodeError):
        StateProof(A[:31], None, (), None, None)
    with pytest.raises(DecodeError):
        StateProof(A, None, (), B[:31], h)
    with pytest.raises(DecodeError):
        StateProof(A, None, (), B, h[:31])
    with pytest.raises(DecodeError):
        StateProof(A, bytes(65537), (), None, None)

    good = next(p for p in _sample_proofs() if p.other_key is not None).to_obj()
    for field, value in [("siblings", [h[:31]]), ("siblings", [h] * 257), ("siblings", h), ("key", A[:31]),
                         ("other_key", None), ("value", b"v"), ("other_value_hash", "00" * 32)]:
        with pytest.raises(DecodeError):
            StateProof.from_obj({**good, field: value})
    with pytest.raises(DecodeError):
        StateProof.from_obj({**good, "extra": 1})
    missing = dict(good)
    del missing["other_key"]
    with pytest.raises(DecodeError):
        StateProof.from_obj(missing)
    json_form = _sample_proofs()[0].to_json()
    with pytest.raises(DecodeError):
        StateProof.from_json({**json_form, "siblings": ["zz" * 32]})
    with pytest.raises(DecodeError):
        StateProof.from_json({**json_form, "siblings": ["ab" * 31]})


def test_leaves_lists_every_key_once_in_order_with_its_leaf_hash() -> None:
    tree = new_tree()
    assert list(tree.leaves(EMPTY)) == []
    keys = rand_keys(300, seed=9)
    root = tree.update_many(EMPTY, {k: b"v%d" % i for i, k in enumerate(keys)})
    one = tree.update_many(EMPTY, {keys[0]: b"only"})
    # A later root, with some keys gone and some changed: the earlier root still lists what it held.
    later = tree.update_many(root, {**{k: None for k in keys[:100]}, **{k: b"new" for k in keys[100:150]}})
    assert list(tree.leaves(root)) == sorted((k, leaf_hash(k, b"v%d" % i)) for i, k in enumerate(keys))
    assert list(tree.leaves(one)) == [(keys[0], leaf_hash(keys[0], b"only"))]
    want = {k: b"new" if k in keys[100:150] else b"v%d" % keys.index(k) for k in keys[100:]}
    assert list(tree.leaves(later)) == sorted((k, leaf_hash(k, v)) for k, v in want.items())
