"""The ledger state's entries and where each lives in the authenticated map.

The state is a sparse Merkle map from 32-byte keys to canonical msgpack values. Keys are
SHA-256(namespace || 0x00 || ident) (ler.smt.key_for):

  "authorities" ident b""                    -> AuthoritySet
  "issuer"      ident did (UTF-8)            -> IssuerEntry
  "record"      ident record id (16 bytes)   -> RecordEntry
  "endorsement" ident record id || endorser public key -> EndorsementEntry
  "proposal"    ident action id              -> Proposal

Nothing here is personal data: dids (fresh per record, if the holder likes), types, hashes, heights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

from ler.smt import key_for
from ler.tx import RECORD_ID_BYTES, Action, scope_covers
from ler.wire import Wire, b32, limit

ACTIVE, SUSPENDED, WITHDRAWN = "active", "suspended", "withdrawn"
ACCREDITED, SELF_ASSERTED, UNACCREDITED = "accredited", "self-asserted", "unaccredited"
#: The most signing keys an issuer entry holds (its first key and every rotation since).
MAX_ISSUER_KEYS = 64


@dataclass(frozen=True, slots=True)
class Authority(Wire):
    key: bytes = b32()
    name: str = limit(max=200)


@dataclass(frozen=True, slots=True)
class AuthoritySet(Wire):
    """The authorities, ascending by key. A change committed at height h makes them validators at h+2."""

    members: tuple[Authority, ...] = limit(max=128)

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(a.key for a in self.members)


@dataclass(frozen=True, slots=True)
class KeyEpoch(Wire):
    key: bytes = b32()
    since: int = limit()  # the first height at which this key signs for the issuer


@dataclass(frozen=True, slots=True)
class IssuerEntry(Wire):
    did: str = limit(max=64)            # the issuer's identity: the did of its first key
    name: str = limit(max=200)
    scopes: tuple[str, ...] = limit(max=16)
    status: str = limit(max=16)         # active | suspended | withdrawn
    until: int | None = limit()         # accreditation covers blocks with time <= until (ms)
    accredited: int = limit()           # height of the (latest) accreditation
    changed: int = limit()              # height of the latest status change
    keys: tuple[KeyEpoch, ...] = limit(max=MAX_ISSUER_KEYS)

    def key_at(self, height: int) -> bytes:
        """The key that signs for this issuer at `height`."""
        current = self.keys[0].key
        for epoch in self.keys:
            if epoch.since <= height:
                current = epoch.key
        return current

    def covers(self, rtype: str) -> bool:
        return _covers(self.scopes, rtype)

    def accredits(self, rtype: str, time_ms: int) -> bool:
        """Whether a record of `rtype` anchored now, at block time `time_ms`, counts as accredited."""
        return (self.status == ACTIVE and self.covers(rtype)
                and (self.until is None or time_ms <= self.until))


@functools.lru_cache(maxsize=4096)
def _covers(scopes: tuple[str, ...], rtype: str) -> bool:
    # Asked for every anchor, with the few scope lists and record types a ledger has.
    return any(scope_covers(s, rtype) for s in scopes)


@dataclass(frozen=True, slots=True)
class Revocation(Wire):
    height: int = limit()
    reason: str = limit(max=200)


@dataclass(frozen=True, slots=True)
class RecordEntry(Wire):
    issuer: str = limit(max=64)         # the issuer's did (identity, not necessarily the signing key)
    signer: bytes = b32()               # the key that signed the anchor
    holder: str = limit(max=64)
    rtype: str = limit(max=200)
    commitment: bytes = b32()
    standing: str = limit(max=16)       # accredited | self-asserted | unaccredited, fixed at anchoring
    anchored: int = limit()             # height
    tx: bytes = b32()                   # the anchoring transaction's id
    expires: int | None = limit()
    revoked: Revocation | None = limit()


@dataclass(frozen=True, slots=True)
class EndorsementEntry(Wire):
    record: bytes = limit(size=RECORD_ID_BYTES)
    endorser: bytes = b32()
    height: int = limit()
    digest: bytes | None = b32()


@dataclass(frozen=True, slots=True)
class Proposal(Wire):
    action: Action
    votes: tuple[bytes, ...] = limit(max=128)  # authority keys, ascending
    opened: int = limit()


_AUTHORITIES_KEY = key_for("authorities", b"")


def authorities_key() -> bytes:
    return _AUTHORITIES_KEY


@functools.lru_cache(maxsize=4096)  # nearly every transaction reads its issuer's entry; few issuers
def issuer_key(did: str) -> bytes:
    return key_for("issuer", did.encode("utf-8"))


def record_key(record_id: bytes) -> bytes:
    return key_for("record", record_id)


def endorsement_key(record_id: bytes, endorser: bytes) -> bytes:
    return key_for("endorsement", record_id + endorser)


def proposal_key(action_id: bytes) -> bytes:
    return key_for("proposal", action_id)


class StateView(Protocol):
    """Read and write access to the state map, as the ledger rules see it."""

    def get(self, key: bytes) -> bytes | None: ...

    def set(self, key: bytes, value: bytes | None) -> None: ...
