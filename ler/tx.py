"""Signed transactions: the five kinds of change a ledger accepts.

A transaction is a map {chain, type, signer, nonce, body, sig}. `sig` is the signer's Ed25519 signature
over keys.signing_bytes("tx", chain, {type, signer, nonce, body}); its id is SHA-256 of the canonical
encoding of the whole map, signature included. The nonce lets one signer send the same action twice
as two distinct transactions; the ledger applies any id at most once.

Types and bodies (docs/PROTOCOL.md, "Transactions"):
  gov.vote       {action}                                   an authority votes for a governance action
  issuer.rotate  {issuer, new_key, new_key_sig}             an issuer moves to a new signing key
  record.anchor  {record, issuer, holder, rtype, commitment, expires}
  record.revoke  {record, reason}
  record.endorse {record, digest}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import msgpack

from ler import codec, keys
from ler.errors import DecodeError
from ler.keys import KeyPair, sha256
from ler.native import load
from ler.wire import Wire, b32, b64, hex_bytes, limit, packb

MAX_TX_BYTES = 4096
RECORD_ID_BYTES = 16

ACTION_KINDS = ("accredit", "suspend", "reinstate", "withdraw", "add_authority", "remove_authority")
_RTYPE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}(\.[a-z0-9][a-z0-9_-]{0,39}){0,7}")
_CHAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_record_type(rtype: str, what: str = "record type") -> None:
    """Record types (and scopes) are dot-separated lowercase segments: "degree", "degree.bachelor"."""
    if type(rtype) is str and rtype in _RTYPES_SEEN:
        return
    if not isinstance(rtype, str) or not _RTYPE.fullmatch(rtype):
        raise DecodeError(f"{what} {rtype!r} must be dot-separated segments of a-z, 0-9, '-' or '_'")
    if len(_RTYPES_SEEN) < 4096:
        _RTYPES_SEEN.add(rtype)


#: Record types check_record_type accepted (a ledger uses a few dozen; the set stops growing at 4,096).
_RTYPES_SEEN: set[str] = set()


def check_chain_id(chain_id: str) -> None:
    if not isinstance(chain_id, str) or not _CHAIN.fullmatch(chain_id):
        raise DecodeError(f"chain id {chain_id!r} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'")


def scope_covers(scope: str, rtype: str) -> bool:
    """A scope is a record-type prefix: "degree" covers "degree" and "degree.bachelor", not "degrees"."""
    return rtype == scope or rtype.startswith(scope + ".")


def _check_did(did: str, what: str, named_only: bool = False) -> None:
    """`named_only`: the did is only named (its key is not needed), and mostly new (a record's holder)."""
    try:
        if named_only:
            keys.check_did_key(did)
        else:
            keys.public_key_from_did(did)  # cached: issuers and authorities recur
    except DecodeError as exc:
        raise DecodeError(f"{what}: {exc}") from None


# --- governance -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Action(Wire):
    """A governance action. It executes when more than 2/3 of the authorities voted for the same one."""

    kind: str = limit(max=32)
    subject: str = limit(max=64)          # the issuer's or authority's did:key
    name: str | None = limit(max=200)     # accredit, add_authority
    scopes: tuple[str, ...] = limit(max=16)  # accredit: record-type prefixes
    until: int | None = None               # accredit: valid for blocks with time <= until (ms)

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise DecodeError(f"unknown action kind {self.kind!r} (one of {', '.join(ACTION_KINDS)})")
        _check_did(self.subject, "action subject")
        if self.kind == "accredit":
            if not self.name or not self.scopes:
                raise DecodeError("accredit needs a name and at least one scope")
            for s in self.scopes:
                check_record_type(s, "scope")
            if len(set(self.scopes)) != len(self.scopes) or list(self.scopes) != sorted(self.scopes):
                raise DecodeError("scopes must be sorted and distinct")
        elif self.kind == "add_authority":
            if not self.name or self.scopes or self.until is not None:
                raise DecodeError("add_authority takes a name only")
        elif self.name is not None or self.scopes or self.until is not None:
            raise DecodeError(f"{self.kind} takes only a subject")

    @property
    def action_id(self) -> bytes:
        return sha256(self.encode())


@dataclass(frozen=True, slots=True)
class GovVote(Wire):
    TYPE: ClassVar[str] = "gov.vote"
    action: Action


@dataclass(frozen=True, slots=True)
class IssuerRotate(Wire):
    """Rotate an issuer's signing key. Signed by the current key; `new_key_sig` proves the new key is held."""

    TYPE: ClassVar[str] = "issuer.rotate"
    issuer: str = limit(max=64)
    new_key: bytes = b32()
    new_key_sig: bytes = b64()

    def __post_init__(self) -> None:
        _check_did(self.issuer, "issuer")

    @staticmethod
    def possession_payload(issuer: str, new_key: bytes) -> dict[str, Any]:
        return {"issuer": issuer, "new_key": new_key}


# --- records --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RecordAnchor(Wire):
    """Anchor a record's commitment. No personal data: the claims stay with the holder."""

    TYPE: ClassVar[str] = "record.anchor"
    record: bytes = limit(size=RECORD_ID_BYTES)
    issuer: str = limit(max=64)
    holder: str = limit(max=64)
    rtype: str = limit(max=200)
    commitment: bytes = b32()
    expires: int | None = None  # ms since the epoch; the record reads as expired after it

    def __post_init__(self) -> None:
        _check_did(self.issuer, "issuer")
        _check_did(self.holder, "holder", named_only=True)
        check_record_type(self.rtype)


@dataclass(frozen=True, slots=True)
class RecordRevoke(Wire):
    TYPE: ClassVar[str] = "record.revoke"
    record: bytes = limit(size=RECORD_ID_BYTES)
    reason: str = limit(max=200)

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise DecodeError("a revocation needs a reason")


@dataclass(frozen=True, slots=True)
class RecordEndorse(Wire):
    """Any did:key vouches for a record; `digest` may commit to an off-chain statement the holder keeps."""

    TYPE: ClassVar[str] = "record.endorse"
    record: bytes = limit(size=RECORD_ID_BYTES)
    digest: bytes | None = b32(default=None)


Body = GovVote | IssuerRotate | RecordAnchor | RecordRevoke | RecordEndorse
BODY_TYPES: dict[str, type[Wire]] = {
    cls.TYPE: cls for cls in (GovVote, IssuerRotate, RecordAnchor, RecordRevoke, RecordEndorse)
}
_BODY_WHERE = {t: f"transaction.body ({t})" for t in BODY_TYPES}


@dataclass(frozen=True, slots=True)
class Tx:
    """A signed transaction. `raw` is its canonical encoding; `tx_id` is SHA-256(raw)."""

    chain: str
    type: str
    signer: bytes
    nonce: int
    body: Any  # one of the Body classes, matching `type`
    sig: bytes
    raw: bytes
    tx_id: bytes
    #: The bytes `sig` covers, when decoding already had them at hand (else built on demand).
    signing: bytes | None = field(default=None, compare=False, repr=False)

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"chain", "type", "signer", "nonce", "body", "sig"})

    @property
    def signer_did(self) -> str:
        return keys.did_from_public_key(self.signer)

    def signed_payload(self) -> dict[str, Any]:
        return {"type": self.type, "signer": self.signer, "nonce": self.nonce, "body": self.body.to_obj()}

    def signing_bytes(self) -> bytes:
        if self.signing is not None:
            return self.signing
        return keys.signing_bytes("tx", self.chain, self.signed_payload())

    def signature_valid(self) -> bool:
        return keys.verify(self.signer, self.signing_bytes(), self.sig)

    def to_obj(self) -> dict[str, Any]:
        return {"chain": self.chain, "type": self.type, "signer": self.signer, "nonce": self.nonce,
                "body": self.body.to_obj(), "sig": self.sig}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.tx_id.hex(), "chain": self.chain, "type": self.type, "signer": self.signer_did,
                "nonce": self.nonce, "body": self.body.to_json(), "sig": self.sig.hex()}

    @classmethod
    def from_obj(cls, obj: Any, raw: bytes | None = None, signing: bytes | None = None) -> Self:
        if not isinstance(obj, dict):
            raise DecodeError("transaction: expected a map")
        extra = set(obj) - cls._FIELDS
        if extra:
            raise DecodeError(f"transaction: unknown field {sorted(extra)[0]!r}")
        missing = cls._FIELDS - set(obj)
        if missing:
            raise DecodeError(f"transaction: missing field {sorted(missing)[0]!r}")
        chain, ttype, signer, nonce, sig = obj["chain"], obj["type"], obj["signer"], obj["nonce"], obj["sig"]
        if not isinstance(chain, str):
            raise DecodeError("transaction.chain: expected a string")
        check_chain_id(chain)
        body_cls = BODY_TYPES.get(ttype) if isinstance(ttype, str) else None
        if body_cls is None:
            raise DecodeError(f"transaction.type: unknown type {str(ttype)[:40]!r} "
                              f"(one of {', '.join(BODY_TYPES)})")
        if not isinstance(signer, bytes) or len(signer) != 32:
            raise DecodeError("transaction.signer: expected a 32-byte Ed25519 public key")
        if not isinstance(nonce, int) or isinstance(nonce, bool) or not 0 <= nonce < 2**64:
            raise DecodeError("transaction.nonce: expected an unsigned 64-bit integer")
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise DecodeError("transaction.sig: expected a 64-byte signature")
        body = body_cls.from_obj(obj["body"], _BODY_WHERE[ttype])
        if raw is None:
            raw = codec.encode(obj)
        if len(raw) > MAX_TX_BYTES:
            raise DecodeError(f"transaction of {len(raw)} bytes exceeds {MAX_TX_BYTES}")
        return cls(chain, ttype, signer, nonce, body, sig, raw, sha256(raw), signing)

    @classmethod
    def decode(cls, data: bytes, tx_id: bytes | None = None) -> Self:
        """The transaction encoded by `data`, which must be canonical. `tx_id`: sha256(data), when the
        caller has just computed it (a node hashes what a peer sends before deciding to decode it)."""
        if type(data) is not bytes:
            data = bytes(data)
        if _native is not None:
            tx_id = tx_id or sha256(data)  # once, for the Python path too if the C code declines
            tx = _native.anchor(data, tx_id)
            if tx is not None:
                return tx
        obj = _fast_canonical(data)
        if obj is not None:
            chain, ttype, signer, nonce, sig = obj["chain"], obj["type"], obj["signer"], obj["nonce"], obj["sig"]
            body_cls = BODY_TYPES.get(ttype) if type(ttype) is str else None
            if (body_cls is not None and type(chain) is str and chain in _CHAINS_SEEN
                    and type(signer) is bytes and len(signer) == 32 and type(nonce) is int and 0 <= nonce < 2**64
                    and type(sig) is bytes and len(sig) == 64):
                # The fields from_obj checks before the body are well-formed, and the canonical check
                # fixed every byte of `data`: the body is parsed as from_obj would, and the signed bytes
                # are spliced out of `data` instead of packed again.
                body = body_cls.from_obj(obj["body"], _BODY_WHERE[ttype])
                return cls(chain, ttype, signer, nonce, body, sig, data, tx_id or sha256(data),
                           _signing_from_raw(data, chain, nonce, ttype))
            tx = cls.from_obj(obj, raw=data)
            if len(_CHAINS_SEEN) < 64:
                _CHAINS_SEEN.add(tx.chain)
            return tx
        # Anything else takes the general canonical check, which also says what is wrong.
        return cls.from_obj(codec.decode(data, MAX_TX_BYTES), raw=data)

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        """Parse the JSON form (bytes as hex, signer as did:key; an "id" field, if present, must match)."""
        if not isinstance(obj, dict):
            raise DecodeError("transaction: expected a JSON object")
        obj = dict(obj)
        claimed_id = obj.pop("id", None)
        ttype = obj.get("type")
        body_cls = BODY_TYPES.get(ttype) if isinstance(ttype, str) else None
        if body_cls is None:
            raise DecodeError(f"transaction.type: unknown type {str(ttype)[:40]!r}")
        try:
            signer = keys.public_key_from_did(obj.get("signer"))
            sig = hex_bytes(obj["sig"], 64, "transaction.sig") if isinstance(obj.get("sig"), str) else None
        except (DecodeError, ValueError) as exc:
            raise DecodeError(f"transaction: {exc}") from None
        body = body_cls.from_json(obj.get("body"), f"transaction.body ({ttype})")
        m = dict(obj, signer=signer, sig=sig, body=body.to_obj())
        tx = cls.from_obj(m)
        if claimed_id is not None and claimed_id != tx.tx_id.hex():
            raise DecodeError("transaction: the id given does not match its content")
        return tx


_TX_KEYS = ["body", "chain", "nonce", "sig", "signer", "type"]  # canonical (sorted) order
_TX_DOMAIN = keys.PROTOCOL_TAG + "/tx"


def _fast_canonical(data: bytes) -> dict[str, Any] | None:
    """The decoded map when `data` is a canonical transaction map, else None (for codec.decode to judge).

    Canonical msgpack is what codec.encode gives: maps with string keys in sorted order, no floats,
    shortest forms. When every map of the decoded value has its (ASCII) keys in ascending order and
    no value is a float, re-packing the value as it is yields the input again exactly when the input
    is in shortest form: codec.decode's rebuild-and-compare would give the same answer, at several
    times the cost. None sends the caller to codec.decode, which decides (and names the fault) in every
    other case.
    """
    if len(data) > MAX_TX_BYTES:
        return None
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=codec.refuse_ext)
    except Exception:  # any fault: the general decoder names it
        return None
    if type(obj) is not dict or list(obj) != _TX_KEYS or not _tx_maps_sorted(obj) or packb(obj) != data:
        return None
    return obj


def _tx_maps_sorted(obj: dict[str, Any]) -> bool:
    """`_maps_sorted` of a map with the transaction's keys (in order): at once when its body is the one
    map inside it, as in all but governance votes."""
    body, *rest = obj.values()
    if type(body) is dict and _LEAF_TYPES.issuperset(map(type, rest)) and _LEAF_TYPES.issuperset(
            map(type, body.values())):
        ks = list(body)
        try:
            return "".join(ks).isascii() and ks == sorted(ks)
        except TypeError:  # a key that is not a string
            return False
    return _maps_sorted(obj)


#: Chain ids a transaction decoded here named and check_chain_id accepted (a node sees one or two).
_CHAINS_SEEN: set[str] = set()
#: (chain id, tx type) -> the signed bytes' opening (array header, domain, chain), the type's entry, and
#: the length of the chain's entry in a transaction.
_SPLICE: dict[tuple[str, str], tuple[bytes, bytes, int]] = {}
_SIG_FIELD = 1 + 3 + 2 + 64  # "sig": bin8 of 64 bytes
_SIGNER_FIELD = 1 + 6 + 2 + 32  # "signer": bin8 of 32 bytes


def _signing_from_raw(data: bytes, chain: str, nonce: int, ttype: str) -> bytes:
    """keys.signing_bytes("tx", chain, {type, signer, nonce, body}) of the transaction whose canonical
    encoding is `data`. `data` is the map {body, chain, nonce, sig, signer, type} in that order; the signed
    map is {body, nonce, signer, type}, whose entries are byte for byte those of `data` (canonical forms do
    not depend on their neighbours), so it is `data` without its chain and sig entries, behind the
    opening that names the domain and chain."""
    try:
        opening, type_field, chain_field = _SPLICE[(chain, ttype)]
    except KeyError:
        opening = b"\x93" + packb(_TX_DOMAIN) + packb(chain)
        type_field = packb("type") + packb(ttype)
        chain_field = len(packb("chain") + packb(chain))
        if len(_SPLICE) < 256:
            _SPLICE[(chain, ttype)] = (opening, type_field, chain_field)
    nonce_field = b"\xa5nonce" + packb(nonce)
    tail = _SIG_FIELD + _SIGNER_FIELD + len(type_field)
    nonce_at = len(data) - tail - len(nonce_field)
    body_end = nonce_at - chain_field
    return b"".join((opening, b"\x84", data[1:body_end], nonce_field, data[len(data) - tail + _SIG_FIELD:]))


_LEAF_TYPES = frozenset({str, bytes, int, bool, type(None)})


def _maps_sorted(v: Any) -> bool:
    """Whether every map in `v` has ASCII string keys in ascending order (their UTF-8 byte order), and no
    value anywhere in `v` is a float."""
    todo = [v]
    for x in todo:  # grows as maps and arrays are met: a walk without recursion
        t = type(x)
        if t is dict:
            ks = list(x)
            try:
                if not "".join(ks).isascii():
                    return False
            except TypeError:  # a key that is not a string
                return False
            if ks != sorted(ks):
                return False
            values = x.values()
            if not _LEAF_TYPES.issuperset(map(type, values)):  # else nothing below needs a look
                todo.extend(values)
        elif t is list:
            if not _LEAF_TYPES.issuperset(map(type, x)):
                todo.extend(x)
        elif t is float:
            return False
    return True


def sign_tx(key: KeyPair, chain_id: str, body: Wire, nonce: int | None = None) -> Tx:
    """Build and sign a transaction with `key`."""
    import secrets

    check_chain_id(chain_id)
    ttype = type(body).TYPE  # type: ignore[attr-defined]
    if nonce is None:
        nonce = secrets.randbits(63)
    payload = {"type": ttype, "signer": key.public_key, "nonce": nonce, "body": body.to_obj()}
    sig = key.sign_payload("tx", chain_id, payload)
    obj = {"chain": chain_id, "type": ttype, "signer": key.public_key, "nonce": nonce,
           "body": body.to_obj(), "sig": sig}
    return Tx.from_obj(obj)


def rotation_body(issuer: str, current_chain: str, new_key: KeyPair) -> IssuerRotate:
    """An issuer.rotate body, with the new key's proof of possession."""
    new_sig = new_key.sign_payload("rotate", current_chain,
                                   IssuerRotate.possession_payload(issuer, new_key.public_key))
    return IssuerRotate(issuer=issuer, new_key=new_key.public_key, new_key_sig=new_sig)


_native = load("ler._tx_native", "LER_TX_IN_PYTHON")  # record anchors decoded in C, the same Tx
if _native is not None:
    _native.init(Tx, RecordAnchor, RecordAnchor.TYPE)
