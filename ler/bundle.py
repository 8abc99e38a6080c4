"""Proof bundles: one file that proves records to a verifier holding nothing but the genesis file.

A bundle speaks for a recent committed block, the head. It carries the head's header and commit
certificate, the validator-set transitions that lead from genesis to the head's validators, and for
each record: the disclosed claims, the anchoring transaction with its inclusion path in the anchoring
block's tx_root, the anchoring header with its history path into the head's history_root, and sparse
Merkle proofs of the record's entry (status, revocation) at the head and of the issuer's entry at the
anchoring block (accreditation, scope, key then) and at the head (standing now).

JSON, binary fields as unpadded base64url (docs/PROTOCOL.md, "Proof bundle"). `verify_bundle` runs every
check, names each with a plain-language line, and gives one verdict.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import rfc8785

from ler import keys, merkle, smt
from ler.block import CommitCertificate, Genesis, Header, validators_hash
from ler.dates import utc_text
from ler.errors import DecodeError, LerError, ProofError
from ler.record import Disclosure
from ler.smt import StateProof
from ler.state import (
    ACCREDITED,
    ACTIVE,
    SELF_ASSERTED,
    EndorsementEntry,
    IssuerEntry,
    RecordEntry,
    endorsement_key,
    issuer_key,
    record_key,
)
from ler.tx import RECORD_ID_BYTES, RecordAnchor, Tx
from ler.wire import Wire, b64url, b64url_bytes, limit

BUNDLE_FORMAT = "ler-bundle/1"
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
MAX_RECORDS = 64

# Verdicts, worst first: the bundle's verdict is the worst of its records'.
TAMPERED = "tampered"          # a cryptographic check failed: altered, forged or not from this chain
WRONG_CHAIN = "wrong-network"  # made for another chain (genesis does not match)
REFRESH_FAILED = "refresh-failed"  # a node's fresh status proof did not check out (the node is not trusted)
REVOKED = "revoked"
# A file the holder handed over (`ler verify --evidence KEY=FILE`) is not the one the record commits to, or
# the bundle discloses no evidence claim of that name. Never given by verify_bundle itself: see with_evidence.
EVIDENCE_MISMATCH = "evidence-mismatch"
STALE = "stale"                # the head is older than the verifier's --max-age: status not proven recent
EXPIRED = "expired"
UNACCREDITED = "unaccredited"  # signed by an issuer not accredited for this type
SELF_ASSERTED_V = "self-asserted"
VALID = "valid"
_RANK = [TAMPERED, WRONG_CHAIN, REFRESH_FAILED, REVOKED, EVIDENCE_MISMATCH, STALE, EXPIRED, UNACCREDITED,
         SELF_ASSERTED_V, VALID]


@dataclass(frozen=True, slots=True)
class ValidatorTransition(Wire):
    """A committed header announcing a new validator set (next_validators_hash) and that set's keys."""

    header: Header
    cert: CommitCertificate
    validators: tuple[bytes, ...] = limit(max=128)
    history_path: tuple[bytes, ...] = limit(max=64)  # header.hash in the head's history_root


@dataclass(frozen=True, slots=True)
class HeadProof(Wire):
    header: Header
    cert: CommitCertificate
    genesis_path: tuple[bytes, ...] = limit(max=64)  # the genesis hash as leaf 0 of header.history_root


@dataclass(frozen=True, slots=True)
class AnchorProof(Wire):
    tx: bytes = limit(max=4096)           # the anchoring transaction's canonical bytes
    index: int = limit()                  # its position in the block
    path: tuple[bytes, ...] = limit(max=32)   # inclusion path in header.tx_root
    header: Header = limit()  # the anchoring block's header
    history_path: tuple[bytes, ...] = limit(max=64)  # header.hash in the head's history_root


@dataclass(frozen=True, slots=True)
class RecordProof:
    record_id: bytes
    disclosure: Disclosure
    anchor: AnchorProof
    record_state: StateProof            # record entry at the head
    issuer_then: StateProof             # issuer entry (or its absence) at the anchoring header
    issuer_now: StateProof              # issuer entry (or its absence) at the head
    endorsements: tuple[StateProof, ...] = ()  # endorsement entries at the head

    def to_json(self) -> dict[str, Any]:
        return {"record_id": b64url(self.record_id), "disclosure": self.disclosure.to_json(b64=True),
                "anchor": self.anchor.to_json(True), "record_state": self.record_state.to_json(True),
                "issuer_then": self.issuer_then.to_json(True), "issuer_now": self.issuer_now.to_json(True),
                "endorsements": [e.to_json(True) for e in self.endorsements]}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> RecordProof:
        fields = {"record_id", "disclosure", "anchor", "record_state", "issuer_then", "issuer_now",
                  "endorsements"}
        _exact(obj, fields, where)
        ends = obj["endorsements"]
        if not isinstance(ends, list) or len(ends) > 64:
            raise DecodeError(f"{where}.endorsements: expected a list of at most 64 proofs")
        return cls(
            record_id=b64url_bytes(obj["record_id"], RECORD_ID_BYTES, f"{where}.record_id"),
            disclosure=_disclosure(obj["disclosure"], f"{where}.disclosure"),
            anchor=AnchorProof.from_json(obj["anchor"], f"{where}.anchor", b64=True),
            record_state=StateProof.from_json(obj["record_state"], f"{where}.record_state", b64=True),
            issuer_then=StateProof.from_json(obj["issuer_then"], f"{where}.issuer_then", b64=True),
            issuer_now=StateProof.from_json(obj["issuer_now"], f"{where}.issuer_now", b64=True),
            endorsements=tuple(StateProof.from_json(e, f"{where}.endorsements[{i}]", b64=True)
                               for i, e in enumerate(ends)))


@dataclass(frozen=True, slots=True)
class ProofBundle:
    chain_id: str
    genesis_hash: bytes
    head: HeadProof
    transitions: tuple[ValidatorTransition, ...]
    records: tuple[RecordProof, ...]

    def to_json(self) -> dict[str, Any]:
        return {"format": BUNDLE_FORMAT, "chain_id": self.chain_id, "genesis_hash": b64url(self.genesis_hash),
                "head": self.head.to_json(True), "transitions": [t.to_json(True) for t in self.transitions],
                "records": [r.to_json() for r in self.records]}

    def dumps(self) -> bytes:
        """The bundle file: RFC 8785 (JCS) canonical JSON, so every byte of it is significant."""
        return rfc8785.dumps(self.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> ProofBundle:
        if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
            raise DecodeError(f"not a {BUNDLE_FORMAT} proof bundle")
        _exact(obj, {"format", "chain_id", "genesis_hash", "head", "transitions", "records"}, "bundle")
        trans, recs = obj["transitions"], obj["records"]
        if not isinstance(trans, list) or len(trans) > 4096:
            raise DecodeError("bundle.transitions: expected a list")
        if not isinstance(recs, list) or not 1 <= len(recs) <= MAX_RECORDS:
            raise DecodeError(f"bundle.records: expected a list of 1 to {MAX_RECORDS} records")
        if not isinstance(obj["chain_id"], str):
            raise DecodeError("bundle.chain_id: expected a string")
        return cls(
            chain_id=obj["chain_id"],
            genesis_hash=b64url_bytes(obj["genesis_hash"], 32, "bundle.genesis_hash"),
            head=HeadProof.from_json(obj["head"], "bundle.head", b64=True),
            transitions=tuple(ValidatorTransition.from_json(t, f"bundle.transitions[{i}]", b64=True)
                              for i, t in enumerate(trans)),
            records=tuple(RecordProof.from_json(r, f"bundle.records[{i}]") for i, r in enumerate(recs)))

    @classmethod
    def loads(cls, data: bytes | str) -> ProofBundle:
        if len(data) > MAX_BUNDLE_BYTES:
            raise DecodeError(f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
        try:
            raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            obj = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeError, a number too long
            raise DecodeError(f"bundle is not valid JSON: {exc}") from None
        except RecursionError:
            raise DecodeError("bundle is not valid JSON: nested too deeply") from None
        bundle = cls.from_json(obj)
        # Only the canonical form is accepted (one trailing newline allowed): a bundle is a signed-off
        # artefact, and an edit that keeps the meaning (spacing, key order, escapes) is still an edit.
        body = raw[:-1] if raw.endswith(b"\n") else raw
        if not _is_canonical(obj, body):
            raise DecodeError("bundle is not in canonical JSON form (RFC 8785): it was edited after it was made")
        return bundle


def _is_canonical(obj: Any, body: bytes) -> bool:
    """Whether `body` is the RFC 8785 serialisation of `obj` (which passed the bundle's typed parsing).

    For ASCII text and the values a parsed bundle can hold (no floats: every number is a bounded
    integer), Python's sorted, compact json.dumps produces exactly the JCS bytes (same escapes, key
    order by code unit = code point for ASCII), and is several times faster than a JCS library; any
    other text takes the library's path.
    """
    if body.isascii():
        return _JSON_CANONICAL_ASCII.encode(obj).encode() == body
    try:
        return bool(rfc8785.dumps(obj) == body)
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        return False


# json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False), built once; no check for
# circular references, since the object comes from json.loads and cannot hold any.
_JSON_CANONICAL_ASCII = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                         check_circular=False)


def _disclosure(obj: Any, where: str) -> Disclosure:
    try:
        return Disclosure.from_json(obj, b64=True)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None


def _exact(obj: Any, fields: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise DecodeError(f"{where}: expected an object")
    if set(obj) != fields:
        odd = sorted(set(obj) ^ fields)
        raise DecodeError(f"{where}: unexpected or missing field {odd[0]!r}")


# --- verification ----------------------------------------------------------------------------------

@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    record: int | None = None  # which record of the bundle, or None for the bundle as a whole

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "pass": self.ok, "detail": self.detail, "record": self.record}


@dataclass(slots=True)
class RecordReport:
    record_id: str
    verdict: str = TAMPERED
    type: str | None = None
    issuer: str | None = None
    issuer_name: str | None = None
    issuer_scopes: list[str] = field(default_factory=list)
    issuer_status_now: str | None = None
    holder: str | None = None
    standing: str | None = None
    anchored_height: int | None = None
    anchored_time: int | None = None
    expires: int | None = None
    revoked: dict[str, Any] | None = None
    disclosed: dict[str, Any] = field(default_factory=dict)
    hidden: int = 0
    hidden_claims: list[str] = field(default_factory=list)
    endorsements: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class VerificationResult:
    verdict: str
    checks: list[Check]
    records: list[RecordReport]
    chain_id: str | None = None
    head_height: int | None = None
    head_time: int | None = None
    head_hash: str | None = None
    before_evidence: str | None = None  # the bundle's own verdict, when with_evidence changed it

    @property
    def ok(self) -> bool:
        return self.verdict == VALID

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "valid": self.ok, "chain_id": self.chain_id,
                "as_of": {"height": self.head_height, "time": self.head_time, "block": self.head_hash},
                "records": [r.to_json() for r in self.records],
                "checks": [c.to_json() for c in self.checks]}


class _Checker:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def ok(self, name: str, detail: str, record: int | None = None) -> None:
        self.checks.append(Check(name, True, detail, record))

    def fail(self, name: str, detail: str, record: int | None = None) -> None:
        self.checks.append(Check(name, False, detail, record))


def _worst(verdicts: list[str]) -> str:
    return min(verdicts, key=_RANK.index) if verdicts else TAMPERED


def with_evidence(res: VerificationResult, evidence: list[Check]) -> VerificationResult:
    """`res` with the verdict the evidence checks leave it: a file that does not match its claim (or a claim
    the bundle does not disclose) makes a bundle that is otherwise valid (or only stale, expired, unaccredited
    or self-asserted) "evidence-mismatch"; a worse verdict (tampered, wrong network, revoked) stands."""
    if any(not c.ok for c in evidence):
        worst = _worst([res.verdict, EVIDENCE_MISMATCH])
        if worst != res.verdict:
            res.before_evidence, res.verdict = res.verdict, worst
    return res


def _why_unaccredited(issuer: IssuerEntry | None, body: RecordAnchor, anchored: Header,
                      later: IssuerEntry | None) -> str:
    """Why the ledger counted a record as unaccredited when it was anchored, from the issuer's entry then
    (and, for an issuer registered only since, its entry now)."""
    if issuer is None:
        since = (f"; {later.name} was accredited later (block {later.accredited}), which does not change the "
                 "standing of a record anchored before" if later is not None else "")
        return (f"{body.issuer} was no registered issuer when the record was anchored (block {anchored.height})"
                + since)
    if not issuer.covers(body.rtype):
        return f"{issuer.name} is accredited for {', '.join(issuer.scopes) or 'no record type'}, not for " \
               f"'{body.rtype}'"
    if issuer.until is not None and anchored.time > issuer.until:
        return f"{issuer.name}'s accreditation ended on {utc_text(issuer.until)}, before the record was " \
               f"anchored ({utc_text(anchored.time)})"
    return f"{issuer.name} was not accredited for '{body.rtype}' when the record was anchored (block " \
           f"{anchored.height})"


def verify_bundle(bundle_data: bytes | str | ProofBundle, genesis: Genesis,
                  now_ms: int | None = None, max_age_ms: int | None = None,
                  refreshed_from: str | None = None) -> VerificationResult:
    """Check a bundle against the genesis file alone. Never raises for bad input: it reports it.

    With `max_age_ms`, a bundle whose head is older than now - max_age is "stale" (unless a worse verdict,
    such as revoked, already holds): what it proves may have changed since. `refreshed_from`: the node
    its status was just refreshed from (`verify_refreshed`), whose latest block the head then is.
    """
    c = _Checker()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        bundle = bundle_data if isinstance(bundle_data, ProofBundle) else ProofBundle.loads(bundle_data)
    except LerError as exc:
        c.fail("format", f"the file is not a readable proof bundle: {exc}")
        return VerificationResult(TAMPERED, c.checks, [])
    c.ok("format", f"readable {BUNDLE_FORMAT} bundle with {len(bundle.records)} record(s)")
    head = bundle.head.header
    head_hash = head.hash  # each header is hashed once per verification, and that hash used throughout
    res = VerificationResult(TAMPERED, c.checks, [], chain_id=bundle.chain_id,
                             head_height=head.height, head_time=head.time, head_hash=head_hash.hex())

    if bundle.chain_id != genesis.chain_id:
        c.fail("network", f"the bundle is for chain {bundle.chain_id!r}, the genesis file is for "
                          f"{genesis.chain_id!r}")
    elif bundle.genesis_hash != genesis.hash:
        c.fail("network", f"the bundle is for another network also named {bundle.chain_id!r}: its genesis hash is "
                          f"{bundle.genesis_hash.hex()}, the genesis file's is {genesis.hash.hex()}")
    if bundle.chain_id != genesis.chain_id or bundle.genesis_hash != genesis.hash:
        res.verdict = WRONG_CHAIN
        res.records = [RecordReport(record_id=r.record_id.hex(), verdict=WRONG_CHAIN) for r in bundle.records]
        return res
    c.ok("network", f"made for chain {genesis.chain_id!r}, the one the genesis file defines")

    try:
        vals = _walk_validators(bundle, genesis, c)
        if head.chain != genesis.chain_id:
            raise ProofError("the head header is for another chain")
        if head.validators_hash != validators_hash(vals):
            raise ProofError("the head's validator set does not follow from genesis and the transitions")
        cert = bundle.head.cert
        if cert.height != head.height or cert.block != head_hash:
            raise ProofError("the head certificate is for another block")
        cert.verify(genesis.chain_id, vals)
        if not merkle.verify_inclusion(merkle.leaf_hash(bundle.genesis_hash), 0, head.height,
                                       bundle.head.genesis_path, head.history_root):
            raise ProofError("the head's history does not start at this genesis")
        c.ok("head committed", f"block {head.height} is signed by {len(cert.sigs)} of {len(vals)} "
                               "authorities (more than 2/3 needed)")
    except (ProofError, DecodeError) as exc:
        c.fail("head committed", f"the block the bundle speaks for is not proven committed: {exc}")
        res.records = [RecordReport(record_id=r.record_id.hex()) for r in bundle.records]
        return res

    seen_ids: set[bytes] = set()
    for i, rp in enumerate(bundle.records):
        report = RecordReport(record_id=rp.record_id.hex())
        res.records.append(report)
        if rp.record_id in seen_ids:
            c.fail("record", "the same record appears twice in the bundle", i)
            continue
        seen_ids.add(rp.record_id)
        try:
            report.verdict = _verify_record(rp, head, head_hash, genesis, now_ms, c, i, report)
        except (ProofError, DecodeError) as exc:
            c.fail("record", str(exc), i)
            report.verdict = TAMPERED
    res.verdict = _worst([r.verdict for r in res.records])
    if max_age_ms is not None:
        age = now_ms - head.time
        if age > max_age_ms:
            # Refreshed, it is as of the node's latest block: refreshing again would not help.
            advice = ("refresh it from a node (--refresh URL)" if refreshed_from is None else
                      f"that is the latest block {refreshed_from} holds: the network made no block since (or "
                      "that node is behind), and no proof is fresher than the latest block (a network whose "
                      "verifiers ask for a maximum age sets [blocks] heartbeat_s below it)")
            c.fail("fresh", f"the status is {fmt_age(age)} old (block {head.height}, {_fmt_ms(head.time)}); "
                            f"at most {fmt_age(max_age_ms)} accepted: {advice}")
            res.verdict = _worst([res.verdict, STALE])
        else:
            c.ok("fresh", f"the status is {fmt_age(max(age, 0))} old (block {head.height}), within the "
                          f"{fmt_age(max_age_ms)} accepted")
    return res


def fmt_age(ms: int) -> str:
    """A duration for people: 3d 4h, 5h 12m, 7m 3s, 42s."""
    s = ms // 1000
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    if m:
        return f"{m}m {sec}s"
    return f"{sec}s"


def _walk_validators(bundle: ProofBundle, genesis: Genesis, c: _Checker) -> tuple[bytes, ...]:
    """Follow the validator-set transitions from genesis; return the set that signs the head."""
    vals = genesis.validators
    last_height = 0
    head = bundle.head.header
    for t in bundle.transitions:
        h = t.header
        if h.chain != genesis.chain_id or h.height <= last_height or h.height >= head.height:
            raise ProofError(f"validator transition at height {h.height} is out of order")
        if h.validators_hash != validators_hash(vals):
            raise ProofError(f"validator transition at height {h.height} is not signed by the set in force")
        h_hash = h.hash
        if t.cert.height != h.height or t.cert.block != h_hash:
            raise ProofError(f"the certificate of the transition at height {h.height} is for another block")
        if not merkle.verify_inclusion(merkle.leaf_hash(h_hash), h.height, head.height,
                                       t.history_path, head.history_root):
            raise ProofError(f"the transition at height {h.height} is not part of the head's history")
        t.cert.verify(genesis.chain_id, vals)
        new = tuple(sorted(set(t.validators)))
        if len(new) != len(t.validators) or not new or h.next_validators_hash != validators_hash(new):
            raise ProofError(f"the validator set announced at height {h.height} does not match its hash")
        vals, last_height = new, h.height
    if bundle.transitions:
        c.ok("validator set", f"followed {len(bundle.transitions)} authority-set change(s) from genesis")
    else:
        c.ok("validator set", "the genesis authorities are still the validators")
    return vals


def _verify_record(rp: RecordProof, head: Header, head_hash: bytes, genesis: Genesis, now_ms: int, c: _Checker,
                   i: int, report: RecordReport) -> str:
    anchor = rp.anchor
    ah = anchor.header
    # 1. the anchoring transaction
    tx = Tx.decode(anchor.tx)  # canonical bytes only; keeps the bytes its signature covers
    if not isinstance(tx.body, RecordAnchor) or tx.body.record != rp.record_id:
        raise ProofError("the anchoring transaction does not anchor this record")
    if tx.chain != genesis.chain_id or not tx.signature_valid():
        raise ProofError("the anchoring transaction's signature does not verify")
    body = tx.body
    report.type, report.issuer, report.holder, report.expires = body.rtype, body.issuer, body.holder, body.expires
    c.ok("issuer signature", f"the record was signed by {tx.signer_did}", i)

    # 2. the disclosed claims belong to the committed record
    problems = rp.disclosure.verify(body.commitment)
    if problems:
        raise ProofError("disclosed claims do not match the record: " + "; ".join(problems))
    report.disclosed = rp.disclosure.values()
    report.hidden = rp.disclosure.hidden_count()
    report.hidden_claims = rp.disclosure.hidden_names()
    shown = ", ".join(report.disclosed) or "none"
    hidden = f"hidden by the holder: {', '.join(report.hidden_claims)}" if report.hidden_claims else "none hidden"
    c.ok("disclosed claims", f"{len(report.disclosed)} claim(s) shown ({shown}) and proven part of the "
                             f"record; {hidden}", i)

    # 3. the transaction is in the anchoring block, and that block is in the head's history
    if ah.chain != genesis.chain_id or not merkle.verify_inclusion(
            merkle.leaf_hash(tx.tx_id), anchor.index, ah.tx_count, anchor.path, ah.tx_root):
        raise ProofError("the anchoring transaction is not proven to be in its block")
    if ah.height > head.height:
        raise ProofError("the anchoring block is newer than the head")
    ah_hash = ah.hash
    if ah.height == head.height:
        if ah_hash != head_hash or anchor.history_path:
            raise ProofError("the anchoring block differs from the head at the same height")
    elif not merkle.verify_inclusion(merkle.leaf_hash(ah_hash), ah.height, head.height,
                                     anchor.history_path, head.history_root):
        raise ProofError("the anchoring block is not proven part of the chain's history")
    report.anchored_height, report.anchored_time = ah.height, ah.time
    c.ok("anchored", f"anchored in block {ah.height}, part of the history certified at block {head.height}", i)

    # 4. the record's entry on the ledger now
    entry_raw = _member(rp.record_state, record_key(rp.record_id), head.state_root, "record status")
    entry = RecordEntry.decode(entry_raw)
    if (entry.issuer, entry.holder, entry.rtype, entry.commitment, entry.anchored, entry.tx, entry.signer) != (
            body.issuer, body.holder, body.rtype, body.commitment, ah.height, tx.tx_id, tx.signer):
        raise ProofError("the ledger's record entry does not match the anchoring transaction")
    report.standing = entry.standing

    # 5. the issuer, then and now
    ikey = issuer_key(body.issuer)
    then_raw = _state_value(rp.issuer_then, ikey, ah.state_root, "issuer at anchoring")
    now_raw = _state_value(rp.issuer_now, ikey, head.state_root, "issuer now")
    issuer_then = IssuerEntry.decode(then_raw) if then_raw is not None else None
    # The same bytes decode to the same entry: decoded once when the issuer's entry did not change.
    issuer_now = (issuer_then if now_raw == then_raw else IssuerEntry.decode(now_raw)) if now_raw is not None \
        else None
    if issuer_now is not None:
        report.issuer_name, report.issuer_status_now = issuer_now.name, issuer_now.status
        report.issuer_scopes = list(issuer_now.scopes)
    verdict = VALID
    if entry.standing == ACCREDITED:
        if issuer_then is None:
            raise ProofError("the ledger says accredited but the issuer is not proven registered then")
        if issuer_then.key_at(ah.height) != tx.signer:
            raise ProofError("the signing key was not the issuer's key at the anchoring height")
        if not issuer_then.covers(body.rtype) or issuer_then.accredited > ah.height or not (
                issuer_then.status == ACTIVE or issuer_then.changed == ah.height):
            raise ProofError("the issuer was not accredited for this record type when it was anchored")
        report.issuer_name = issuer_then.name if report.issuer_name is None else report.issuer_name
        scopes = ", ".join(issuer_then.scopes)
        c.ok("issuer accredited", f"{issuer_then.name} ({body.issuer}) was accredited for {scopes} when the "
                                  f"record was anchored (block {ah.height}) and signed with its key of that time", i)
        if issuer_now is not None and issuer_now.status != ACTIVE:
            c.ok("issuer now", f"note: the issuer's accreditation is {issuer_now.status} since block "
                               f"{issuer_now.changed}; records issued before stay valid", i)
    elif entry.standing == SELF_ASSERTED:
        verdict = SELF_ASSERTED_V
        c.fail("issuer accredited", "self-asserted: the holder recorded this about themselves; no "
                                    "accredited issuer vouches for it", i)
    else:
        verdict = UNACCREDITED
        c.fail("issuer accredited", f"unaccredited: {_why_unaccredited(issuer_then, body, ah, issuer_now)}", i)

    # 6. endorsements (shown with who vouches; never accreditation). The ledger holds one endorsement per
    # endorser and record, so one proof shown twice is an edit meant to make the record look more endorsed.
    endorsers: set[bytes] = set()
    for e_proof in rp.endorsements:
        if len(e_proof.key) != 32 or e_proof.value is None:
            raise ProofError("an endorsement proof does not prove an endorsement")
        if not smt.verify_state_proof(head.state_root, e_proof):
            raise ProofError("an endorsement proof does not verify at the head")
        e = EndorsementEntry.decode(e_proof.value)
        if e.record != rp.record_id or e_proof.key != endorsement_key(rp.record_id, e.endorser):
            raise ProofError("an endorsement proof is for another record")
        if e.endorser in endorsers:
            raise ProofError(f"the endorsement by {keys.did_from_public_key(e.endorser)} appears more than once: "
                             "the ledger holds one endorsement per endorser and record, so the bundle was edited")
        endorsers.add(e.endorser)
        report.endorsements.append({"endorser": keys.did_from_public_key(e.endorser), "height": e.height,
                                    "digest": e.digest.hex() if e.digest else None})
    if rp.endorsements:
        c.ok("endorsements", f"{len(rp.endorsements)} endorsement(s), each by the did shown", i)

    # 7. revocation and expiry
    if entry.revoked is not None:
        report.revoked = {"height": entry.revoked.height, "reason": entry.revoked.reason}
        c.fail("not revoked", f"REVOKED at block {entry.revoked.height}: {entry.revoked.reason}", i)
        return REVOKED
    c.ok("not revoked", f"not revoked as of block {head.height}", i)
    if entry.expires is not None and entry.expires < now_ms:
        c.fail("not expired", f"expired at {_fmt_ms(entry.expires)}", i)
        return EXPIRED
    if entry.expires is not None:
        c.ok("not expired", f"valid until {_fmt_ms(entry.expires)}", i)
    return verdict



def _member(proof: StateProof, key: bytes, root: bytes, what: str) -> bytes:
    value = _state_value(proof, key, root, what)
    if value is None:
        raise ProofError(f"{what}: the ledger has no such entry")
    return value


def _state_value(proof: StateProof, key: bytes, root: bytes, what: str) -> bytes | None:
    if proof.key != key:
        raise ProofError(f"{what}: the state proof is for another key")
    if not smt.verify_state_proof(root, proof):
        raise ProofError(f"{what}: the state proof does not verify against the block's state root")
    return proof.value


def _fmt_ms(ms: int) -> str:
    return utc_text(ms)  # any u64 time, years past 9999 included





# --- freshness: bringing a head forward, and refreshing the status part from any single node ------------

STATUS_FORMAT = "ler-status/1"
MAX_STATUS_BYTES = 4 * 1024 * 1024


def check_extends(old: Header, new: Header, consistency_proof: list[bytes] | tuple[bytes, ...],
                  old_path: list[bytes] | tuple[bytes, ...] | None = None) -> bool:
    """Whether `new` extends the history `old` speaks for: an RFC 6962 consistency proof between the two
    headers' history roots (sizes = their heights: header h commits to blocks 0..h-1).

    With `old_path` (the old header's own hash as leaf old.height of new.history_root), the old block itself
    is proven part of the new history too. A header at the same height extends only itself. Both headers
    must already be trusted as committed (or `new` be checked afterwards): this checks their link only.
    """
    if old.chain != new.chain or old.height > new.height:
        return False
    if old.height == new.height:
        return old.hash == new.hash and not consistency_proof and not old_path
    if not merkle.verify_consistency(old.height, new.height, list(consistency_proof), old.history_root,
                                     new.history_root):
        return False
    return old_path is None or merkle.verify_inclusion(merkle.leaf_hash(old.hash), old.height, new.height,
                                                       list(old_path), new.history_root)


@dataclass(frozen=True, slots=True)
class RecordStatus(Wire):
    """One record's part of a status proof: its entry, its issuer's entry and its endorsements at the head,
    and the anchoring block's history path into that head (the anchoring header comes from the bundle)."""

    record_id: bytes = limit(size=RECORD_ID_BYTES)
    anchor_history_path: tuple[bytes, ...] = limit(max=64)
    record_state: StateProof = limit()
    issuer_now: StateProof = limit()
    endorsements: tuple[StateProof, ...] = limit(max=64)


@dataclass(frozen=True, slots=True)
class StatusProof(Wire):
    """A node's fresh answer for records of a bundle: its latest committed head (with certificate, the
    validator transitions since genesis and the genesis path), the consistency proof from the head the
    bundle already speaks for (`since`), and each record's status at the new head. Nothing in it is
    trusted: `refresh_bundle` checks all of it as it would a bundle."""

    chain_id: str = limit(max=64)
    genesis_hash: bytes = limit(size=32)
    head: HeadProof = limit()
    transitions: tuple[ValidatorTransition, ...] = limit(max=4096)
    since: int = limit()
    consistency: tuple[bytes, ...] = limit(max=128)  # history_root(since) -> history_root(head.height)
    since_path: tuple[bytes, ...] = limit(max=64)    # block `since`'s hash in the head's history_root
    records: tuple[RecordStatus, ...] = limit(max=MAX_RECORDS)

    def document(self) -> dict[str, Any]:
        return {"format": STATUS_FORMAT, **self.to_json(True)}

    def dumps(self) -> bytes:
        return rfc8785.dumps(self.document())

    @classmethod
    def parse(cls, obj: Any) -> StatusProof:
        if not isinstance(obj, dict) or obj.get("format") != STATUS_FORMAT:
            raise DecodeError(f"not a {STATUS_FORMAT} status proof")
        return cls.from_json({k: v for k, v in obj.items() if k != "format"}, "status", b64=True)

    @classmethod
    def loads(cls, data: bytes | str) -> StatusProof:
        if len(data) > MAX_STATUS_BYTES:
            raise DecodeError(f"status proof larger than {MAX_STATUS_BYTES} bytes")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"status proof is not valid JSON: {exc}") from None
        return cls.parse(obj)


def refresh_bundle(bundle: ProofBundle, status: StatusProof) -> ProofBundle:
    """The bundle with its status part (head, transitions, record and issuer state now, endorsements)
    replaced by a node's fresh one; the holder's disclosure, the anchor and the issuer-then proof stay.

    Checks the link between the two heads here (same network, the new head is no older, the consistency
    proof and the old head's path into the new history); ProofError naming the problem if it fails. The
    result must then go through `verify_bundle`, which checks everything the node sent as it would a bundle.
    """
    old, new = bundle.head.header, status.head.header
    if status.chain_id != bundle.chain_id or status.genesis_hash != bundle.genesis_hash:
        raise ProofError("the node's status proof is for another network")
    if new.height < old.height:
        raise ProofError(f"the node's head (block {new.height}) is older than the bundle's (block {old.height})")
    if status.since != old.height:
        raise ProofError(f"the node's consistency proof starts at block {status.since}, not at the bundle's "
                         f"block {old.height}")
    if not check_extends(old, new, status.consistency, status.since_path):
        raise ProofError(f"the node's block {new.height} does not extend the history the bundle's block "
                         f"{old.height} speaks for (consistency proof fails)")
    fresh = {r.record_id: r for r in status.records}
    if len(fresh) != len(status.records) or set(fresh) != {r.record_id for r in bundle.records}:
        raise ProofError("the node's status proof does not cover exactly the bundle's records")
    records = []
    for rp in bundle.records:
        f = fresh[rp.record_id]
        anchor = AnchorProof(tx=rp.anchor.tx, index=rp.anchor.index, path=rp.anchor.path,
                             header=rp.anchor.header, history_path=f.anchor_history_path)
        records.append(RecordProof(record_id=rp.record_id, disclosure=rp.disclosure, anchor=anchor,
                                   record_state=f.record_state, issuer_then=rp.issuer_then,
                                   issuer_now=f.issuer_now, endorsements=f.endorsements))
    return ProofBundle(chain_id=bundle.chain_id, genesis_hash=bundle.genesis_hash, head=status.head,
                       transitions=status.transitions, records=tuple(records))


def verify_refreshed(bundle_data: bytes | str | ProofBundle, status: StatusProof | bytes | str | Any | Exception,
                     genesis: Genesis, now_ms: int | None = None, max_age_ms: int | None = None,
                     source: str = "the node") -> VerificationResult:
    """Verify a bundle with its status part refreshed from one (untrusted) node.

    The bundle is first checked as it is; a tampered or wrong-network bundle gets that verdict. Then the
    node's status proof (or the Exception met fetching it) is linked to the bundle's head and the combined
    bundle verified. If anything the node sent fails, the verdict is "refresh-failed" (a revoked record stays
    revoked: revocation is final), never valid.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    original = verify_bundle(bundle_data, genesis, now_ms)
    if original.verdict in (TAMPERED, WRONG_CHAIN):
        return original

    def failed(why: str) -> VerificationResult:
        original.checks.append(Check("refresh", False, f"could not refresh from {source}: {why}"))
        original.verdict = REVOKED if original.verdict == REVOKED else REFRESH_FAILED
        return original

    bundle = bundle_data if isinstance(bundle_data, ProofBundle) else ProofBundle.loads(bundle_data)
    try:
        if isinstance(status, Exception):
            raise status
        if isinstance(status, StatusProof):
            fresh_status = status
        elif isinstance(status, (bytes, str)):
            fresh_status = StatusProof.loads(status)
        else:
            fresh_status = StatusProof.parse(status)
        combined = refresh_bundle(bundle, fresh_status)
    except (LerError, ValueError) as exc:
        return failed(str(exc))
    res = verify_bundle(combined, genesis, now_ms, max_age_ms, refreshed_from=source)
    if res.verdict in (TAMPERED, WRONG_CHAIN):
        bad = [ch for ch in res.checks if not ch.ok]
        return failed("its status proof does not verify: " + (bad[0].detail if bad else "unknown reason"))
    new = combined.head.header
    old = bundle.head.header
    link = ("the same block the bundle speaks for" if new.height == old.height else
            f"consistency proof: block {new.height}'s history extends block {old.height}'s")
    res.checks.insert(1, Check("refresh", True, f"refreshed from {source}: as of block {new.height} "
                                                f"({_fmt_ms(new.time)}); {link}"))
    return res
