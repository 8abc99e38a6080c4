"""Building real chains for tests: a genesis, a LevelDB ChainStore, and blocks committed with real
precommit certificates signed by the validators of each height (as a network would commit them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
)
from ler.keys import KeyPair
from ler.record import RecordDocument, make_claims
from ler.tx import RecordAnchor, Tx, sign_tx
from storage.chain import ChainStore

CHAIN = "ler-test"
T0 = 1_700_000_000_000
BLOCK_MS = 1000


def fixed_key(n: int) -> KeyPair:
    """A deterministic key: the same seed (and so the same did) on every run."""
    return KeyPair(bytes([n % 256]) * 31 + bytes([n // 256]))


def make_genesis(authorities: Sequence[KeyPair], issuers: Sequence[tuple[KeyPair, tuple[str, ...]]] = (),
                 chain: str = CHAIN, time: int = T0) -> Genesis:
    return Genesis(
        format=GENESIS_FORMAT, chain_id=chain, genesis_time=time,
        authorities=tuple(GenesisAuthority(k.did, f"authority {i}") for i, k in enumerate(authorities)),
        issuers=tuple(GenesisIssuer(k.did, f"issuer {i}", scopes) for i, (k, scopes) in enumerate(issuers)))


def certify(signers: Sequence[KeyPair], block: Block, chain: str = CHAIN, round_: int = 0) -> CommitCertificate:
    """A commit certificate of `block`: each signer's PRECOMMIT, in ascending validator order."""
    h = block.header.height
    sigs = []
    for k in signers:
        vote = Vote.make(k, chain, PRECOMMIT, h, round_, block.hash)
        assert vote.signature_valid(chain)
        sigs.append(CertSig(validator=vote.validator, sig=vote.sig))
    return CommitCertificate(h, round_, block.hash, tuple(sorted(sigs, key=lambda s: s.validator)))


class ChainBuilder:
    """A ChainStore in a folder, and the validator keys that certify its blocks."""


    def __init__(self, path: Path, genesis: Genesis, validator_keys: Sequence[KeyPair], **store_options: int) -> None:
        self.genesis = genesis
        self.store = ChainStore(path, genesis, **store_options)
        self.keys = {k.public_key: k for k in validator_keys}

    def add_validator_key(self, key: KeyPair) -> None:
        self.keys[key.public_key] = key

    def time_of(self, h: int) -> int:
        return T0 + BLOCK_MS * h

    def commit(self, txs: Sequence[Tx] = (), time: int | None = None) -> Block:
        """Propose the next block with `txs` (all of which must apply), certify it and commit it."""
        s = self.store
        h = s.height + 1
        vals = s.validators(h)
        block, result = s.make_block(list(txs), self.time_of(h) if time is None else time, 0,
                                     vals[h % len(vals)], s.cert(h - 1))
        assert not result.rejected, [(tx.type, str(err)) for tx, err in result.rejected]
        s.commit_block(block, certify([self.keys[v] for v in vals], block, self.genesis.chain_id), result)
        return block

    def close(self) -> None:
        self.store.close()


def new_record(issuer: KeyPair, holder: str, rtype: str = "degree.bachelor",
               values: dict[str, Any] | None = None, chain: str = CHAIN, issuer_did: str | None = None,
               expires: int | None = None) -> tuple[RecordDocument, Tx]:
    """A record document with fresh salts and its anchoring transaction signed by `issuer`."""
    claims = make_claims(values or {"degree": "BSc Physics", "awarded": 2009, "grade": "first",
                                    "institution": "Example University"})
    doc = RecordDocument(chain_id=chain, record_id=os.urandom(16), issuer=issuer_did or issuer.did,
                         holder=holder, rtype=rtype, expires=expires, claims=claims)
    body = RecordAnchor(record=doc.record_id, issuer=doc.issuer, holder=holder, rtype=rtype,
                        commitment=doc.commitment, expires=expires)
    return doc, sign_tx(issuer, chain, body)
