"""A validator's second record of what it last signed (node/signed_file.py): a database that lost its
latest writes must not make the validator forget what it signed, and a damaged file stops the node with
the reason instead of being guessed around."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus import Broadcast, Evidence, RecordSigned, Rejected, SignedState
from consensus.messages import PRECOMMIT, PREVOTE
from ler import codec
from ler.block import GENESIS_FORMAT, Genesis, GenesisAuthority, GenesisIssuer, Vote
from ler.keys import KeyPair, sha256, write_key_file
from ler.tx import RecordAnchor, sign_tx
from node.config import NodeConfig, init_data_dir, load_config
from node.service import PENDING, NodeService
from node.signed_file import MAGIC, read_signed_file, write_signed_file
from node.validator import (
    PROPOSAL_KEY,
    SIGNED_KEY,
    ConsensusDriver,
    Incoming,
    TimeoutFired,
    _Outcome,
    _Send,
    load_signed,
)
from storage.chain import StoreError

CHAIN = "ler-test"
STATE = SignedState(7, 2, PREVOTE, b"\x11" * 32, -1, 1, b"\x22" * 32, 1, b"\x22" * 32)


# --- the file itself ------------------------------------------------------------------------------------

def test_the_file_gives_back_what_was_written_and_nothing_when_absent(tmp_path: Path) -> None:
    path, key = tmp_path / "signed-state", os.urandom(32)
    assert read_signed_file(path, CHAIN, key) is None
    write_signed_file(path, CHAIN, key, STATE)
    assert read_signed_file(path, CHAIN, key) == STATE
    later = SignedState(8, 0, PRECOMMIT, None, -1, -1, None, -1, None)
    write_signed_file(path, CHAIN, key, later)
    assert read_signed_file(path, CHAIN, key) == later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signed-state"]  # no temporary file left


def test_every_damaged_byte_and_every_cut_is_refused_with_the_reason(tmp_path: Path) -> None:
    path, key = tmp_path / "signed-state", os.urandom(32)
    write_signed_file(path, CHAIN, key, STATE)
    good = path.read_bytes()
    for i in range(len(good)):
        for flip in (0x01, 0x80):
            path.write_bytes(good[:i] + bytes([good[i] ^ flip]) + good[i + 1:])
            with pytest.raises(StoreError, match="is damaged"):
                read_signed_file(path, CHAIN, key)
    for n in range(len(good)):
        path.write_bytes(good[:n])
        with pytest.raises(StoreError, match="is damaged"):
            read_signed_file(path, CHAIN, key)
    path.write_bytes(good + b"\x00")
    with pytest.raises(StoreError, match="is damaged"):
        read_signed_file(path, CHAIN, key)
    path.write_bytes(b"\x00" * 5000)
    with pytest.raises(StoreError, match="longer than"):
        read_signed_file(path, CHAIN, key)


def test_a_file_of_another_chain_or_key_is_left_aside_and_other_contents_are_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, key = tmp_path / "signed-state", os.urandom(32)
    with caplog.at_level(logging.WARNING, logger="ler.consensus"):
        write_signed_file(path, "other-chain", key, STATE)
        assert read_signed_file(path, CHAIN, key) is None  # says nothing of what this key signed here
        assert "event=signed_state_not_ours" in caplog.text and "chain 'other-chain'" in caplog.text
        write_signed_file(path, CHAIN, os.urandom(32), STATE)
        assert read_signed_file(path, CHAIN, key) is None
        assert "another validator key" in caplog.text
    # Well-formed files (magic and checksum right) whose payload is not a signed state.
    for payload in (codec.encode([1, 2]), codec.encode({"chain": CHAIN, "key": key}),
                    codec.encode({"chain": CHAIN, "key": key, "state": "text"}),
                    codec.encode({"chain": CHAIN, "key": key, "state": b"\x90"}), b"\xc1"):
        path.write_bytes(MAGIC + sha256(payload) + payload)
        with pytest.raises(StoreError, match="is damaged"):
            read_signed_file(path, CHAIN, key)


def test_a_file_that_cannot_be_written_is_an_error_not_silence(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "signed-state"
    with pytest.raises(StoreError, match="could not write"):
        write_signed_file(missing, CHAIN, os.urandom(32), STATE)


# --- the validator that uses it --------------------------------------------------------------------------

def single_authority_node(tmp: Path) -> tuple[NodeConfig, KeyPair, KeyPair]:
    authority, issuer = KeyPair.generate(), KeyPair.generate()
    genesis = Genesis(GENESIS_FORMAT, CHAIN, 1_700_000_000_000, (GenesisAuthority(authority.did, "A"),),
                      (GenesisIssuer(issuer.did, "Uni", ("degree",)),))
    genesis.save(tmp / "genesis.json")
    write_key_file(tmp / "a.key", authority)
    return init_data_dir(tmp / "node", tmp / "genesis.json", tmp / "a.key", "127.0.0.1:8701"), authority, issuer


def open_with_a_pending_record(config: NodeConfig, authority: KeyPair, issuer: KeyPair) -> ConsensusDriver:
    """The node's service and consensus driver, with one record waiting: a validator that may sign at
    height 1 proposes it."""
    svc = NodeService(load_config(config.data), authority)
    tx = sign_tx(issuer, CHAIN, RecordAnchor(os.urandom(16), issuer.did, issuer.did, "degree", os.urandom(32), None))
    assert [r.status for r in asyncio.run(svc.submit([tx]))] == [PENDING]
    return ConsensusDriver(svc)


def test_a_validator_whose_database_lost_its_writes_still_refuses_to_sign_below_what_it_signed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, authority, issuer = single_authority_node(tmp_path)
    driver = open_with_a_pending_record(config, authority, issuer)
    driver._absorb(_Outcome(), [RecordSigned(STATE)])  # as the engine hands it over, before any send
    assert driver.store.get_meta(SIGNED_KEY) == STATE.encode()
    assert read_signed_file(config.signed_path, CHAIN, authority.public_key) == STATE
    driver.svc.close()

    shutil.rmtree(config.db_path)  # the database forgot everything: its log and tables removed
    with caplog.at_level(logging.WARNING, logger="ler.consensus"):
        driver = open_with_a_pending_record(config, authority, issuer)
    try:
        assert driver.store.height == 0 and driver.signed == STATE
        assert "event=database_behind_signed height=0 signed_height=7" in caplog.text
        assert driver.engine is not None
        actions = driver.engine.start_height(1)
        assert not [a for a in actions if isinstance(a, Broadcast)]
        assert any(isinstance(a, Rejected) and "already signed a prevote at h=7 r=2" in a.reason for a in actions)
    finally:
        driver.svc.close()

    # The control: with neither record, the same node proposes the pending record at height 1.
    config.signed_path.unlink()
    shutil.rmtree(config.db_path)
    driver = open_with_a_pending_record(config, authority, issuer)
    try:
        assert driver.signed is None and driver.engine is not None
        assert [a for a in driver.engine.start_height(1) if isinstance(a, Broadcast)]
    finally:
        driver.svc.close()


def signed_once(tmp: Path) -> tuple[NodeConfig, KeyPair, KeyPair]:
    """A stopped single-authority node that has recorded STATE (in its database and its file)."""
    config, authority, issuer = single_authority_node(tmp)
    driver = open_with_a_pending_record(config, authority, issuer)
    driver._absorb(_Outcome(), [RecordSigned(STATE)])
    driver.svc.close()
    return config, authority, issuer


def test_the_later_record_wins_whichever_holds_it(tmp_path: Path) -> None:
    config, authority, issuer = signed_once(tmp_path)
    older = SignedState(6, 0, PRECOMMIT, None, -1, -1, None, -1, None)
    write_signed_file(config.signed_path, CHAIN, authority.public_key, older)  # a file from a restored copy
    driver = open_with_a_pending_record(config, authority, issuer)
    assert driver.signed == STATE  # the database's record is the later one
    driver.svc.close()
    config.signed_path.unlink()
    driver = open_with_a_pending_record(config, authority, issuer)
    assert driver.signed == STATE
    driver.svc.close()


def test_a_damaged_file_stops_the_validator_with_the_reason(tmp_path: Path) -> None:
    config, authority, _ = signed_once(tmp_path)
    data = config.signed_path.read_bytes()
    config.signed_path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    svc = NodeService(load_config(config.data), authority)
    try:
        with pytest.raises(StoreError, match="signed-state, this validator's record of what it last signed, is "
                                             "damaged: its checksum does not match"):
            ConsensusDriver(svc)
    finally:
        svc.close()


def test_the_file_is_written_after_the_database_batch_that_holds_the_proposal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the two writes must leave the database, which also holds the proposal and its
    block, at least as far as the file. The other order once stalled a lone validator for good: restarted
    from the file alone, it was locked on a block it no longer had."""
    import node.validator as validator

    config, authority, issuer = single_authority_node(tmp_path)
    driver = open_with_a_pending_record(config, authority, issuer)
    assert driver.engine is not None

    def crash(*_args: object) -> None:
        raise SystemExit("killed between the database write and the file write")

    monkeypatch.setattr(validator, "write_signed_file", crash)
    with pytest.raises(SystemExit):
        driver._thread_start(1, [])  # proposes the pending record, prevotes and precommits it
    signed = load_signed(driver.store.get_meta(SIGNED_KEY))
    assert signed is not None and signed.height == 1
    assert driver.store.get_meta(PROPOSAL_KEY) is not None  # the block it signed for is not lost
    assert read_signed_file(config.signed_path, CHAIN, authority.public_key) is None
    driver.svc.close()


def test_a_lone_validator_locked_on_a_block_its_database_lost_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, authority, issuer = single_authority_node(tmp_path)
    driver = open_with_a_pending_record(config, authority, issuer)
    assert driver.engine is not None
    driver._thread_start(1, [])  # proposes, prevotes, precommits: locked on its own block at height 1
    locked = driver.signed
    assert locked is not None and locked.height == 1 and locked.locked_block is not None
    driver.svc.close()
    with caplog.at_level(logging.WARNING, logger="ler.consensus"):
        driver = open_with_a_pending_record(config, authority, issuer)  # it still has its proposal: silent
        driver.svc.close()
        assert "locked_block_unknown" not in caplog.text
        shutil.rmtree(config.db_path)  # the proposal and its block are gone; the file keeps the lock
        driver = open_with_a_pending_record(config, authority, issuer)
        driver.svc.close()
    assert f"event=locked_block_unknown height=1 block={locked.locked_block.hex()}" in caplog.text


@contextlib.contextmanager
def one_of_four_validators(tmp_path: Path) -> Iterator[tuple[list[KeyPair], NodeConfig, ConsensusDriver]]:
    """The driver of the first of four validators' keys (no peers), in height 1; closed on leaving."""
    four = [KeyPair.generate() for _ in range(4)]
    genesis = Genesis(GENESIS_FORMAT, CHAIN, 1_700_000_000_000,
                      tuple(GenesisAuthority(k.did, f"A{i}") for i, k in enumerate(four)), ())
    genesis.save(tmp_path / "genesis.json")
    write_key_file(tmp_path / "a.key", four[0])
    config = init_data_dir(tmp_path / "node", tmp_path / "genesis.json", tmp_path / "a.key", "127.0.0.1:8701")
    driver = ConsensusDriver(NodeService(load_config(config.data), four[0]))
    try:
        assert driver.engine is not None
        driver._thread_start(1, [])
        yield four, config, driver
    finally:
        driver.svc.close()


def relayed(message: Vote, by: KeyPair) -> Incoming:
    """`message` as a peer with key `by` gossips it."""
    raw = message.encode()
    return Incoming(message, raw, sha256(raw), by.public_key)


def test_a_conflicting_vote_of_its_own_key_makes_a_validator_hold_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Its record covers the position, so it is no news by position alone; but the key signed two
    # different votes there: another process signs with it, or a restored copy's vote came late. The
    # validator signs nothing more where that other may be signing.
    with one_of_four_validators(tmp_path) as (four, config, driver):
        assert driver.engine is not None
        me = four[0]
        driver._thread_feed([TimeoutFired("propose", 1, 0)])  # no proposal came: it prevotes nil
        ours = driver.engine.signed_state
        assert ours is not None and ours.position == (1, 0, PREVOTE)
        other = Vote.make(me, CHAIN, PREVOTE, 1, 0, os.urandom(32))  # the same key, for a block
        with caplog.at_level(logging.WARNING, logger="ler.consensus"):
            out = driver._thread_feed([relayed(other, four[1])])
        assert any(isinstance(a, Evidence) for a in out.actions)
        held = driver.engine.signed_state
        assert held is not None and held.is_hold and held.height >= 2, held
        assert read_signed_file(config.signed_path, CHAIN, me.public_key) == held  # durable, as if signed
        said = [r.getMessage() for r in caplog.records if "event=signed_beyond_record" in r.getMessage()]
        assert len(said) == 1 and "conflicts with another it signed" in said[0], said
        # Nothing more at height 1: its prevote timeout passes and no precommit is signed.
        out = driver._thread_feed([TimeoutFired("prevote", 1, 0)])
        assert not [a for a in out.actions if isinstance(a, _Send)]
        assert driver.engine.signed_state == held


def test_only_a_relayed_message_its_key_really_signed_makes_a_validator_hold_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Anyone can write a validator's key on a message. Beyond its record, one with a signature that does
    # not verify (made up, or signed for another chain) buys no hold: else one faulty peer could keep
    # honest validators from voting. The same message really signed by its key does.
    with one_of_four_validators(tmp_path) as (four, _, driver):
        assert driver.engine is not None
        me = four[0]
        before = driver.engine.signed_state
        assert before is None or before.position < (1, 3, PRECOMMIT), before
        genuine = Vote.make(me, CHAIN, PRECOMMIT, 1, 3, os.urandom(32))
        forged = [
            dataclasses.replace(genuine, sig=os.urandom(64)),
            dataclasses.replace(genuine, block=os.urandom(32)),
            Vote.make(me, "another-chain", PRECOMMIT, 1, 3, genuine.block),
            dataclasses.replace(Vote.make(four[1], CHAIN, PRECOMMIT, 1, 3, genuine.block),
                                validator=me.public_key),
        ]
        with caplog.at_level(logging.WARNING, logger="ler.consensus"):
            for vote in forged:
                out = driver._thread_feed([relayed(vote, four[1])])
                assert any(isinstance(a, Rejected) and "invalid signature" in a.reason for a in out.actions)
                assert driver.engine.signed_state == before
            assert "event=signed_beyond_record" not in caplog.text
            driver._thread_feed([relayed(genuine, four[1])])
        held = driver.engine.signed_state
        assert held is not None and held.is_hold and held.height >= 2, held
        assert "event=signed_beyond_record height=1 round=3 step=precommit" in caplog.text
