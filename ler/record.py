"""Record documents, claim commitments and selective disclosure.

A record document is a set of claims (key -> value). Each claim gets a fresh 16-byte random salt. A
claim's digest is SHA-256(enc([value, salt])), its leaf data enc([key, digest]), and the record's
commitment is the RFC 6962 root over the leaf data of all claims sorted by key (ascending UTF-8 bytes).
Only the commitment goes on the ledger.

A disclosure covers every claim once: revealed claims with value and salt, hidden claims with their
name and digest only. The verifier rebuilds the whole leaf list, so the commitment pins down exactly
which claims exist, and it can say "awarded: hidden" by name; the salt keeps a hidden "2009" from being
guessed from its digest. Claim names are therefore visible to a verifier: sensitive facts belong in values.

Claim values are JSON values without floats (strings, integers, booleans, null, arrays, objects).
An evidence claim's value is {"sha256": hex, "media_type": str, "name": str}: the file stays with the
holder and a verifier given the file checks its hash.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ler import codec, merkle
from ler.errors import DecodeError
from ler.files import read_capped, write_durably
from ler.keys import check_did_key
from ler.tx import RECORD_ID_BYTES, check_chain_id, check_record_type
from ler.wire import b64url, b64url_bytes, hex_bytes, packb

SALT_BYTES = 16
MAX_CLAIMS = 256
MAX_CLAIM_KEY = 100
MAX_CLAIM_VALUE_BYTES = 4096
RECORD_FORMAT = "ler-record/1"
MAX_SAFE_INT = 2**53 - 1
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _check_value(value: Any, where: str) -> None:
    # The usual values pass every check below without encoding them: ASCII text short enough that its
    # encoding fits (no surrogates, at most 3 bytes of header), safe integers, booleans and null.
    t = type(value)
    if ((t is str and len(value) <= MAX_CLAIM_VALUE_BYTES - 3 and value.isascii())
            or (t is int and -MAX_SAFE_INT <= value <= MAX_SAFE_INT) or t is bool or value is None):
        return
    try:
        enc = codec.encode(value)
    except DecodeError as exc:
        raise DecodeError(f"claim {where}: {exc}") from None
    if len(enc) > MAX_CLAIM_VALUE_BYTES:
        raise DecodeError(f"claim {where}: value larger than {MAX_CLAIM_VALUE_BYTES} bytes")
    if _has_bytes(value):
        raise DecodeError(f"claim {where}: values are JSON values (no raw bytes)")
    if _has_unsafe_int(value):
        raise DecodeError(f"claim {where}: integers must be within +/-(2**53 - 1), so every JSON reader "
                          "keeps them exact")


def _has_unsafe_int(v: Any) -> bool:
    if isinstance(v, int) and not isinstance(v, bool):
        return abs(v) > MAX_SAFE_INT
    if isinstance(v, list | tuple):
        return any(_has_unsafe_int(x) for x in v)
    if isinstance(v, dict):
        return any(_has_unsafe_int(x) for x in v.values())
    return False


def _has_bytes(v: Any) -> bool:
    if isinstance(v, bytes | bytearray | memoryview):
        return True
    if isinstance(v, list | tuple):
        return any(_has_bytes(x) for x in v)
    if isinstance(v, dict):
        return any(_has_bytes(x) for x in v.values())
    return False


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    value: Any
    salt: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key or len(self.key) > MAX_CLAIM_KEY:
            raise DecodeError(f"claim key must be a string of 1-{MAX_CLAIM_KEY} characters")
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_BYTES:
            raise DecodeError(f"claim {self.key!r}: salt must be {SALT_BYTES} bytes")
        _check_value(self.value, repr(self.key))

    @property
    def digest(self) -> bytes:
        """SHA-256(enc([value, salt])): what a disclosure shows of the claim when it is hidden."""
        v, t = self.value, type(self.value)
        if (t is str or (t is int and _INT_MIN <= v <= _INT_MAX) or t is bool or v is None) \
                and type(self.salt) is bytes:
            # A scalar and bytes: their canonical encoding is msgpack's own (no map to sort).
            try:
                return hashlib.sha256(packb([v, self.salt])).digest()
            except UnicodeEncodeError:
                pass  # a lone surrogate: codec.encode below says so
        return hashlib.sha256(codec.encode([self.value, self.salt])).digest()

    @property
    def leaf_data(self) -> bytes:
        return _leaf_data(self.key, self.digest)

    def hidden(self) -> HiddenClaim:
        return HiddenClaim(self.key, self.digest)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "salt": self.salt.hex()}

    @classmethod
    def from_json(cls, obj: Any) -> Claim:
        if not isinstance(obj, dict) or set(obj) != {"key", "value", "salt"}:
            raise DecodeError("a claim is an object with exactly key, value and salt")
        return cls(obj["key"], obj["value"], hex_bytes(obj["salt"], SALT_BYTES, "claim salt"))


def _leaf_data(key: str, digest: bytes) -> bytes:
    """enc([key, digest]): a string and bytes, whose canonical encoding is msgpack's own."""
    if type(key) is str and type(digest) is bytes:
        try:
            return packb([key, digest])
        except UnicodeEncodeError:
            pass  # a lone surrogate: codec.encode below says so
    return codec.encode([key, digest])


def _sort_key(c: Claim) -> bytes:
    return c.key.encode("utf-8")


def commitment(claims: list[Claim] | tuple[Claim, ...]) -> bytes:
    """RFC 6962 root over the claims' leaf data, sorted by key. Keys must be distinct."""
    ordered = sorted(claims, key=_sort_key)
    for a, b in itertools.pairwise(ordered):
        if a.key == b.key:
            raise DecodeError(f"claim {a.key!r} appears twice")
    return merkle.root([c.leaf_data for c in ordered])


def make_claims(values: dict[str, Any]) -> tuple[Claim, ...]:
    """Salt a plain {key: value} mapping into claims (fresh random salts), sorted by key."""
    if not isinstance(values, dict) or not values:
        raise DecodeError("claims must be a non-empty JSON object of key: value")
    if len(values) > MAX_CLAIMS:
        raise DecodeError(f"at most {MAX_CLAIMS} claims per record")
    claims = [Claim(k, v, secrets.token_bytes(SALT_BYTES)) for k, v in values.items()]
    return tuple(sorted(claims, key=_sort_key))


def file_sha256(path: str | os.PathLike[str]) -> bytes:
    """A file's SHA-256, read in pieces (evidence can be large: a portfolio, a video)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def evidence_value(path: str | os.PathLike[str], media_type: str) -> dict[str, Any]:
    """The claim value that commits to a file: its SHA-256, media type and name."""
    return {"sha256": file_sha256(path).hex(), "media_type": media_type, "name": Path(path).name}


@dataclass(frozen=True, slots=True)
class RecordDocument:
    """What the holder keeps: every claim with its salt, and where the record is anchored."""

    chain_id: str
    record_id: bytes
    issuer: str
    holder: str
    rtype: str
    expires: int | None
    claims: tuple[Claim, ...]
    anchor_tx: bytes | None = None  # set once anchored

    def __post_init__(self) -> None:
        check_chain_id(self.chain_id)
        check_record_type(self.rtype)
        for what, did in (("issuer", self.issuer), ("holder", self.holder)):
            if not isinstance(did, str):
                raise DecodeError(f"{what}: expected a did:key")
            try:
                check_did_key(did)
            except DecodeError as exc:
                raise DecodeError(f"{what}: {exc}") from None
        if self.expires is not None and not 0 <= self.expires <= _INT_MAX:
            raise DecodeError("expires must be a time in ms since 1970")
        if len(self.record_id) != RECORD_ID_BYTES:
            raise DecodeError(f"record id must be {RECORD_ID_BYTES} bytes")
        if not self.claims or len(self.claims) > MAX_CLAIMS:
            raise DecodeError(f"a record has 1 to {MAX_CLAIMS} claims")
        if list(self.claims) != sorted(self.claims, key=_sort_key):
            raise DecodeError("claims must be sorted by key")

    @property
    def commitment(self) -> bytes:
        return commitment(self.claims)

    def claim(self, key: str) -> Claim:
        for c in self.claims:
            if c.key == key:
                return c
        raise DecodeError(f"the record has no claim {key!r} (it has: {', '.join(c.key for c in self.claims)})")

    def disclose(self, reveal: list[str] | tuple[str, ...]) -> Disclosure:
        """A disclosure showing the named claims; every other claim shows only its name."""
        names = set(reveal)
        for n in names:
            self.claim(n)
        return Disclosure(revealed=tuple(c for c in self.claims if c.key in names),
                          hidden=tuple(c.hidden() for c in self.claims if c.key not in names))

    def to_json(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "chain_id": self.chain_id, "record_id": self.record_id.hex(),
                "issuer": self.issuer, "holder": self.holder, "type": self.rtype, "expires": self.expires,
                "commitment": self.commitment.hex(),
                "anchor_tx": self.anchor_tx.hex() if self.anchor_tx else None,
                "claims": [c.to_json() for c in self.claims]}

    @classmethod
    def from_json(cls, obj: Any) -> RecordDocument:
        fields = {"format", "chain_id", "record_id", "issuer", "holder", "type", "expires", "commitment",
                  "anchor_tx", "claims"}
        if not isinstance(obj, dict) or obj.get("format") != RECORD_FORMAT:
            raise DecodeError(f"not a {RECORD_FORMAT} record file")
        if set(obj) != fields:
            odd = sorted(set(obj) ^ fields)
            raise DecodeError(f"record file: unexpected or missing field {odd[0]!r}")
        record_id = hex_bytes(obj["record_id"], RECORD_ID_BYTES, "record file: record_id")
        anchor = None if obj["anchor_tx"] is None else hex_bytes(obj["anchor_tx"], 32, "record file: anchor_tx")
        if not isinstance(obj["claims"], list):
            raise DecodeError("record file: claims must be a list")
        expires = obj["expires"]
        if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
            raise DecodeError("record file: expires must be an integer (ms) or null")
        doc = cls(chain_id=obj["chain_id"], record_id=record_id, issuer=obj["issuer"], holder=obj["holder"],
                  rtype=obj["type"], expires=expires,
                  claims=tuple(Claim.from_json(c) for c in obj["claims"]), anchor_tx=anchor)
        if doc.commitment.hex() != obj["commitment"]:
            raise DecodeError("record file: the claims do not match its commitment (altered?)")
        return doc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the record file with mode 0600 (it holds every claim and salt, personal data), whole and
        synced before this returns: its salts exist nowhere else, and `ler issue` sends the anchor only
        once the file is safe. OSError on failure, with nothing left at `path`."""
        data = (json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        write_durably(path, data, 0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RecordDocument:
        try:
            raw = read_capped(path, 4 * 1024 * 1024)
        except OSError as exc:
            raise DecodeError(f"cannot read record file {path}: {exc.strerror}") from None
        if len(raw) > 4 * 1024 * 1024:
            raise DecodeError(f"{path} is too large for a record file")
        try:
            obj = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number too long
            raise DecodeError(f"{path} is not valid JSON: {exc}") from None
        except RecursionError:
            raise DecodeError(f"{path} is not valid JSON: nested too deeply") from None
        return cls.from_json(obj)


@dataclass(frozen=True, slots=True)
class HiddenClaim:
    key: str
    digest: bytes

    @property
    def leaf_data(self) -> bytes:
        return _leaf_data(self.key, self.digest)


@dataclass(frozen=True, slots=True)
class Disclosure:
    """Every claim of a record: the revealed ones in full, the hidden ones as name and digest."""

    revealed: tuple[Claim, ...]
    hidden: tuple[HiddenClaim, ...]

    def verify(self, commitment_root: bytes) -> list[str]:
        """Problems found (empty when the claims rebuild exactly the record's commitment)."""
        leaves = sorted([(c.key.encode("utf-8"), c.leaf_data) for c in self.revealed]
                        + [(h.key.encode("utf-8"), h.leaf_data) for h in self.hidden])
        if not leaves:
            return ["the disclosure lists no claims"]
        for (a, _), (b, _) in itertools.pairwise(leaves):
            if a == b:
                return [f"claim {a.decode('utf-8', 'replace')!r} appears twice"]
        if merkle.root([leaf for _, leaf in leaves]) != commitment_root:
            return ["the claims do not rebuild the record's commitment (altered, added or left out)"]
        return []

    def hidden_count(self) -> int:
        return len(self.hidden)

    def hidden_names(self) -> list[str]:
        return [h.key for h in self.hidden]

    def values(self) -> dict[str, Any]:
        return {c.key: c.value for c in self.revealed}

    def to_json(self, b64: bool = False) -> dict[str, Any]:
        enc = b64url if b64 else bytes.hex
        return {"revealed": [{"key": c.key, "value": c.value, "salt": enc(c.salt)} for c in self.revealed],
                "hidden": [{"key": h.key, "digest": enc(h.digest)} for h in self.hidden]}

    @classmethod
    def from_json(cls, obj: Any, b64: bool = False) -> Disclosure:
        """Parse the JSON form (bytes hex, or base64url inside bundles); claims must be sorted by key."""
        parse = b64url_bytes if b64 else hex_bytes
        if not isinstance(obj, dict) or set(obj) != {"revealed", "hidden"}:
            raise DecodeError("disclosure: expected an object with exactly revealed and hidden")
        rev, hid = obj["revealed"], obj["hidden"]
        if not isinstance(rev, list) or not isinstance(hid, list) or not 1 <= len(rev) + len(hid) <= MAX_CLAIMS:
            raise DecodeError(f"disclosure: revealed and hidden are lists of 1 to {MAX_CLAIMS} claims in all")
        revealed = []
        for i, c in enumerate(rev):
            where = f"disclosure.revealed[{i}]"
            if not isinstance(c, dict) or set(c) != {"key", "value", "salt"}:
                raise DecodeError(f"{where}: expected exactly key, value and salt")
            try:
                revealed.append(Claim(c["key"], c["value"], parse(c["salt"], SALT_BYTES, "salt")))
            except DecodeError as exc:
                raise DecodeError(f"{where}: {exc}") from None
        hidden = []
        for i, h in enumerate(hid):
            where = f"disclosure.hidden[{i}]"
            if not isinstance(h, dict) or set(h) != {"key", "digest"}:
                raise DecodeError(f"{where}: expected exactly key and digest")
            key = h["key"]
            if not isinstance(key, str) or not key or len(key) > MAX_CLAIM_KEY:
                raise DecodeError(f"{where}.key: expected a string of 1-{MAX_CLAIM_KEY} characters")
            hidden.append(HiddenClaim(key, parse(h["digest"], 32, f"{where}.digest")))
        for seq in (revealed, hidden):
            names = [x.key.encode("utf-8") for x in seq]
            if names != sorted(names):
                raise DecodeError("disclosure: claims must be listed in ascending key order")
        return cls(revealed=tuple(revealed), hidden=tuple(hidden))
