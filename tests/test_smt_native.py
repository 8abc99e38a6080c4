"""The state tree's update in C (storage/_smt_native.c) against the Python one it replaces: the same roots,
the same new nodes, the same errors, on trees and updates of every shape the tree has."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler import merkle
from ler.smt import EMPTY
from storage import smt
from storage.smt import MemoryNodeStore, NodeStoreError, SparseMerkleTree, _checked, _Update
from tests.native_build import assert_keeps_no_memory, expect_built, run_under_asan

native = smt._native


@expect_built("LER_TREE_IN_PYTHON", "the tree runs")
def test_the_compiled_tree_is_built_and_used() -> None:
    # scripts/test installs the project, which compiles it; without it every block's tree runs in Python
    assert native is not None, "storage/_smt_native.c was not built, though a C compiler is here (see pip's output)"
    assert smt._native is native


def test_it_can_be_turned_off() -> None:
    code = "import storage.smt as s; print(s._native is None)"
    env = dict(os.environ, LER_TREE_IN_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def in_python(store: MemoryNodeStore, root: bytes, items: Mapping[bytes, bytes | None]) -> tuple[bytes, dict]:
    update = _Update(store)
    return update.apply((root, None), 0, sorted(items.items()))[0], update.new


def in_c(store: MemoryNodeStore, root: bytes, items: Mapping[bytes, bytes | None]) -> tuple[bytes, dict]:
    assert native is not None
    return native.update(store.get_node, _checked, root, sorted(items.items()))


def near(rng: random.Random, k: bytes) -> bytes:
    """`k` with one bit flipped: a key sharing a long prefix with it (deep splits, collapses)."""
    b = bytearray(k)
    i = rng.randrange(256)
    b[i >> 3] ^= 0x80 >> (i & 7)
    return bytes(b)


def random_items(rng: random.Random, keys: list[bytes]) -> dict[bytes, bytes | None]:
    items: dict[bytes, bytes | None] = {}
    for _ in range(rng.choice([1, 1, 2, 3, 4, 17, 200])):
        r = rng.random()
        if keys and r < 0.35:  # an existing key: changed, set to its value again, or deleted
            k = rng.choice(keys)
            items[k] = None if rng.random() < 0.5 else rng.choice([rng.randbytes(rng.randint(0, 40)), b""])
        elif r < 0.55:
            k = near(rng, rng.choice(keys) if keys else rng.randbytes(32))
            items[k] = rng.randbytes(rng.randint(0, 40)) if rng.random() < 0.85 else None
        else:
            k = rng.randbytes(32)
            items[k] = rng.randbytes(rng.randint(0, 70)) if rng.random() < 0.9 else None
        keys.append(k)
    return items


@pytest.mark.skipif(native is None, reason="the compiled tree is not built (the test above fails)")
@pytest.mark.parametrize("seed", range(40))
def test_same_roots_and_nodes_as_python(seed: int) -> None:
    rng = random.Random(seed)
    store, root, keys = MemoryNodeStore(), EMPTY, []
    for _ in range(rng.randint(1, 15)):
        items = random_items(rng, keys)
        if rng.random() < 0.1 and keys:  # an update that changes nothing
            k = rng.choice(keys)
            items = {k: SparseMerkleTree(store).get(root, k)}
        want = in_python(store, root, items)
        assert in_c(store, root, items) == want
        store.put_nodes(want[1])
        root = want[0]


@pytest.mark.skipif(native is None, reason="the compiled tree is not built")
@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.binary(min_size=1, max_size=2).map(lambda b: b + bytes(32 - len(b))),
                                st.none() | st.binary(max_size=8), min_size=1, max_size=12), min_size=1, max_size=5))
def test_same_on_clustered_keys(updates: list[dict[bytes, bytes | None]]) -> None:
    # keys that differ only in their first two bytes: long shared paths, every collapse rule
    store, root = MemoryNodeStore(), EMPTY
    for items in updates:
        want = in_python(store, root, items)
        assert in_c(store, root, items) == want
        store.put_nodes(want[1])
        root = want[0]


@pytest.mark.skipif(native is None, reason="the compiled tree is not built")
def test_same_errors_for_a_missing_or_damaged_node() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(32) for _ in range(50)]
    root, nodes = in_python(MemoryNodeStore(), EMPTY, {k: b"v%d" % i for i, k in enumerate(keys)})
    inner = [h for h, data in nodes.items() if data[0] == 1]
    # every key changed, and new ones: the update passes through every node of the tree
    items: dict[bytes, bytes | None] = {k: b"new" for k in keys}
    items.update({rng.randbytes(32): b"added" for _ in range(50)})
    for damaged in rng.sample(inner, 10):
        for bad in (None, b"\x01short", b"\x07" + bytes(64), b"\x00" + bytes(10)):
            store = MemoryNodeStore()
            store.put_nodes(nodes)
            if bad is None:
                del store.nodes[damaged]
            else:
                store.nodes[damaged] = bad
            errors = []
            for update in (in_python, in_c):
                with pytest.raises(NodeStoreError) as caught:
                    update(store, root, items)
                errors.append(str(caught.value))
            assert errors[0] == errors[1]
            assert damaged.hex() in errors[0]
    with pytest.raises(NodeStoreError, match="not in the store"):
        in_c(MemoryNodeStore(), os.urandom(32), {os.urandom(32): b"x"})


@pytest.mark.skipif(native is None, reason="the compiled tree is not built")
@pytest.mark.parametrize("items", [
    [(b"short", b"v")],
    [(bytes(32), "text")],
    [(bytes(32), b"v"), (bytes(32), b"w")],  # not strictly ascending
    [(b"\x01" + bytes(31), b"v"), (bytes(32), b"w")],
    [(bytes(32),)],
    ["not a pair"],
])
def test_malformed_items_are_refused(items: list) -> None:
    assert native is not None
    with pytest.raises(ValueError, match="items"):
        native.update(MemoryNodeStore().get_node, _checked, EMPTY, items)


@pytest.mark.skipif(native is None, reason="the compiled tree is not built")
def test_a_store_returning_a_malformed_node_that_passes_its_check_is_refused() -> None:
    assert native is not None
    with pytest.raises(SystemError):
        native.update(lambda h: b"\x07", lambda h, d: d, os.urandom(32), [(bytes(32), b"v")])


def _looping_store() -> tuple[MemoryNodeStore, bytes, bytes]:
    """A store altered so that an inner node names itself as a child: a path with no end."""
    store = MemoryNodeStore()
    root, nodes = in_python(store, EMPTY, {bytes([i]) + bytes(31): b"v" for i in (0x00, 0x80)})
    store.put_nodes(nodes)
    left = nodes[root][1:33]
    store.nodes[root] = b"\x01" + root + bytes(32)  # its left child is itself now
    return store, root, left


@pytest.mark.parametrize("update", ["python", "c"])
def test_a_path_with_no_end_in_an_altered_store_is_a_store_error(update: str) -> None:
    # Not an endless walk, nor a read past a key's 256 bits: the store is damaged, and the node says so.
    if update == "c" and native is None:
        pytest.skip("the compiled tree is not built")
    store, root, _ = _looping_store()
    run = in_python if update == "python" else in_c
    for items in ({bytes(32): b"new"}, {bytes(32): b"new", bytes(31) + b"\x01": b"other"}):
        with pytest.raises(NodeStoreError, match="deeper than a key has bits"):
            run(store, root, items)


def test_reads_of_an_altered_store_with_a_path_with_no_end_end_with_a_store_error() -> None:
    store, root, _ = _looping_store()
    tree = SparseMerkleTree(store)
    for read in (lambda: tree.get(root, bytes(32)), lambda: tree.prove(root, bytes(32)),
                 lambda: list(tree.leaves(root))):
        with pytest.raises(NodeStoreError, match="deeper than a key has bits"):
            read()


@st.composite
def adversarial_stores(draw: st.DrawFn) -> tuple[dict[bytes, bytes], bytes, dict[bytes, bytes | None]]:
    """A store of whatever bytes an altered database could hold under a few names (inner nodes naming
    each other, themselves or nothing, leaves of any length, other tags), a root among those names, and
    an update of keys near one another."""
    names = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=6, unique=True))
    child = st.sampled_from([*names, EMPTY, bytes(31) + b"\x01"])
    node = st.one_of(
        st.builds(lambda a, b: b"\x01" + a + b, child, child),
        st.builds(lambda k, v: b"\x00" + k + v, st.sampled_from([bytes(32), b"\x80" + bytes(31), b"\xff" * 32]),
                  st.binary(max_size=4)),
        st.binary(max_size=70),
    )
    store = {n: draw(node) for n in names}
    key = st.sampled_from([bytes(32), b"\x80" + bytes(31), b"\x40" + bytes(31), b"\xff" * 32, bytes(31) + b"\x01"])
    items = draw(st.dictionaries(key, st.none() | st.binary(max_size=4), min_size=1, max_size=4))
    return store, draw(st.sampled_from(names)), items


def _outcome(update: Callable[[MemoryNodeStore, bytes, Mapping[bytes, bytes | None]], tuple[bytes, dict]],
             store: MemoryNodeStore, root: bytes, items: dict[bytes, bytes | None]) -> object:
    try:
        return update(store, root, items)
    except NodeStoreError as exc:
        return ("NodeStoreError", str(exc))


@pytest.mark.skipif(native is None, reason="the compiled tree is not built")
@settings(max_examples=400, deadline=None)
@given(adversarial_stores())
def test_an_altered_store_gives_the_c_update_what_it_gives_the_python_one(
        case: tuple[dict[bytes, bytes], bytes, dict[bytes, bytes | None]]) -> None:
    # Whatever the database holds, the C update neither crashes nor reads out of bounds: it ends as the
    # Python one does, with the same root and nodes or the same store error.
    nodes, root, items = case
    store = MemoryNodeStore()
    store.put_nodes(nodes)
    assert _outcome(in_c, store, root, items) == _outcome(in_python, store, root, items)


@pytest.mark.skipif(native is None, reason="the compiled tree is not built")
def test_the_c_update_keeps_no_memory_it_made() -> None:
    # Every object the C code makes is either returned or released, on success and on a store error:
    # repeating an update leaves the interpreter's traced memory where it was.
    rng = random.Random(3)
    store = MemoryNodeStore()
    root, nodes = in_python(store, EMPTY, {rng.randbytes(32): b"v" * 40 for _ in range(300)})
    store.put_nodes(nodes)
    items: dict[bytes, bytes | None] = {rng.randbytes(32): b"w" * 40 for _ in range(100)}
    leaf_keys = sorted(data[1:33] for data in nodes.values() if data[0] == 0)
    items.update({k: None for k in rng.sample(leaf_keys, 20)})
    damaged = MemoryNodeStore()
    damaged.put_nodes(nodes)
    del damaged.nodes[next(h for h, d in nodes.items() if d[0] == 1 and h != root)]

    def rounds(n: int) -> None:
        for _ in range(n):
            in_c(store, root, items)
            with pytest.raises(NodeStoreError):
                in_c(damaged, root, dict.fromkeys(leaf_keys, b"x"))  # every key: it reaches the damage

    assert_keeps_no_memory(rounds)


@pytest.mark.skipif(native is None, reason="no compiled tree")
def test_the_c_update_under_the_address_sanitizer(tmp_path: Path) -> None:
    """The comparisons above, run again with the C file built with AddressSanitizer."""
    source = Path(smt.__file__).with_name("_smt_native.c")
    run_under_asan(tmp_path, "storage._smt_native", "storage.smt", source, __file__, "not sanitizer and not turned_off",
                   link=("-ldl",))


@pytest.mark.skipif(native is None, reason="the compiled tree is not built")
def test_the_c_merkle_root_is_ler_merkles_root() -> None:
    """A block's tx_root in C (storage/chain.py's `_tx_root`) against ler/merkle.py's RFC 6962 root: every
    count up to 300 (each shape of the stack of subtrees), powers of two and their neighbours, leaves of
    any length."""
    assert native is not None
    rng = random.Random(21)
    counts = [*range(301), 511, 512, 513, 1023, 1024, 1025, 2000, 4096, 4097]
    for n in counts:
        leaves = [rng.randbytes(32) for _ in range(n)]
        assert native.merkle_root(leaves) == merkle.root(leaves), n
    for n in (1, 2, 3, 7):
        leaves = [rng.randbytes(rng.choice([0, 1, 31, 33, 64, 500])) for _ in range(n)]
        assert native.merkle_root(leaves) == merkle.root(leaves), n
    with pytest.raises(TypeError):
        native.merkle_root([b"a", "b"])
    with pytest.raises(TypeError):
        native.merkle_root((b"a",))
