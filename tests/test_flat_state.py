"""The flat index of the latest state (st/ in storage/chain.py) always says what the Merkle tree says.

Admission checks and block execution read the latest state through it, so a stale or half-moved copy
would let a node accept what its own blocks then refuse, or compute another state root than its peers.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from pathlib import Path

import plyvel
import pytest

import storage.chain as chain_mod
from ler.keys import KeyPair
from ler.record import RecordDocument
from ler.smt import verify_state_proof
from ler.state import authorities_key, endorsement_key, issuer_key, proposal_key, record_key
from ler.tx import Action, GovVote, RecordEndorse, RecordRevoke, rotation_body, sign_tx
from storage.chain import (
    _MISSING,
    FLAT_LEAF_HASHES,
    FLAT_STATE_PREFIX,
    META_FLAT_HEIGHT,
    META_FLAT_STATE,
    NODE_PREFIX,
    ChainStore,
    StoreError,
    _LatestStateCache,
)
from tests.helpers_chain import CHAIN, ChainBuilder, certify, make_genesis, new_record


def tree_value(store: ChainStore, key: bytes, h: int | None = None) -> bytes | None:
    root = store.state_root(store.height if h is None else h)
    return store._tree.get(root, key)


def flat_copy(store: ChainStore) -> dict[bytes, bytes]:
    """The latest state as st/ gives it: through the leaf each entry names, or (older folders) as is."""
    out = {}
    for k, v in store._db.iterator(prefix=FLAT_STATE_PREFIX):
        key = k[len(FLAT_STATE_PREFIX):]
        assert len(v) == 32
        leaf = store._db.get(NODE_PREFIX + v)
        assert leaf is not None and leaf[:33] == b"\x00" + key
        out[key] = leaf[33:]
    return out


def check_agrees(store: ChainStore, keys: list[bytes]) -> None:
    flat = flat_copy(store)
    for key in keys:
        want = tree_value(store, key)
        assert store.state_get(key) == want
        assert flat.get(key) == want
    # Nothing in the copy that the tree does not hold.
    for key, value in flat.items():
        assert tree_value(store, key) == value


def test_flat_copy_follows_every_kind_of_write(tmp_path: Path) -> None:
    auths = [KeyPair.generate() for _ in range(4)]
    uni = KeyPair.generate()
    other, fan = KeyPair.generate(), KeyPair.generate()
    chain = ChainBuilder(tmp_path / "d", make_genesis(auths, [(uni, ("degree",))]), auths)
    store = chain.store
    newcomer = KeyPair.generate()
    add = Action("add_authority", newcomer.did, "newcomer", (), None)
    keys = [authorities_key(), issuer_key(uni.did), issuer_key(other.did), proposal_key(add.action_id)]
    check_agrees(store, keys)

    docs = []
    for _ in range(3):
        doc, tx = new_record(uni, other.did)
        docs.append(doc)
        keys.append(record_key(doc.record_id))
        chain.commit([tx])
    check_agrees(store, keys)
    # A value changed (revocation), an entry added (endorsement), an issuer entry rewritten (rotation).
    chain.commit([sign_tx(uni, CHAIN, RecordRevoke(docs[0].record_id, "issued in error")),
                  sign_tx(fan, CHAIN, RecordEndorse(docs[1].record_id, None))])
    keys.append(endorsement_key(docs[1].record_id, fan.public_key))
    new_key = KeyPair.generate()
    chain.commit([sign_tx(uni, CHAIN, rotation_body(uni.did, CHAIN, new_key))])
    check_agrees(store, keys)
    # A proposal opened (written), then executed (deleted) by the votes of later blocks.
    chain.commit([sign_tx(auths[0], CHAIN, GovVote(add))])
    assert store.state_get(proposal_key(add.action_id)) is not None
    check_agrees(store, keys)
    chain.commit([sign_tx(a, CHAIN, GovVote(add)) for a in auths[1:3]])
    assert store.state_get(proposal_key(add.action_id)) is None
    check_agrees(store, keys)
    assert flat_copy(store).get(proposal_key(add.action_id)) is None

    # Reopened, the store reads the same values.
    chain.close()
    again = ChainStore(tmp_path / "d", chain.genesis)
    try:
        check_agrees(again, keys)
    finally:
        again.close()


def one_record_folder(tmp_path: Path) -> tuple[ChainBuilder, KeyPair, KeyPair, RecordDocument]:
    """A data folder (tmp_path/d) holding one record: the chain, its issuer, the holder, the record."""
    auth, uni, holder = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    chain = ChainBuilder(tmp_path / "d", make_genesis([auth], [(uni, ("degree",))]), [auth])
    doc, tx = new_record(uni, holder.did)
    chain.commit([tx])
    return chain, uni, holder, doc


def test_a_write_of_the_value_a_key_holds_keeps_its_leaf_hash(tmp_path: Path) -> None:
    """A block may write a key's current value again: the tree writes no leaf for it, and st/ must still
    name the leaf (the one stored before)."""
    auth, uni, holder = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    chain = ChainBuilder(tmp_path / "d", make_genesis([auth], [(uni, ("degree",))]), [auth])
    store = chain.store
    doc, tx = new_record(uni, holder.did)
    h = store.height + 1
    block, result = store.make_block([tx], chain.time_of(h), 0, auth.public_key, store.cert(h - 1))
    same = store.state_get(issuer_key(uni.did))
    assert same is not None and issuer_key(uni.did) not in result.state_writes
    result.state_writes[issuer_key(uni.did)] = same
    store.commit_block(block, certify([auth], block), result)
    check_agrees(store, [issuer_key(uni.did), record_key(doc.record_id)])
    chain.close()


def reopened_agrees(tmp_path: Path, chain: ChainBuilder, keys: list[bytes]) -> None:
    """Opened again, the store has rebuilt st/ (marker and height current) and it agrees with the tree;
    blocks committed after that keep it so."""
    auth = next(iter(chain.keys.values()))
    uni = KeyPair.generate()
    again = ChainBuilder(tmp_path / "d", chain.genesis, [auth])
    store = again.store
    try:
        assert store._db.get(META_FLAT_STATE) == FLAT_LEAF_HASHES
        assert store._db.get(META_FLAT_HEIGHT) == store.height.to_bytes(8, "big")
        check_agrees(store, keys)
        doc, tx = new_record(uni, KeyPair.generate().did)
        again.commit([tx])
        check_agrees(store, [*keys, record_key(doc.record_id)])
        assert store._db.get(META_FLAT_HEIGHT) == store.height.to_bytes(8, "big")
    finally:
        again.close()


def test_a_folder_whose_flat_copy_holds_values_gets_the_index(tmp_path: Path) -> None:
    """Folders of earlier versions hold the values themselves in st/ (meta/flat_state b"1", no height):
    opening one rebuilds st/ as leaf hashes."""
    chain, uni, _, doc = one_record_folder(tmp_path)
    chain.commit([sign_tx(uni, CHAIN, RecordRevoke(doc.record_id, "issued in error"))])
    keys = [record_key(doc.record_id), issuer_key(uni.did), authorities_key()]
    values = flat_copy(chain.store)
    chain.close()
    db = plyvel.DB(str(tmp_path / "d"))
    db.put(META_FLAT_STATE, b"1")
    db.delete(META_FLAT_HEIGHT)
    for key, value in values.items():
        db.put(FLAT_STATE_PREFIX + key, value)
    db.close()
    reopened_agrees(tmp_path, chain, keys)


def test_an_index_that_blocks_went_past_is_rebuilt(tmp_path: Path) -> None:
    """A version that does not keep st/ may have committed blocks to the folder (an operator went back
    to it for a while): st/ then describes an older height. So may a rebuild cut short (marker gone)."""
    chain, uni, holder, doc = one_record_folder(tmp_path)
    store = chain.store
    older = store._db.get(META_FLAT_HEIGHT)
    before = {k: v for k, v in store._db.iterator(prefix=FLAT_STATE_PREFIX)}
    doc2, tx2 = new_record(uni, holder.did)
    chain.commit([tx2, sign_tx(uni, CHAIN, RecordRevoke(doc.record_id, "issued in error"))])
    keys = [record_key(doc.record_id), record_key(doc2.record_id), issuer_key(uni.did)]
    chain.close()
    for cut_short in (False, True):
        db = plyvel.DB(str(tmp_path / "d"))
        for key in list(db.iterator(prefix=FLAT_STATE_PREFIX, include_value=False)):
            db.delete(key)
        for key, value in before.items():  # st/ as it was a block ago, and an entry for no key at all
            db.put(key, value)
        db.put(FLAT_STATE_PREFIX + bytes(32), before[FLAT_STATE_PREFIX + issuer_key(uni.did)])
        if cut_short:
            db.delete(META_FLAT_STATE)
        else:
            db.put(META_FLAT_HEIGHT, older)
        db.close()
        reopened_agrees(tmp_path, chain, keys)


def test_an_index_entry_that_misses_its_leaf_is_reported_as_corruption(tmp_path: Path) -> None:
    chain, uni, _, doc = one_record_folder(tmp_path)
    genesis = chain.genesis
    chain.close()
    db = plyvel.DB(str(tmp_path / "d"))
    # The record's entry pointed at another key's leaf, then at no leaf at all, then cut short.
    other = db.get(FLAT_STATE_PREFIX + issuer_key(uni.did))
    for bad in (other, bytes(32), b"\x01" * 7):
        db.put(FLAT_STATE_PREFIX + record_key(doc.record_id), bad)
        db.close()
        store = ChainStore(tmp_path / "d", genesis)
        try:
            with pytest.raises(StoreError, match=r"corrupt: .* does not lead to its leaf"):
                store.state_get(record_key(doc.record_id))
            with pytest.raises(StoreError, match="corrupt"):
                store.get_record(doc.record_id)
        finally:
            store.close()
        db = plyvel.DB(str(tmp_path / "d"))
    db.close()


def test_a_folder_without_the_flat_index_gets_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    chain, uni, _, doc = one_record_folder(tmp_path)
    chain.close()
    # As a folder written before st/ existed: no marker, no height, no st/ keys.
    db = plyvel.DB(str(tmp_path / "d"))
    db.delete(META_FLAT_STATE)
    db.delete(META_FLAT_HEIGHT)
    for key in list(db.iterator(prefix=FLAT_STATE_PREFIX, include_value=False)):
        db.delete(key)
    db.close()
    caplog.set_level("INFO", logger="ler.storage")
    reopened_agrees(tmp_path, chain, [record_key(doc.record_id), issuer_key(uni.did), authorities_key()])
    # The operator sees it happen: the node may take a while to open a large folder the first time.
    assert "event=state_index_rebuild height=1" in caplog.text
    assert re.search(r"event=state_index_rebuilt height=1 keys=3 seconds=[\d.]+", caplog.text)


def test_readers_during_commits_see_whole_heights(tmp_path: Path) -> None:
    """Readers of the latest height, racing commits, get that height's values. (The narrow window
    between a block's batch and the cache's move is rarely hit this way; the next test drives it.)"""
    auth, uni, holder = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    chain = ChainBuilder(tmp_path / "d", make_genesis([auth], [(uni, ("degree",))]), [auth])
    store = chain.store
    blocks = [[new_record(uni, holder.did) for _ in range(150)] for _ in range(12)]
    current: list[bytes] = []
    seen: list[tuple[int, bytes, bytes | None]] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            keys = current  # the keys the block being committed now writes
            if not keys:
                continue
            key = rng.choice(keys)
            h = store.height
            seen.append((h, key, store.state_get(key, h)))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for block in blocks:
            current[:] = []
            current.extend(record_key(doc.record_id) for doc, _ in block)
            chain.commit([tx for _, tx in block])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(seen) > 100
    wrong = [(h, key.hex()) for h, key, value in seen if value != tree_value(store, key, h)]
    assert not wrong, wrong[:5]
    chain.close()


def test_the_cache_reads_no_flat_value_while_a_block_is_being_written() -> None:
    """The window between a block's batch and the cache's move: reads at the old root must walk the tree."""
    flat: dict[bytes, bytes | None] = {}
    cache = _LatestStateCache(lambda k: flat.get(k))
    old, new, key = b"\x01" * 32, b"\x02" * 32, b"k" * 32
    cache.start(old)
    assert cache.get(old, key) is None  # absent at the old root, read from the copy
    other = b"j" * 32
    was = cache.moving()
    flat[FLAT_STATE_PREFIX + other] = b"v"  # the batch is written: the copy is at the new root now
    assert cache.get(old, other) is _MISSING  # so the reader walks the tree of the old root
    cache.put(old, other, None)  # and what it learns there is not kept for the new root
    cache.advance(was, old, new, {other: b"v"})
    assert cache.get(new, other) == b"v" and cache.get(old, other) is _MISSING
    assert cache.get(new, key) is None


class Overtaken:
    """A copy whose lookups are overtaken by commits: `blocks` runs while a lookup is in progress."""

    def __init__(self, root: bytes, blocks: Callable[[Overtaken, bytes], bytes | None]) -> None:
        self.flat: dict[bytes, bytes | None] = {}
        self.blocks = blocks
        self.cache = _LatestStateCache(self.lookup)
        self.cache.start(root)

    def lookup(self, k: bytes) -> bytes | None:
        return self.blocks(self, k)


OLD, NEW, KEY = b"\x01" * 32, b"\x02" * 32, b"k" * 32


def moving_only(c: Overtaken, k: bytes) -> bytes | None:
    answer = c.flat.get(k)  # read at the old root: absent
    c.cache.moving()
    return answer


def moving_and_batch(c: Overtaken, k: bytes) -> bytes | None:
    answer = c.flat.get(k)
    c.cache.moving()
    c.flat[k] = b"v"
    return answer


def whole_block(c: Overtaken, k: bytes) -> bytes | None:
    answer = c.flat.get(k)
    was = c.cache.moving()
    c.flat[k] = b"v"
    c.cache.advance(was, OLD, NEW, {KEY: b"v"})
    return answer


def block_and_its_undoing(c: Overtaken, k: bytes) -> bytes | None:
    """Two blocks, the second undoing the first (the state, so the root, is the old one again); the
    answer is read in between, so it is the middle state's."""
    was = c.cache.moving()
    c.flat[k] = b"v"
    answer = c.flat.get(k)
    c.cache.advance(was, OLD, NEW, {KEY: b"v"})
    was = c.cache.moving()
    del c.flat[k]
    c.cache.advance(was, NEW, OLD, {KEY: None})
    return answer


@pytest.mark.parametrize("blocks", [moving_only, moving_and_batch, whole_block, block_and_its_undoing])
def test_a_copy_read_that_a_block_overtakes_is_not_used(blocks: Callable[[Overtaken, bytes], bytes | None]) -> None:
    """A lookup of the copy runs outside the cache's lock: a block written while it runs (before,
    during or after its batch) makes its answer unusable for any root."""
    c = Overtaken(OLD, blocks)
    assert c.cache.get(OLD, KEY) is _MISSING  # the reader walks the tree instead
    assert c.cache.data.get(KEY) == (b"v" if blocks is whole_block else None)  # only the block's own writes


def test_the_tree_nodes_kept_in_memory_are_bounded_and_change_no_answer(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With a node cache of a few entries (both generations turn over many times), a store computes the
    roots that a store with the usual cache computes from the same blocks, and reads and proves as a
    store with nothing in memory does (reopened)."""
    monkeypatch.setattr(chain_mod, "_NODE_CACHE_SIZE", 16)
    auths = [KeyPair.generate()]
    uni = KeyPair.generate()
    genesis = make_genesis(auths, [(uni, ("degree",))])
    small = ChainBuilder(tmp_path / "small", genesis, auths)
    docs = []
    for _ in range(6):
        txs = []
        for _ in range(12):
            doc, tx = new_record(uni, KeyPair.generate().did)
            docs.append(doc)
            txs.append(tx)
        small.commit(txs)
        nodes = small.store._nodes
        assert len(nodes.young) <= 16 and len(nodes.old) <= 16
    monkeypatch.undo()
    pairs = [(small.store.block(h), small.store.cert(h)) for h in range(1, small.store.height + 1)]
    roots = [small.store.state_root(h) for h in range(small.store.height + 1)]
    small.close()
    usual = ChainStore(tmp_path / "usual", genesis)
    for block, cert in pairs:
        assert block is not None and cert is not None
        usual.commit_block(block, cert)  # validated here: the state root must come out the same
    assert [usual.state_root(h) for h in range(usual.height + 1)] == roots
    usual.close()
    reopened = ChainStore(tmp_path / "small", genesis)  # nothing in memory: every node from the database
    for doc in docs:
        key = record_key(doc.record_id)
        assert reopened.state_get(key) == tree_value(reopened, key) is not None
        assert verify_state_proof(roots[-1], reopened.prove_state(key, reopened.height))
    reopened.close()
