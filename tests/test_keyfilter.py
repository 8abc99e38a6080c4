"""The key filter in front of LevelDB: never "absent" for a key it was given, even while threads add
and read at once, and, in a real chain store, every committed transaction id and state key is found
again, before and after a reopen, while lookups of keys never written are answered without LevelDB."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_chain import ChainBuilder, fixed_key, make_genesis, new_record
from node_proc import wait_until

from ler.state import record_key
from ler.tx import RecordAnchor, sign_tx
from storage.chain import FLAT_STATE_PREFIX, TX_PREFIX, ChainStore
from storage.keyfilter import KeyFilter


def ready(f: KeyFilter) -> KeyFilter:
    assert f.fill([])
    return f


def test_every_key_added_is_held_as_the_filter_grows() -> None:
    f = ready(KeyFilter(capacity=64))
    keys = [os.urandom(n % 40 + 1) for n in range(20_000)]
    for k in keys[:10_000]:
        f.add_many([k])
    f.add_many(keys[10_000:])
    assert all(f.may_hold(k) for k in keys)
    assert f.size_bytes < 20_000 * 8  # grown by doubling: room for 64 * 2**9 keys at 2 bytes each


def test_keys_never_added_are_mostly_answered_absent() -> None:
    f = ready(KeyFilter(capacity=1 << 14))
    f.add_many(os.urandom(32) for _ in range(1 << 14))  # full to capacity: the worst case
    false_positives = sum(f.may_hold(os.urandom(32)) for _ in range(20_000))
    assert false_positives < 20_000 * 0.02


def test_until_ready_every_key_may_be_held() -> None:
    f = KeyFilter()
    assert f.may_hold(b"never added") and not f.ready
    stop = threading.Event()
    stop.set()
    assert not f.fill((os.urandom(8) for _ in range(10_000)), stop, chunk=100)
    assert not f.ready and f.may_hold(b"never added")
    assert f.fill([b"a"])
    assert f.ready and f.may_hold(b"a") and not f.may_hold(b"never added")


def test_no_key_is_lost_while_a_scan_and_writers_add_and_readers_look() -> None:
    """Writers add keys (then publish them) while a slow scan fills the filter and readers check each
    published key: none may ever be answered absent, and the scanned keys are all held at the end."""
    f = KeyFilter(capacity=256)  # small, so that segments are added under the readers
    scanned = [os.urandom(32) for _ in range(30_000)]
    published: list[bytes] = []
    misses: list[bytes] = []
    done = threading.Event()

    def slow_scan() -> Iterator[bytes]:
        for i, k in enumerate(scanned):
            if i % 500 == 0:
                time.sleep(0.001)
            yield k

    def writer() -> None:
        for _ in range(5_000):
            k = os.urandom(32)
            f.add_many([k])
            published.append(k)

    def reader() -> None:
        while not done.is_set():
            for k in list(published[-200:]):
                if f.ready and not f.may_hold(k):
                    misses.append(k)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=writer) for _ in range(2)] + [threading.Thread(target=reader)]
        filler = threading.Thread(target=f.fill, args=(slow_scan(),), kwargs={"chunk": 64})
        for t in [*threads, filler]:
            t.start()
        filler.join()
        for t in threads[:2]:
            t.join()
        done.set()
        threads[2].join()
    finally:
        sys.setswitchinterval(old)
    assert f.ready and not misses
    assert all(f.may_hold(k) for k in scanned + published)


# --- in a chain store, on a real LevelDB ------------------------------------------------------------------

def filter_ready(store: ChainStore) -> KeyFilter:
    f: KeyFilter = store._absent
    wait_until(lambda: f.ready or None, 30, "the key filter to be filled")
    return f


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[ChainBuilder, Path]]:
    auth, uni = fixed_key(1), fixed_key(2)
    builder = ChainBuilder(tmp_path / "data", make_genesis([auth], [(uni, ("degree.bachelor",))]), [auth])
    yield builder, tmp_path / "data"
    builder.close()


def test_committed_ids_and_records_are_found_before_and_after_a_reopen(
        chain: tuple[ChainBuilder, Path]) -> None:
    builder, path = chain
    uni = fixed_key(2)
    filter_ready(builder.store)
    txs = [new_record(uni, fixed_key(100 + i).did)[1] for i in range(300)]
    builder.commit(txs[:150])
    builder.commit(txs[150:])

    def check(store: ChainStore) -> None:
        for i, tx in enumerate(txs):
            assert store.find_tx(tx.tx_id) == (1 + i // 150, i % 150)
        # A replayed transaction, and a new one for a record already anchored, are both refused.
        replay = txs[7]
        again = sign_tx(uni, builder.genesis.chain_id, RecordAnchor(
            record=txs[200].body.record, issuer=uni.did, holder=uni.did, rtype="degree.bachelor",
            commitment=os.urandom(32)))
        h = store.height + 1
        _, result = store.make_block([replay, again], builder.time_of(h), 0, store.validators(h)[0],
                                     store.cert(h - 1))
        assert not result.applied
        assert sorted(err.rule for _, err in result.rejected) == ["anchor.duplicate", "tx.replay"]

    check(builder.store)  # the keys the commits added
    builder.store.close()
    builder.store = ChainStore(path, builder.genesis)
    f = filter_ready(builder.store)  # the keys the scan found
    assert all(f.may_hold(TX_PREFIX + tx.tx_id) for tx in txs)
    assert all(f.may_hold(FLAT_STATE_PREFIX + record_key(tx.body.record)) for tx in txs)
    check(builder.store)


def test_keys_never_written_are_answered_without_the_database(chain: tuple[ChainBuilder, Path]) -> None:
    builder, _ = chain
    uni = fixed_key(2)
    builder.commit([new_record(uni, uni.did)[1] for _ in range(50)])
    f = filter_ready(builder.store)
    fresh = [os.urandom(32) for _ in range(2_000)]
    skipped = sum(not f.may_hold(TX_PREFIX + i) for i in fresh)
    assert skipped > 0.98 * len(fresh)
    assert all(builder.store.find_tx(i) is None for i in fresh)
