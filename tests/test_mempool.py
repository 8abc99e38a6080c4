"""The mempool (node/mempool.py) and what a node does with it (node/service.py): bounds, deduplication,
per-signer fairness, and dropping what a committed block made invalid, re-checking only what the block
could have changed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ler.block import GENESIS_FORMAT, Genesis, GenesisAuthority, GenesisIssuer
from ler.keys import KeyPair, write_key_file
from ler.state import issuer_key, record_key
from ler.tx import Action, GovVote, RecordAnchor, Tx, sign_tx
from node.config import init_data_dir
from node.mempool import Mempool, MempoolFull
from node.service import COMMITTED, PENDING, REJECTED, NodeService
from tests.helpers_chain import certify

CHAIN = "ler-test"
T0 = 1_700_000_000_000


def anchor(issuer: KeyPair, record: bytes | None = None, expires: int | None = None, holder: str | None = None) -> Tx:
    body = RecordAnchor(record=record or os.urandom(16), issuer=issuer.did, holder=holder or issuer.did,
                        rtype="degree", commitment=os.urandom(32), expires=expires)
    return sign_tx(issuer, CHAIN, body)


# --- the pool itself ------------------------------------------------------------------------------------

def test_waiting_since_is_when_the_pool_last_stopped_being_empty() -> None:
    """What /health measures a stall from: set by the first transaction into an empty pool, kept while any
    waits (later ones do not move it), cleared once the pool is empty again."""
    pool = Mempool(10, 1 << 20)
    issuer = KeyPair.generate()
    first, second = anchor(issuer), anchor(issuer)
    assert pool.waiting_since is None
    pool.add(first)
    since = pool.waiting_since
    assert since is not None
    pool.add(second)
    assert pool.waiting_since == since
    pool.remove([first.tx_id])
    assert pool.waiting_since == since
    pool.remove([second.tx_id])
    assert pool.waiting_since is None
    pool.add(first)
    assert pool.waiting_since is not None and pool.waiting_since >= since


def test_bounded_by_count_and_by_bytes() -> None:
    keys = [KeyPair.generate() for _ in range(8)]
    pool = Mempool(max_txs=8, max_bytes=10**6)
    for k in keys:
        assert pool.add(anchor(k))
    with pytest.raises(MempoolFull):
        pool.add(anchor(keys[0]))
    one = anchor(keys[0])
    small = Mempool(max_txs=100, max_bytes=len(one.raw) * 2)
    small.add(one)
    small.add(anchor(keys[1]))
    with pytest.raises(MempoolFull):
        small.add(anchor(keys[2]))
    assert len(small) == 2 and small.bytes <= len(one.raw) * 2 + 10


def test_deduplicated_by_id() -> None:
    k = KeyPair.generate()
    pool = Mempool(100, 10**6)
    tx = anchor(k)
    assert pool.add(tx) and not pool.add(tx) and not pool.add(Tx.decode(tx.raw))
    assert len(pool) == 1 and pool.bytes == len(tx.raw)


def test_one_signer_cannot_starve_the_others() -> None:
    busy, quiet = KeyPair.generate(), [KeyPair.generate() for _ in range(3)]
    pool = Mempool(max_txs=40, max_bytes=10**6)
    flood = [anchor(busy) for _ in range(10)]
    for tx in flood:
        pool.add(tx)
    with pytest.raises(MempoolFull):  # a quarter of the pool per signer
        pool.add(anchor(busy))
    others = [anchor(k) for k in quiet]
    for tx in others:
        pool.add(tx)
    first = pool.take(4)
    assert {t.signer for t in first} == {busy.public_key, *(k.public_key for k in quiet)}
    # Each signer's own transactions keep their order.
    assert [t for t in pool.take(40) if t.signer == busy.public_key] == flood


def test_removal_from_anywhere_keeps_each_signers_order_and_the_counts() -> None:
    """Against a plain model: whatever is removed (a block's head of a queue, refused txs from the middle,
    ids not in the pool) and whatever comes back after a removal, take() gives the pool round-robin in
    arrival order, the counts agree, and the lazily kept removed ids are all accounted for."""
    import random

    rng = random.Random(3)
    signers = [KeyPair.generate() for _ in range(3)]
    made = {k.public_key: [anchor(k) for _ in range(60)] for k in signers}
    for _ in range(30):
        pool = Mempool(max_txs=1000, max_bytes=10**7)
        model: dict[bytes, list[Tx]] = {k.public_key: [] for k in signers}
        for signer, txs in made.items():
            for tx in txs[:rng.randrange(61)]:
                pool.add(tx)
                model[signer].append(tx)
        for _ in range(8):
            pooled = [t for q in model.values() for t in q]
            r = rng.random()
            if r < 0.4:  # a block: the fronts of the queues
                gone = [t for q in model.values() for t in q[:rng.randrange(8)]]
            elif r < 0.8:  # another node's block, or refusals: anywhere, plus an id the pool never had
                gone = rng.sample(pooled, min(len(pooled), rng.randrange(30)))
            else:
                gone = []
            pool.remove([t.tx_id for t in gone] + [os.urandom(32)])
            for t in gone:
                model[t.signer].remove(t)
            back = rng.sample(gone, min(len(gone), rng.randrange(3)))  # admitted again after a removal
            for t in back:
                assert pool.add(t)
                model[t.signer].append(t)
            cursors = [list(q) for q in model.values() if q]
            want: list[Tx] = []
            while cursors:
                for q in list(cursors):
                    want.append(q.pop(0))
                    if not q:
                        cursors.remove(q)
            assert sorted(t.tx_id for t in pool.take(1000)) == sorted(t.tx_id for t in want)
            for signer, q in model.items():
                assert [t.tx_id for t in pool.take(1000) if t.signer == signer] == [t.tx_id for t in q]
            assert len(pool) == len(want) and pool.bytes == sum(len(t.raw) for t in want)
            # The removed ids still queued are exactly those in `_dead`; no queue is empty or mostly dead.
            queued = [t for q in pool._queues.values() for t in q]
            assert len(queued) == len(set(queued))
            assert {t for t in queued if t not in pool} == pool._dead
            for signer, queue in pool._queues.items():
                live = len(model[signer])
                assert live and pool._counts[signer] == live and len(queue) <= 2 * live + 16
                assert queue[0] in pool
            assert pool._counts.keys() == pool._queues.keys()


def test_affected_gives_readers_of_written_keys_and_the_unknown() -> None:
    k = KeyPair.generate()
    pool = Mempool(100, 10**6)
    a, b, c, d = (anchor(k) for _ in range(4))
    pool.add(a, frozenset({b"key-a", b"shared"}))
    pool.add(b, frozenset({b"key-b", b"shared"}))
    pool.add(c, None)  # reads unknown: always a candidate
    pool.add(d, frozenset({b"key-d"}))
    assert pool.affected([b"nothing"], 10) == [c]
    assert pool.affected([b"key-a"], 10) == [a, c]
    assert pool.affected([b"shared"], 10) == [a, b, c]
    assert pool.affected([b"shared"], 2) == [a, b]
    pool.set_reads(c.tx_id, frozenset({b"key-c"}))
    assert pool.affected([b"nothing"], 10) == []
    pool.remove([a.tx_id, b.tx_id])
    assert pool.affected([b"shared", b"key-a"], 10) == []
    assert pool._readers.keys() == {b"key-c", b"key-d"}  # nothing left behind for removed txs


# --- a node's service: admission, commit, re-check ------------------------------------------------------

class Node:
    def __init__(self, tmp: Path, authority: KeyPair, issuers: list[KeyPair]) -> None:
        self.authority = authority
        genesis = Genesis(GENESIS_FORMAT, CHAIN, T0, (GenesisAuthority(authority.did, "A"),),
                          tuple(GenesisIssuer(k.did, f"I{i}", ("degree",)) for i, k in enumerate(issuers)))
        gpath, kpath = tmp / "genesis.json", tmp / "a.key"
        genesis.save(gpath)
        write_key_file(kpath, authority)
        self.config = init_data_dir(tmp / "node", gpath, kpath, "127.0.0.1:8701")  # in process: never listens
        self.svc = NodeService(self.config, authority)

    async def commit(self, txs: list[Tx]) -> list[bytes]:
        """Commit a block holding exactly `txs`, and run the node's bookkeeping after it."""
        s = self.svc.store
        h = s.height + 1
        block, result = s.make_block(txs, T0 + 1000 * h, 0, self.authority.public_key, s.cert(h - 1))
        assert not result.rejected
        s.commit_block(block, certify([self.authority], block), result)
        await self.svc.after_commit(block, result, None, "test")
        return list(result.state_writes)


def test_a_block_that_invalidates_a_pending_tx_gets_it_dropped(tmp_path: Path) -> None:
    uni, college = KeyPair.generate(), KeyPair.generate()
    node = Node(tmp_path, KeyPair.generate(), [uni, college])
    svc = node.svc

    async def run() -> None:
        record = os.urandom(16)
        first, rival = anchor(uni, record), anchor(college, record)  # the same record id: one must lose
        bystanders = [anchor(college) for _ in range(5)]
        results = await svc.submit([first, rival, *bystanders])
        assert [r.status for r in results] == [PENDING] * 7
        written = await node.commit([first])
        assert record_key(record) in written
        refused = await svc.recheck_mempool(written, 100)
        assert refused == 1
        assert rival.tx_id not in svc.mempool and all(t.tx_id in svc.mempool for t in bystanders)
        st = svc.status_of(rival.tx_id)
        assert st.status == REJECTED and st.rule == "anchor.duplicate"
        assert svc.status_of(first.tx_id).status == COMMITTED
        # Only the rival read the written record key: the bystanders were not candidates at all.
        assert svc.mempool.affected(written, 100) == []

    asyncio.run(run())
    svc.close()


def test_suspending_an_issuer_drops_its_pending_records(tmp_path: Path) -> None:
    """An issuer entry written by governance: every pending transaction that read it is checked again."""
    uni, college = KeyPair.generate(), KeyPair.generate()
    node = Node(tmp_path, KeyPair.generate(), [uni, college])
    svc = node.svc

    async def run() -> None:
        mine = [anchor(uni) for _ in range(4)]
        theirs = [anchor(college) for _ in range(3)]
        assert all(r.status == PENDING for r in await svc.submit([*mine, *theirs]))
        vote = sign_tx(node.authority, CHAIN, GovVote(Action("suspend", uni.did, None, (), None)))
        written = await node.commit([vote])
        assert issuer_key(uni.did) in written
        assert await svc.recheck_mempool(written, 100) == 4
        assert all(svc.status_of(t.tx_id).rule == "anchor.standing" for t in mine)
        assert all(t.tx_id in svc.mempool for t in theirs)

    asyncio.run(run())
    svc.close()


def test_a_record_expiring_while_pending_is_checked_after_any_block(tmp_path: Path) -> None:
    """Validity that the clock alone can end is checked after every block, whatever it wrote."""
    uni = KeyPair.generate()
    node = Node(tmp_path, KeyPair.generate(), [uni])
    svc = node.svc

    async def run() -> None:
        import time

        soon = anchor(uni, expires=int(time.time() * 1000) + 1500)
        later = anchor(uni)
        assert all(r.status == PENDING for r in await svc.submit([soon, later]))
        await asyncio.sleep(1.6)
        written = await node.commit([anchor(uni)])
        assert await svc.recheck_mempool(written, 100) == 1
        assert svc.status_of(soon.tx_id).rule == "anchor.expired"
        assert later.tx_id in svc.mempool

    asyncio.run(run())
    svc.close()


def test_a_signature_block_validation_checked_is_not_checked_again_when_gossip_brings_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proposal can outrun the gossip of its transactions: validating it checks their signatures, and
    the same transactions arriving by gossip (or from a client) before the block commits must not be
    checked a second time. Each signature is checked once per node."""
    from ler import keys
    from node.validator import ConsensusDriver

    uni = KeyPair.generate()
    node = Node(tmp_path, KeyPair.generate(), [uni])
    svc = node.svc
    checks: list[bytes] = []
    real_verify = keys.verify

    def counting_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
        checks.append(signature)
        return real_verify(public_key, message, signature)

    monkeypatch.setattr(keys, "verify", counting_verify)
    txs = [anchor(uni) for _ in range(5)]
    s = svc.store
    block, _ = s.make_block(txs, T0 + 1000, 0, node.authority.public_key, None)  # another node's proposal
    driver = ConsensusDriver(svc)
    driver._validate(block)
    assert sorted(checks) == sorted(t.sig for t in txs)  # validation checked each, once

    forged = sign_tx(uni, CHAIN, RecordAnchor(os.urandom(16), uni.did, uni.did, "degree", os.urandom(32), None))
    forged = Tx.decode(forged.raw.replace(forged.sig, bytes(64)))  # a signature that does not verify
    assert sorted(checks) == sorted(t.sig for t in txs)
    added = svc._ingest_sync([t.raw for t in txs[:3]] + [forged.raw])
    assert [t.tx_id for t in added] == [t.tx_id for t in txs[:3]]
    results, _ = svc._submit_sync(txs[3:])
    assert [r.status for r in results] == [PENDING, PENDING]
    assert sorted(checks) == sorted([t.sig for t in txs] + [forged.sig])  # only the new one was checked
    svc.close()


def test_block_validation_waits_for_an_admission_checking_the_same_transactions(tmp_path: Path) -> None:
    """A proposal and the gossip of its transactions arrive together: validation waits for the admission
    thread already checking them (then finds them verified) rather than checking them alongside it."""
    import threading

    node = Node(tmp_path, KeyPair.generate(), [KeyPair.generate()])
    svc = node.svc
    ids, other = [os.urandom(32) for _ in range(3)], os.urandom(32)
    entered, release = threading.Event(), threading.Event()

    def admission() -> None:
        with svc._admitting_now(ids):
            entered.set()
            release.wait(10)
            svc.remember_verified(ids)

    t = threading.Thread(target=admission)
    t.start()
    entered.wait(10)
    svc.wait_admitted([other])  # nothing of its own in flight: at once
    waited = threading.Event()
    w = threading.Thread(target=lambda: (svc.wait_admitted(ids[1:], timeout=10), waited.set()))
    w.start()
    assert not waited.wait(0.3)  # still held by the admission
    release.set()
    assert waited.wait(10)
    assert all(i in svc.verified_ids for i in ids) and not svc._admitting
    t.join()
    w.join()
    svc.close()
