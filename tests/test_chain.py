"""The chain store on a real LevelDB with real signatures: blocks in, everything back out after a reopen,
every refusal named, governance through blocks, and atomic commits under kill -9."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plyvel
import pytest

from ler import merkle
from ler.block import (
    GENESIS_FORMAT,
    PRECOMMIT,
    Block,
    CertSig,
    CommitCertificate,
    Genesis,
    GenesisAuthority,
    GenesisIssuer,
    Vote,
    validators_hash,
)
from ler.keys import KeyPair
from ler.smt import verify_state_proof
from ler.state import ACCREDITED, SELF_ASSERTED, authorities_key, issuer_key, record_key
from ler.tx import (
    Action,
    GovVote,
    RecordAnchor,
    RecordEndorse,
    RecordRevoke,
    Tx,
    sign_tx,
)
from storage.chain import ChainStore, ExecutionResult, InvalidBlock, StoreError

CHAIN = "ler-test"
T0 = 1_700_000_000_000
ROOT = Path(__file__).resolve().parent.parent


# --- helpers ----------------------------------------------------------------------------------------------

def make_genesis(authorities: list[KeyPair], issuers: list[KeyPair] = (), chain: str = CHAIN) -> Genesis:  # type: ignore[assignment]
    return Genesis(
        format=GENESIS_FORMAT, chain_id=chain, genesis_time=T0,
        authorities=tuple(GenesisAuthority(k.did, f"authority {i}") for i, k in enumerate(authorities)),
        issuers=tuple(GenesisIssuer(k.did, f"issuer {i}", ("degree",)) for i, k in enumerate(issuers)))


def certify(signers: list[KeyPair], block: Block, round_: int = 0) -> CommitCertificate:
    h = block.header.height
    sigs = [CertSig(k.public_key, Vote.make(k, CHAIN, PRECOMMIT, h, round_, block.hash).sig) for k in signers]
    return CommitCertificate(h, round_, block.hash, tuple(sorted(sigs, key=lambda s: s.validator)))


def anchor(issuer: KeyPair, holder: str, rtype: str = "degree.bachelor",
           record: bytes | None = None) -> Tx:
    body = RecordAnchor(record=record or os.urandom(16), issuer=issuer.did, holder=holder, rtype=rtype,
                        commitment=os.urandom(32))
    return sign_tx(issuer, CHAIN, body)


def record_of(tx: Tx) -> bytes:
    record: bytes = tx.body.record
    return record


class Driver:
    """Proposes, certifies (by every validator) and commits blocks the way a network would."""

    def __init__(self, store: ChainStore, keys: list[KeyPair]) -> None:
        self.store = store
        self.keys = {k.public_key: k for k in keys}

    def signers(self, h: int) -> list[KeyPair]:
        return [self.keys[v] for v in self.store.validators(h)]

    def propose(self, txs: list[Tx], time: int | None = None) -> tuple[Block, ExecutionResult]:
        s = self.store
        h = s.height + 1
        vals = s.validators(h)
        return s.make_block(txs, time if time is not None else T0 + 1000 * h, 0, vals[h % len(vals)],
                            s.cert(h - 1))

    def commit(self, txs: list[Tx], time: int | None = None) -> Block:
        block, result = self.propose(txs, time)
        assert not result.rejected, result.rejected
        # Without the result: the store validates the block itself, as a syncing node would.
        self.store.commit_block(block, certify(self.signers(block.header.height), block))
        return block


@pytest.fixture
def auth() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def uni() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def genesis(auth: KeyPair, uni: KeyPair) -> Genesis:
    return make_genesis([auth], [uni])


@pytest.fixture
def store(tmp_path: Path, genesis: Genesis) -> Iterator[ChainStore]:
    s = ChainStore(tmp_path / "data", genesis)
    yield s
    s.close()


@pytest.fixture
def driver(store: ChainStore, auth: KeyPair) -> Driver:
    return Driver(store, [auth])


# --- opening ----------------------------------------------------------------------------------------------

def test_new_store_holds_genesis(store: ChainStore, genesis: Genesis, uni: KeyPair) -> None:
    assert store.height == 0 and store.latest_header() is None
    assert store.chain_id == CHAIN
    assert store.genesis_hash() == genesis.hash == store.block_hash(0)
    assert store.validators(1) == store.validators(2) == genesis.validators
    assert store.get_authorities().keys == genesis.validators
    issuer = store.get_issuer(uni.did)
    assert issuer is not None and issuer.accredited == 0
    assert [i.did for i in store.list_issuers()] == [uni.did]
    assert store.history_root(1) == merkle.root([genesis.hash])
    assert store.block(1) is None and store.header(1) is None and store.cert(1) is None


def test_wrong_genesis_for_existing_folder(tmp_path: Path, genesis: Genesis, auth: KeyPair) -> None:
    ChainStore(tmp_path / "d", genesis).close()
    other = make_genesis([auth], chain="another-chain")
    with pytest.raises(StoreError, match="belongs to another chain"):
        ChainStore(tmp_path / "d", other)
    ChainStore(tmp_path / "d", genesis).close()  # the rightful owner still opens it


@pytest.mark.parametrize("key", [b"meta/height", b"meta/genesis", b"meta/genesis_state", b"val/" + bytes(7) + b"\x01"])
def test_missing_meta_is_corrupt(tmp_path: Path, genesis: Genesis, key: bytes) -> None:
    ChainStore(tmp_path / "d", genesis).close()
    db = plyvel.DB(str(tmp_path / "d"))
    db.delete(key)
    db.close()
    with pytest.raises(StoreError, match="corrupt"):
        ChainStore(tmp_path / "d", genesis)


def test_height_without_block_is_corrupt(tmp_path: Path, genesis: Genesis) -> None:
    ChainStore(tmp_path / "d", genesis).close()
    db = plyvel.DB(str(tmp_path / "d"))
    db.put(b"meta/height", (5).to_bytes(8, "big"))
    db.close()
    with pytest.raises(StoreError, match=r"corrupt.*block is missing"):
        ChainStore(tmp_path / "d", genesis)


@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_a_damaged_table_file_is_reported_not_read_as_data(tmp_path: Path, genesis: Genesis, damage: str) -> None:
    """A table file changed behind LevelDB's back: its block checksums no longer match (or it is cut
    short). The store says the database is damaged; it never answers with what the bytes now say."""
    ChainStore(tmp_path / "d", genesis).close()
    ChainStore(tmp_path / "d", genesis).close()  # the second opening moves the log into a table file
    tables = sorted((tmp_path / "d").glob("*.ldb"))
    assert tables
    for table in tables:
        data = bytearray(table.read_bytes())
        if damage == "truncated":
            data = data[: len(data) // 2]
        else:
            for at in range(50, len(data) - 8, 500):  # a few bytes in every block
                data[at:at + 4] = b"\xde\xad\xbe\xef"
        table.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt or unreadable") as found:
        store = ChainStore(tmp_path / "d", genesis)
        try:
            store.state_get(authorities_key())
            store.history_root(1)
        finally:
            store.close()
    message = str(found.value)
    if damage == "truncated":  # LevelDB: "IO error: <table file>: Invalid argument"
        return
    # A block checksum that fails: what it means and what to do, beside LevelDB's words and the folder.
    assert str(tmp_path / "d") in message and "Corruption: block checksum mismatch" in message, message
    assert "changed on disk after it was written" in message and "restore the folder from a backup, or move " \
        "it aside and start the node again to sync the chain afresh from its peers" in message, message


def test_a_damaged_manifest_is_refused_at_open_saying_what_to_do(tmp_path: Path, genesis: Genesis) -> None:
    """Damage LevelDB finds as it opens the folder (its MANIFEST's checksum): the same advice as damage
    found later (restore it, or move it aside and sync afresh), not LevelDB's words alone."""
    ChainStore(tmp_path / "d", genesis).close()
    [manifest] = (tmp_path / "d").glob("MANIFEST-*")
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    manifest.write_bytes(bytes(data))
    with pytest.raises(StoreError) as found:
        ChainStore(tmp_path / "d", genesis)
    message = str(found.value)
    assert message.startswith(f"the database in {tmp_path / 'd'} is corrupt: Corruption: "), message
    assert "with the node stopped, restore the folder from a backup, or move it aside and start the node again " \
        "to sync the chain afresh from its peers" in message, message


def test_folder_in_use_is_refused(store: ChainStore, tmp_path: Path, genesis: Genesis) -> None:
    with pytest.raises(StoreError, match="another node"):
        ChainStore(tmp_path / "data", genesis)


# --- the happy path, read back after a reopen -------------------------------------------------------------

def test_blocks_and_indexes_survive_reopen(tmp_path: Path, genesis: Genesis, auth: KeyPair,
                                           uni: KeyPair) -> None:
    alice, bob, friend = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    store = ChainStore(tmp_path / "data", genesis)
    d = Driver(store, [auth])
    t1 = [anchor(uni, alice.did), anchor(uni, bob.did)]
    d.commit(t1)
    t2 = [anchor(uni, alice.did, "degree.master"),
          sign_tx(friend, CHAIN, RecordEndorse(record=record_of(t1[0]), digest=os.urandom(32))),
          sign_tx(uni, CHAIN, RecordRevoke(record=record_of(t1[1]), reason="issued in error"))]
    d.commit(t2)
    t3 = [anchor(alice, alice.did, "skill.python")]  # self-asserted
    d.commit(t3)
    hashes: dict[int, bytes] = {}
    for h in range(4):
        bh = store.block_hash(h)
        assert bh is not None
        hashes[h] = bh
    store.close()

    store = ChainStore(tmp_path / "data", genesis)
    try:
        assert store.height == 3
        latest = store.latest_header()
        assert latest is not None and latest == store.header(3)
        for h, txs in ((1, t1), (2, t2), (3, t3)):
            block, cert, header = store.block(h), store.cert(h), store.header(h)
            assert block is not None and cert is not None and header is not None
            assert block.hash == hashes[h] and cert.block == hashes[h]
            cert.verify(CHAIN, store.validators(h))
            assert header.prev == hashes[h - 1]
            assert store.height_of(hashes[h]) == h
            assert [Tx.decode(r).tx_id for r in block.txs] == [tx.tx_id for tx in txs]
            for i, tx in enumerate(txs):
                assert store.find_tx(tx.tx_id) == (h, i)
                got = store.get_tx(tx.tx_id)
                assert got is not None and got.raw == tx.raw
                path = store.tx_inclusion(h, i)
                assert merkle.verify_inclusion(merkle.leaf_hash(tx.tx_id), i, len(txs), path, header.tx_root)
            # The history root in each header is what the store computes, and every earlier block is
            # provably in it.
            assert header.history_root == store.history_root(h)
            for i in range(h):
                proof = store.history_inclusion(i, h)
                assert merkle.verify_inclusion(merkle.leaf_hash(hashes[i]), i, h, proof, header.history_root)
        for old in range(1, 4):
            for new in range(old, 4):
                a, b = store.header(old), store.header(new)
                assert a is not None and b is not None
                assert merkle.verify_consistency(old, new, store.history_consistency(old, new),
                                                 a.history_root, b.history_root)
        assert store.find_tx(os.urandom(32)) is None and store.get_tx(os.urandom(32)) is None

        # Records: status now and as of earlier heights.
        r_alice, r_bob, r_alice2 = record_of(t1[0]), record_of(t1[1]), record_of(t2[0])
        rec = store.get_record(r_bob)
        assert rec is not None and rec.revoked is not None and rec.revoked.reason == "issued in error"
        old_rec = store.get_record(r_bob, height=1)
        assert old_rec is not None and old_rec.revoked is None and old_rec.standing == ACCREDITED
        assert store.get_record(r_alice2, height=1) is None
        self_rec = store.get_record(record_of(t3[0]))
        assert self_rec is not None and self_rec.standing == SELF_ASSERTED and self_rec.anchored == 3

        block1_ids = sorted([r_alice, r_bob])  # within a block, by record id
        assert store.records_by_issuer(uni.did) == [*block1_ids, r_alice2]
        assert store.records_by_holder(alice.did) == [r_alice, r_alice2, record_of(t3[0])]
        assert store.records_by_holder(bob.did) == [r_bob]
        assert store.records_by_issuer(alice.did) == [record_of(t3[0])]
        assert store.records_by_holder(friend.did) == []
        # Paging.
        assert store.records_by_issuer(uni.did, limit=2) == block1_ids
        assert store.records_by_issuer(uni.did, limit=2, after=block1_ids[1]) == [r_alice2]
        assert store.records_by_issuer(uni.did, limit=1, after=block1_ids[0]) == [block1_ids[1]]
        assert store.records_by_issuer(uni.did, after=r_alice2) == []
        with pytest.raises(ValueError, match="no record"):
            store.records_by_issuer(uni.did, after=os.urandom(16))

        ends = store.endorsements(r_alice)
        assert [(e.endorser, e.height) for e in ends] == [(friend.public_key, 2)]
        assert store.endorsements(r_bob) == []
        assert [i.did for i in store.list_issuers()] == [uni.did]

        # State proofs: membership and non-membership at every height, against the headers' roots.
        for h in range(4):
            root = store.state_root(h)
            assert root == (store.header(h).state_root if h else store.state_root(0))  # type: ignore[union-attr]
            for key in (record_key(r_alice), record_key(r_bob), issuer_key(uni.did), os.urandom(32)):
                state_proof = store.prove_state(key, h)
                assert verify_state_proof(root, state_proof)
                assert state_proof.value == store.state_get(key, h)
        assert store.prove_state(record_key(r_alice2), 1).value is None
        assert store.prove_state(record_key(r_alice2), 2).value is not None
        with pytest.raises(ValueError):
            store.state_root(4)
        with pytest.raises(ValueError):
            store.history_root(5)
    finally:
        store.close()


def test_make_block_drops_invalid_txs(store: ChainStore, driver: Driver, uni: KeyPair) -> None:
    holder = KeyPair.generate()
    good = anchor(uni, holder.did)
    committed = anchor(uni, holder.did)
    driver.commit([committed])
    clash = anchor(uni, holder.did, record=record_of(good))          # same record id, another tx
    stranger = KeyPair.generate()
    not_issuer = sign_tx(stranger, CHAIN, RecordRevoke(record=record_of(committed), reason="no"))
    unknown = sign_tx(uni, CHAIN, RecordRevoke(record=os.urandom(16), reason="no"))
    before = store.state_root(store.height)
    block, result = driver.propose([good, committed, clash, good, not_issuer, unknown])
    assert [tx.tx_id for tx in result.applied] == [good.tx_id]
    assert [(tx.tx_id, err.rule) for tx, err in result.rejected] == [
        (committed.tx_id, "tx.replay"), (clash.tx_id, "anchor.duplicate"), (good.tx_id, "tx.replay"),
        (not_issuer.tx_id, "revoke.issuer"), (unknown.tx_id, "revoke.unknown")]
    assert block.txs == (good.raw,) and block.header.tx_count == 1
    # Executing wrote nothing; the refused anchor left the first one standing.
    assert store.state_root(store.height) == before and store.get_record(record_of(good)) is None
    store.commit_block(block, certify(driver.signers(2), block), result)
    rec = store.get_record(record_of(good))
    assert rec is not None and rec.tx == good.tx_id
    with pytest.raises(InvalidBlock, match=r"anchor\.duplicate") as exc:
        store.execute([clash], T0 + 10_000, drop_invalid=False)
    assert exc.value.rule == "anchor.duplicate" and clash.tx_id.hex() in str(exc.value)


def test_make_block_stops_at_the_size_limits(store: ChainStore, driver: Driver, uni: KeyPair,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # The real limits need ten thousand transactions; smaller ones exercise the same cut-off.
    import storage.chain

    txs = [anchor(uni, uni.did) for _ in range(5)]
    monkeypatch.setattr(storage.chain, "MAX_BLOCK_TXS", 3)
    block, result = driver.propose(txs)
    assert result.applied == txs[:3] and result.rejected == [] and block.header.tx_count == 3
    with pytest.raises(InvalidBlock, match="at most 3") as exc:
        store.validate_block(forge_block(store, driver, [tx.raw for tx in txs[:4]]))
    assert exc.value.rule == "block.size"
    monkeypatch.setattr(storage.chain, "MAX_BLOCK_TXS", 100)
    monkeypatch.setattr(storage.chain, "MAX_BLOCK_TX_BYTES", 2 * (len(txs[0].raw) + 5) + 2)
    block, result = driver.propose(txs)
    assert result.applied == txs[:2]
    with pytest.raises(InvalidBlock, match="bytes of transactions") as exc:
        store.validate_block(forge_block(store, driver, [tx.raw for tx in txs[:3]]))
    assert exc.value.rule == "block.size"


def test_empty_block_and_genesis_cert_rules(store: ChainStore, driver: Driver) -> None:
    block = driver.commit([])
    assert block.header.tx_count == 0 and block.header.tx_root == merkle.EMPTY_ROOT
    assert block.header.state_root == store.state_root(0)  # nothing changed
    assert block.last_cert is None
    nxt = driver.commit([])
    assert nxt.last_cert == store.cert(1)


def test_a_long_running_store_keeps_a_bounded_number_of_headers(store: ChainStore, driver: Driver,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each commit remembers its header; a node up for weeks must not hold every one of them."""
    monkeypatch.setattr("storage.chain._HEADER_CACHE_SIZE", 8)
    blocks = [driver.commit([]) for _ in range(30)]
    assert len(store._headers) <= 8
    for h in (1, 15, 30):  # an evicted header is read back from its block
        assert store.header(h) == blocks[h - 1].header


# --- refusals: commit ------------------------------------------------------------------------------------

def test_commit_out_of_order(store: ChainStore, driver: Driver, uni: KeyPair) -> None:
    b1 = driver.commit([anchor(uni, uni.did)])
    cert = store.cert(1)
    assert cert is not None
    with pytest.raises(StoreError, match="out-of-order"):
        store.commit_block(b1, cert)
    assert store.height == 1


def test_commit_cert_for_another_block(store: ChainStore, driver: Driver, auth: KeyPair,
                                       uni: KeyPair) -> None:
    block, result = driver.propose([anchor(uni, uni.did)])
    other, _ = driver.propose([anchor(uni, uni.did)])
    with pytest.raises(StoreError, match="certificate is for block"):
        store.commit_block(block, certify([auth], other), result)
    wrong_height = dataclasses.replace(certify([auth], block), height=2)
    with pytest.raises(StoreError, match="certificate is for height 2"):
        store.commit_block(block, wrong_height, result)
    forged = CommitCertificate(1, 0, block.hash, (CertSig(auth.public_key, bytes(64)),))
    with pytest.raises(StoreError, match="invalid"):
        store.commit_block(block, forged, result)
    assert store.height == 0 and store.block(1) is None


def test_commit_cert_with_too_few_sigs(tmp_path: Path) -> None:
    keys = [KeyPair.generate() for _ in range(4)]
    store = ChainStore(tmp_path / "d", make_genesis(keys))
    try:
        block, result = Driver(store, keys).propose([])
        signers = sorted(keys, key=lambda k: k.public_key)
        with pytest.raises(StoreError, match="2 of 4 validator signatures"):
            store.commit_block(block, certify(signers[:2], block), result)
        outsider = KeyPair.generate()
        with pytest.raises(StoreError, match="not a validator"):
            store.commit_block(block, certify([*signers[:2], outsider], block), result)
        store.commit_block(block, certify(signers[:3], block), result)  # 3 of 4 is more than 2/3
        assert store.height == 1
    finally:
        store.close()


def test_commit_refuses_a_result_of_another_block(store: ChainStore, driver: Driver, auth: KeyPair,
                                                  uni: KeyPair) -> None:
    block, _ = driver.propose([anchor(uni, uni.did)])
    _, other_result = driver.propose([anchor(uni, uni.did)])
    with pytest.raises(StoreError, match="not that of block 1"):
        store.commit_block(block, certify([auth], block), other_result)


# --- refusals: validate_block -----------------------------------------------------------------------------

HEADER_FIELDS = ["chain", "height", "time", "prev", "tx_count", "tx_root", "state_root", "history_root",
                 "validators_hash", "next_validators_hash", "proposer"]


@pytest.mark.parametrize("field", HEADER_FIELDS)
def test_validate_names_each_tampered_header_field(store: ChainStore, driver: Driver, uni: KeyPair,
                                                   field: str) -> None:
    driver.commit([anchor(uni, uni.did)])
    block, _ = driver.propose([anchor(uni, uni.did), anchor(uni, uni.did)])
    store.validate_block(block)  # untouched, it passes
    hd = block.header
    tampered: Any = {
        "chain": "other-chain", "height": hd.height + 1, "time": store.header(1).time,  # type: ignore[union-attr]
        "tx_count": hd.tx_count + 1,
    }.get(field, os.urandom(32))
    bad = dataclasses.replace(block, header=dataclasses.replace(hd, **{field: tampered}))
    with pytest.raises(InvalidBlock, match=rf"header\.{field}\b") as exc:
        store.validate_block(bad)
    assert exc.value.rule == f"header.{field}"


def test_validate_checks_the_parent_certificate(store: ChainStore, driver: Driver, auth: KeyPair,
                                                uni: KeyPair) -> None:
    b1, _ = driver.propose([])
    with pytest.raises(InvalidBlock, match="block 1 carries no parent certificate"):
        store.validate_block(dataclasses.replace(b1, last_cert=certify([auth], b1)))
    driver.commit([])
    b2, _ = driver.propose([anchor(uni, uni.did)])
    store.validate_block(b2)
    for last_cert, why in (
            (None, "lacks the certificate"),
            (certify([auth], b2), "for height 2, not 1"),
            (dataclasses.replace(certify([auth], b1), block=os.urandom(32)), "another block"),
            (CommitCertificate(1, 0, store.block_hash(1), ()), "0 of 1"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidBlock, match=why) as exc:
            store.validate_block(dataclasses.replace(b2, last_cert=last_cert))
        assert exc.value.rule == "block.last_cert"


def forge_block(store: ChainStore, driver: Driver, raws: list[bytes]) -> Block:
    """A block whose header is right in every field but the state root, holding exactly `raws`."""
    block, _ = driver.propose([])
    ids = [Tx.decode(r).tx_id if _decodes(r) else merkle.leaf_hash(r) for r in raws]
    header = dataclasses.replace(block.header, tx_count=len(raws), tx_root=merkle.root(ids))
    return dataclasses.replace(block, header=header, txs=tuple(raws))


def _decodes(raw: bytes) -> bool:
    try:
        Tx.decode(raw)
        return True
    except Exception:
        return False


def test_validate_refuses_a_bad_signature(store: ChainStore, driver: Driver, uni: KeyPair) -> None:
    good = anchor(uni, uni.did)
    obj = good.to_obj()
    obj["sig"] = bytes([obj["sig"][0] ^ 1]) + obj["sig"][1:]
    bad = Tx.from_obj(obj)
    # make_block trusts its caller's signature checks, so this block is otherwise perfectly formed.
    block, result = driver.propose([bad])
    assert result.applied == [bad]
    with pytest.raises(InvalidBlock, match=r"tx\.signature") as exc:
        store.validate_block(block)
    assert exc.value.rule == "tx.signature"
    # A tx whose signature the caller already verified is not checked again.
    assert store.validate_block(block, verified={bad.tx_id}).applied == [bad]


def test_validate_refuses_another_chains_tx(store: ChainStore, driver: Driver, uni: KeyPair) -> None:
    foreign = sign_tx(uni, "other-chain", RecordAnchor(record=os.urandom(16), issuer=uni.did,
                                                        holder=uni.did, rtype="degree", commitment=bytes(32)))
    with pytest.raises(InvalidBlock, match=r"tx\.chain"):
        store.validate_block(forge_block(store, driver, [foreign.raw]))


def test_validate_refuses_a_replayed_tx(store: ChainStore, driver: Driver, uni: KeyPair) -> None:
    tx = anchor(uni, uni.did)
    driver.commit([tx])
    with pytest.raises(InvalidBlock, match=r"tx\.replay") as exc:
        store.validate_block(forge_block(store, driver, [tx.raw]))
    assert exc.value.rule == "tx.replay"


def test_validate_refuses_a_tx_twice_in_one_block(store: ChainStore, driver: Driver, uni: KeyPair) -> None:
    tx = anchor(uni, uni.did)
    with pytest.raises(InvalidBlock, match=r"tx\.duplicate") as exc:
        store.validate_block(forge_block(store, driver, [tx.raw, tx.raw]))
    assert exc.value.rule == "tx.duplicate"


def test_validate_refuses_undecodable_tx(store: ChainStore, driver: Driver) -> None:
    with pytest.raises(InvalidBlock, match=r"tx\.decode"):
        store.validate_block(forge_block(store, driver, [b"\x81\xa1x\x01"]))


def test_validate_refuses_a_tx_a_rule_refuses(store: ChainStore, driver: Driver) -> None:
    stranger = KeyPair.generate()
    tx = sign_tx(stranger, CHAIN, RecordRevoke(record=os.urandom(16), reason="no"))
    with pytest.raises(InvalidBlock, match=r"revoke\.unknown"):
        store.validate_block(forge_block(store, driver, [tx.raw]))
    assert store.height == 0


# --- governance through blocks ----------------------------------------------------------------------------

def test_validator_set_change_takes_effect_two_blocks_later(tmp_path: Path) -> None:
    keys = [KeyPair.generate() for _ in range(4)]
    newcomer, school = KeyPair.generate(), KeyPair.generate()
    genesis = make_genesis(keys)
    store = ChainStore(tmp_path / "d", genesis)
    d = Driver(store, [*keys, newcomer])
    add = Action(kind="add_authority", subject=newcomer.did, name="new body", scopes=())
    accredit = Action(kind="accredit", subject=school.did, name="School", scopes=("course",))
    d.commit([sign_tx(k, CHAIN, GovVote(action=a)) for k in keys[:2] for a in (add, accredit)])  # h=1
    assert store.validators(3) == genesis.validators and store.list_issuers() == []
    open_ = sorted([add, accredit], key=lambda a: a.action_id)
    assert [(p.action, p.votes, p.opened) for p in store.proposals()] == [
        (a, tuple(sorted(k.public_key for k in keys[:2])), 1) for a in open_]
    # h=2: the third of four votes adds the authority; the third accreditation vote that follows it is
    # then counted against five authorities, so it is not yet enough.
    d.commit([sign_tx(keys[2], CHAIN, GovVote(action=a)) for a in (add, accredit)])
    grown = tuple(sorted([*genesis.validators, newcomer.public_key]))
    assert store.get_authorities().keys == grown
    assert store.validators(3) == genesis.validators  # h+1 unchanged
    assert store.validators(4) == grown               # h+2 changed
    assert store.validator_change_heights(10) == [4]
    assert store.validator_change_heights(3) == []
    assert store.list_issuers() == []
    assert [p.action for p in store.proposals()] == [accredit]  # the executed one is gone
    b3 = d.commit([sign_tx(keys[3], CHAIN, GovVote(action=accredit))])  # h=3 announces the new set
    assert b3.header.validators_hash == validators_hash(genesis.validators)
    assert b3.header.next_validators_hash == validators_hash(grown)
    assert [i.did for i in store.list_issuers()] == [school.did]
    assert store.proposals() == []
    # Block 4 needs more than 2/3 of five: four signatures.
    b4, r4 = d.propose([])
    assert b4.header.validators_hash == validators_hash(grown)
    by_key = sorted([*keys, newcomer], key=lambda k: k.public_key)
    with pytest.raises(StoreError, match="3 of 5"):
        store.commit_block(b4, certify(by_key[:3], b4), r4)
    store.commit_block(b4, certify(by_key[:4], b4), r4)
    store.close()

    store = ChainStore(tmp_path / "d", genesis)
    try:
        assert store.validators(4) == grown and store.validators(3) == genesis.validators
        assert store.validators(6) == grown
        assert store.validator_change_heights(6) == [4]
        with pytest.raises(ValueError):
            store.validators(7)
        # Removing one takes effect at h+2 again, and the change history lists both steps.
        d = Driver(store, [*keys, newcomer])
        remove = Action(kind="remove_authority", subject=keys[0].did, name=None, scopes=())
        d.commit([sign_tx(k, CHAIN, GovVote(action=remove)) for k in by_key[:4]])  # h=5
        assert store.proposals() == []  # opened and executed within one block
        assert store.validators(6) == grown
        assert store.validators(7) == tuple(sorted(set(grown) - {keys[0].public_key}))
        assert store.validator_change_heights(7) == [4, 7]
        # From which height a key is a validator, as an observer voted in names it: the first of its
        # run, found back through changes that left it in (7), from any later height.
        for upto in (4, 6, 7):
            assert held_from(store, newcomer.public_key, upto) == 4
        assert held_from(store, keys[1].public_key, 7) == 1 and held_from(store, keys[0].public_key, 6) == 1
        assert held_from(store, keys[0].public_key, 7) is None  # removed from 7 on
    finally:
        store.close()


def held_from(store: ChainStore, key: bytes, upto: int) -> int | None:
    from node.validator import first_height_holding

    return first_height_holding(key, upto, store.validators, store.validator_change_heights(upto))


def test_a_key_voted_out_and_in_again_holds_from_its_latest_return() -> None:
    """Only the uninterrupted run up to the height asked counts: a key removed and added again is an
    authority from its return, not from its first admission."""
    from node.validator import first_height_holding

    key, other = b"k" * 32, b"o" * 32
    sets = {1: {other}, 5: {other, key}, 9: {other}, 14: {other, key}, 20: {other, key, b"x" * 32}}
    changes = sorted(sets)[1:]

    def validators(h: int) -> set[bytes]:
        return sets[max(c for c in sets if c <= h)]

    def first(upto: int) -> int | None:
        return first_height_holding(key, upto, validators, [c for c in changes if c <= upto])

    assert [first(h) for h in (1, 4, 5, 8, 9, 13, 14, 19, 20, 30)] == [None, None, 5, 5, None, None, 14, 14, 14, 14]
    assert first_height_holding(other, 30, validators, changes) == 1


# --- pending transactions ---------------------------------------------------------------------------------

def test_pending_survive_reopen_and_leave_when_committed(tmp_path: Path, genesis: Genesis, auth: KeyPair,
                                                         uni: KeyPair) -> None:
    txs = [anchor(uni, uni.did) for _ in range(3)]
    store = ChainStore(tmp_path / "d", genesis)
    store.add_pending([(tx.tx_id, tx.raw) for tx in txs])
    store.close()
    store = ChainStore(tmp_path / "d", genesis)
    try:
        assert sorted(store.pending()) == sorted(tx.raw for tx in txs)
        Driver(store, [auth]).commit([txs[0]])
        assert sorted(store.pending()) == sorted(tx.raw for tx in txs[1:])
        store.remove_pending([txs[1].tx_id])
        assert store.pending() == [txs[2].raw]
    finally:
        store.close()
    store = ChainStore(tmp_path / "d", genesis)
    try:
        assert store.pending() == [txs[2].raw]
    finally:
        store.close()


# --- crash atomicity --------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys
    from ler.block import PRECOMMIT, CertSig, CommitCertificate, Genesis, Vote
    from ler.keys import KeyPair
    from ler.tx import RecordAnchor, sign_tx
    from storage.chain import ChainStore

    path, genesis_file, auth_seed, issuer_seed = sys.argv[1:]
    genesis = Genesis.load(genesis_file)
    auth, issuer = KeyPair(bytes.fromhex(auth_seed)), KeyPair(bytes.fromhex(issuer_seed))
    chain = genesis.chain_id
    store = ChainStore(path, genesis)
    while True:
        h = store.height + 1
        txs = [sign_tx(issuer, chain, RecordAnchor(record=os.urandom(16), issuer=issuer.did,
                                                   holder=issuer.did, rtype="degree",
                                                   commitment=os.urandom(32)))
               for _ in range(4)]
        block, result = store.make_block(txs, genesis.genesis_time + h, 0, auth.public_key, store.cert(h - 1))
        vote = Vote.make(auth, chain, PRECOMMIT, h, 0, block.hash)
        cert = CommitCertificate(h, 0, block.hash, (CertSig(auth.public_key, vote.sig),))
        store.commit_block(block, cert, result)
        print(h, flush=True)
""")


def check_whole(store: ChainStore) -> None:
    """Every committed block is there entire: block, certificate, tx index, history, state."""
    height = store.height
    for h in range(1, height + 1):
        block, cert, header = store.block(h), store.cert(h), store.header(h)
        assert block is not None and cert is not None and header is not None, h
        assert cert.block == block.hash and cert.height == h
        cert.verify(CHAIN, store.validators(h))
        assert header.prev == store.block_hash(h - 1)
        assert header.history_root == store.history_root(h)
        for i, raw in enumerate(block.txs):
            assert store.find_tx(Tx.decode(raw).tx_id) == (h, i)
    assert store.block(height + 1) is None and store.cert(height + 1) is None
    # The history leaf of the newest block was written with it.
    assert merkle.verify_inclusion(merkle.leaf_hash(store.block_hash(height)), height, height + 1,  # type: ignore[arg-type]
                                   store.history_inclusion(height, height + 1), store.history_root(height + 1))
    if height:
        header = store.latest_header()
        assert header is not None and header.state_root == store.state_root(height)
        block = store.block(height)
        assert block is not None
        for raw in block.txs:
            rid = record_of(Tx.decode(raw))
            rec = store.get_record(rid)
            assert rec is not None and rec.anchored == height
            assert verify_state_proof(header.state_root, store.prove_state(record_key(rid), height))


def test_kill_9_never_leaves_half_a_block(tmp_path: Path, genesis: Genesis, auth: KeyPair,
                                          uni: KeyPair) -> None:
    rng = random.Random()
    genesis_file = tmp_path / "genesis.json"
    genesis.save(genesis_file)
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    last_printed = 0
    for _ in range(5):
        with open(tmp_path / "child.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(data), str(genesis_file), auth.seed.hex(), uni.seed.hex()],
                stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env)
            assert proc.stdout is not None
            try:
                for _ in range(rng.randint(1, 8)):
                    line = proc.stdout.readline()
                    assert line, (tmp_path / "child.err").read_text()
                    last_printed = int(line)
                # Let it run on for a random moment, so the kill lands anywhere in the commit loop.
                rng_wait = rng.uniform(0, 0.03)
                try:
                    proc.wait(timeout=rng_wait)
                except subprocess.TimeoutExpired:
                    pass
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            for line in proc.stdout.read().split():
                last_printed = int(line)
            proc.stdout.close()
        store = ChainStore(data, genesis)
        try:
            assert store.height >= last_printed
            check_whole(store)
        finally:
            store.close()
    assert last_printed >= 5
