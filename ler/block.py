"""Blocks, headers, votes, commit certificates and the genesis document.

A block's hash is SHA-256 of its header's canonical encoding. The header commits to the block's
transactions (tx_root: RFC 6962 root over the tx ids), the state after the block (state_root: sparse
Merkle root), and all history before it (history_root: RFC 6962 root over [genesis hash, hash of block 1,
..., hash of block height-1]), so one recent committed header vouches for everything before it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ler import codec, keys, merkle
from ler.errors import DecodeError, ProofError
from ler.files import read_capped
from ler.keys import KeyPair, sha256
from ler.tx import Tx, check_chain_id, check_record_type
from ler.wire import Wire, b32, b64, limit

MAX_BLOCK_TXS = 10_000
MAX_VALIDATORS = 128
PREVOTE, PRECOMMIT = 1, 2


@dataclass(frozen=True, slots=True)
class Header(Wire):
    chain: str = limit(max=64)
    height: int = limit(lo=1)
    round: int = limit(hi=2**31)
    time: int = limit()  # the proposer's clock, ms since the epoch
    prev: bytes = b32()  # hash of block height-1 (of the genesis document for height 1)
    tx_count: int = limit(hi=MAX_BLOCK_TXS)
    tx_root: bytes = b32()
    state_root: bytes = b32()
    history_root: bytes = b32()
    validators_hash: bytes = b32()
    next_validators_hash: bytes = b32()
    proposer: bytes = b32()

    @property
    def hash(self) -> bytes:
        return sha256(self.encode())


@dataclass(frozen=True, slots=True)
class Vote(Wire):
    """A prevote or precommit for a block (or for nothing: block = None) at (height, round)."""

    type: int = limit(lo=PREVOTE, hi=PRECOMMIT)
    height: int = limit(lo=1)
    round: int = limit(hi=2**31)
    block: bytes | None = b32()
    validator: bytes = b32()
    sig: bytes = b64()

    @staticmethod
    def payload(vtype: int, height: int, round_: int, block: bytes | None) -> dict[str, Any]:
        return {"type": vtype, "height": height, "round": round_, "block": block}

    @classmethod
    def make(cls, key: KeyPair, chain_id: str, vtype: int, height: int, round_: int,
             block: bytes | None) -> Vote:
        sig = key.sign_payload("vote", chain_id, cls.payload(vtype, height, round_, block))
        return cls(vtype, height, round_, block, key.public_key, sig)

    def signature_valid(self, chain_id: str) -> bool:
        return keys.verify_signed(self.validator, "vote", chain_id,
                                  self.payload(self.type, self.height, self.round, self.block), self.sig)


@dataclass(frozen=True, slots=True)
class CertSig(Wire):
    validator: bytes = b32()
    sig: bytes = b64()


@dataclass(frozen=True, slots=True)
class CommitCertificate(Wire):
    """Precommits for `block` at (height, round) by more than 2/3 of that height's validators."""

    height: int = limit(lo=1)
    round: int = limit(hi=2**31)
    block: bytes = b32()
    sigs: tuple[CertSig, ...] = limit(max=MAX_VALIDATORS)

    def verify(self, chain_id: str, validators: tuple[bytes, ...] | list[bytes]) -> None:
        """Raise ProofError unless more than 2/3 of `validators` validly precommitted this block."""
        vset = set(validators)
        seen: set[bytes] = set()
        payload = Vote.payload(PRECOMMIT, self.height, self.round, self.block)
        prev = b""
        for s in self.sigs:
            if s.validator <= prev:
                raise ProofError("certificate signatures are not in strictly ascending validator order")
            prev = s.validator
            if s.validator not in vset:
                raise ProofError(f"certificate is signed by {keys.did_from_public_key(s.validator)}, "
                                 "not a validator of that height")
            if not keys.verify_signed(s.validator, "vote", chain_id, payload, s.sig):
                raise ProofError(f"certificate signature of {keys.did_from_public_key(s.validator)} "
                                 "is invalid")
            seen.add(s.validator)
        if 3 * len(seen) <= 2 * len(vset):
            raise ProofError(f"certificate has {len(seen)} of {len(vset)} validator signatures; "
                             "more than 2/3 are needed")


@dataclass(frozen=True, slots=True)
class Block(Wire):
    header: Header
    txs: tuple[bytes, ...] = limit(max=MAX_BLOCK_TXS)  # each a transaction's canonical bytes
    last_cert: CommitCertificate | None = limit()  # the certificate of block height-1 (None at height 1)

    @property
    def hash(self) -> bytes:
        return self.header.hash

    def decoded_txs(self) -> list[Tx]:
        return [Tx.decode(raw) for raw in self.txs]


def tx_root(tx_ids: list[bytes]) -> bytes:
    return merkle.root(tx_ids)


def validators_hash(validators: tuple[bytes, ...] | list[bytes]) -> bytes:
    """Hash of a validator set: SHA-256 of the canonical array of its keys in ascending order."""
    return sha256(codec.encode(sorted(validators)))


# --- genesis --------------------------------------------------------------------------------------

GENESIS_FORMAT = "ler-genesis/1"


@dataclass(frozen=True, slots=True)
class GenesisAuthority(Wire):
    did: str = limit(max=64)
    name: str = limit(max=200)

    def __post_init__(self) -> None:
        keys.public_key_from_did(self.did)


@dataclass(frozen=True, slots=True)
class GenesisIssuer(Wire):
    did: str = limit(max=64)
    name: str = limit(max=200)
    scopes: tuple[str, ...] = limit(max=16)

    def __post_init__(self) -> None:
        keys.public_key_from_did(self.did)
        if not self.scopes:
            raise DecodeError("a genesis issuer needs at least one scope")
        for s in self.scopes:
            check_record_type(s, "scope")


@dataclass(frozen=True, slots=True)
class Genesis(Wire):
    """The trust root: the chain id, start time, first authorities and (optionally) first issuers."""

    format: str = limit(max=32)
    chain_id: str = limit(max=64)
    genesis_time: int = limit()
    authorities: tuple[GenesisAuthority, ...] = limit(max=MAX_VALIDATORS)
    issuers: tuple[GenesisIssuer, ...] = limit(max=1024)

    def __post_init__(self) -> None:
        if self.format != GENESIS_FORMAT:
            raise DecodeError(f"genesis format must be {GENESIS_FORMAT!r}")
        check_chain_id(self.chain_id)
        if not self.authorities:
            raise DecodeError("genesis needs at least one authority")
        dids = [a.did for a in self.authorities]
        if len(set(dids)) != len(dids):
            raise DecodeError("genesis lists an authority twice")
        idids = [i.did for i in self.issuers]
        if len(set(idids)) != len(idids):
            raise DecodeError("genesis lists an issuer twice")

    @property
    def hash(self) -> bytes:
        return sha256(self.encode())

    @property
    def validators(self) -> tuple[bytes, ...]:
        return tuple(sorted(keys.public_key_from_did(a.did) for a in self.authorities))

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Genesis:
        try:
            raw = read_capped(path, 1024 * 1024)
        except OSError as exc:
            raise DecodeError(f"cannot read genesis file {path}: {exc.strerror}") from None
        if len(raw) > 1024 * 1024:
            raise DecodeError(f"{path} is too large for a genesis file")
        try:
            obj = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number too long
            raise DecodeError(f"{path} is not valid JSON: {exc}") from None
        except RecursionError:
            raise DecodeError(f"{path} is not valid JSON: nested too deeply") from None
        if not isinstance(obj, dict) or "format" not in obj:
            # Another of the project's files given by mistake (a claims file, a bundle, a record file): say
            # that, rather than name the first field a genesis file has not.
            raise DecodeError(f"{path} is not a genesis file (one has \"format\": \"{GENESIS_FORMAT}\"; "
                              "`ler genesis new` writes one)")
        return cls.from_json(obj, "genesis")
