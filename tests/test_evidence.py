"""Pieces of evidence of equivocation (node/evidence.py): what a node's engine found, checked as a peer
checks it, and stored pieces of either form read for the API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consensus import Proposal
from consensus.engine import ConflictingProposals, Evidence
from ler import codec
from ler.block import GENESIS_FORMAT, PRECOMMIT, PREVOTE, Block, Genesis, GenesisAuthority, Vote
from ler.keys import KeyPair
from node.evidence import BadEvidence, check, piece_of, to_json
from storage.chain import ChainStore

CHAIN = "evidence-test"
KEYS = [KeyPair.generate() for _ in range(4)]
VALS = tuple(sorted(k.public_key for k in KEYS))
BY_PK = {k.public_key: k for k in KEYS}


def validators(h: int) -> tuple[bytes, ...]:
    if h > 100:
        raise ValueError(f"the validators of height {h} are not known yet")
    return VALS


def two_blocks(tmp_path: Path, proposer: KeyPair) -> tuple[Block, Block]:
    genesis = Genesis(format=GENESIS_FORMAT, chain_id=CHAIN, genesis_time=1000,
                      authorities=tuple(GenesisAuthority(k.did, f"A{i}") for i, k in enumerate(KEYS)), issuers=())
    with ChainStore(tmp_path / "db", genesis) as store:
        return (store.make_block([], 2000, 0, proposer.public_key, None)[0],
                store.make_block([], 3000, 0, proposer.public_key, None)[0])


def test_votes_found_here_pass_a_peers_check_and_read_back() -> None:
    liar = KEYS[2]
    a, b = (Vote.make(liar, CHAIN, PREVOTE, 7, 3, block) for block in (os.urandom(32), None))
    piece = piece_of(Evidence(a, b))
    got = check(piece.raw, CHAIN, validators)
    assert got == piece and (got.height, got.round, got.slot, got.who) == (7, 3, PREVOTE, liar.public_key)
    out = to_json(piece.key, piece.raw)
    assert out["kind"] == "duplicate_vote" and out["step"] == "prevote" and out["validator"] == liar.did
    assert (out["height"], out["round"]) == (7, 3) and len(out["messages"]) == 2
    with pytest.raises(BadEvidence, match="signature does not verify"):
        check(piece.raw, "another-chain", validators)
    with pytest.raises(BadEvidence, match="not known yet"):
        check(piece_of(Evidence(*(Vote.make(liar, CHAIN, PRECOMMIT, 500, 0, os.urandom(32)) for _ in "ab"))).raw,
              CHAIN, validators)


def test_a_vote_piece_names_every_key_as_a_did_as_proposal_pieces_do() -> None:
    """GET /v1/evidence names validators by did (the piece's validator, a proposal's proposer); a vote's
    own JSON gives its key in hex, so each vote message of a piece must say the same did, or a reader
    could not see that the two messages and the piece are of one validator."""
    liar = KEYS[1]
    a, b = (Vote.make(liar, CHAIN, PRECOMMIT, 9, 1, block) for block in (os.urandom(32), os.urandom(32)))
    piece = piece_of(Evidence(a, b))
    out = to_json(piece.key, piece.raw)
    assert [m["validator"] for m in out["messages"]] == [liar.did, liar.did] == [out["validator"]] * 2
    assert [m["block"] for m in out["messages"]] == [a.block.hex(), b.block.hex()]  # type: ignore[union-attr]
    assert a.to_json()["validator"] == liar.public_key.hex()  # Vote's own JSON, which other code reads, stays


def test_the_api_document_gives_the_order_evidence_is_listed_in() -> None:
    """The node lists evidence by its stored key in reverse: highest height first, then highest round;
    "newest first" would promise an order by arrival, which it does not keep."""
    from node.openapi import document

    summary = document("test")["paths"]["/v1/evidence"]["get"]["summary"]
    assert "highest height first" in summary and "highest round first" in summary and "newest" not in summary


def test_proposals_found_here_travel_without_their_blocks_and_old_stored_ones_still_read(tmp_path: Path) -> None:
    h, r = 5, 2
    proposer = BY_PK[VALS[(h + r) % len(VALS)]]
    block_a, block_b = two_blocks(tmp_path, proposer)
    p, q = (Proposal.make(proposer, CHAIN, h, r, -1, block) for block in (block_a, block_b))
    piece = piece_of(ConflictingProposals(p, q))
    assert len(piece.raw) < 600 < len(p.encode()) + len(q.encode())  # the blocks stay out of it
    assert check(piece.raw, CHAIN, validators) == piece
    new = to_json(piece.key, piece.raw)
    old = to_json(piece.key, codec.encode({"kind": "proposal", "a": p.encode(), "b": q.encode()}))
    assert new == old and new["kind"] == "duplicate_proposal" and new["validator"] == proposer.did
    assert [m["block"] for m in new["messages"]] == [block_a.hash.hex(), block_b.hash.hex()]
    other = BY_PK[VALS[(h + r + 1) % len(VALS)]]  # signs proposals for a round it does not propose
    wrong = piece_of(ConflictingProposals(*(Proposal.make(other, CHAIN, h, r, -1, b) for b in (block_a, block_b))))
    with pytest.raises(BadEvidence, match="not the proposer"):
        check(wrong.raw, CHAIN, validators)
