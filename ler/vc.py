"""W3C Verifiable Credentials with eddsa-jcs-2022 Data Integrity proofs, and the Open Badges 3.0 view of a
ledger record (docs/VC.md).

Three parts, all pure (no network, no files):

1. The cryptosuite, exactly as W3C "Data Integrity EdDSA Cryptosuites v1.0" section 3.3 (eddsa-jcs-2022)
   states it. The proof configuration is the proof without `proofValue`, carrying the document's
   `@context`; hashData = SHA-256(JCS(proofConfig)) || SHA-256(JCS(document without proof)); the proof value
   is the Ed25519 signature of hashData as multibase base58btc ("z..."). A verification method is a
   did:key URL "did:key:z6Mk...#z6Mk..." resolved locally: the key is inside the did. `sign_credential`,
   `verify_credential`.
2. The export mapping: `credential_from_bundle` turns a one-record proof bundle into the unsigned Open
   Badges 3.0 AchievementCredential it determines. Everything in it except `id` comes from the bundle, so a
   verifier holding the genesis file can rebuild it and compare (`verify_ler_credential`).
3. The import mapping: `badge_claims` reads an Open Badges 3.0 credential into record claims.

JSON numbers: the cryptosuite canonicalises whatever JSON it is given (RFC 8785 covers floats); the LER
parts never produce floats, as claim values cannot hold them.
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import base58
import rfc8785

from ler import dates, keys
from ler.block import Genesis
from ler.bundle import (
    TAMPERED,
    WRONG_CHAIN,
    Check,
    ProofBundle,
    VerificationResult,
    verify_bundle,
)
from ler.dates import xsd_ms
from ler.errors import DecodeError, LerError
from ler.keys import KeyPair
from ler.state import IssuerEntry
from ler.tx import RecordAnchor, Tx
from ler.wire import b64url

PROOF_TYPE = "DataIntegrityProof"
CRYPTOSUITE = "eddsa-jcs-2022"
ASSERTION = "assertionMethod"

VC_CONTEXT = "https://www.w3.org/ns/credentials/v2"
VC1_CONTEXT = "https://www.w3.org/2018/credentials/v1"
OB3_CONTEXT = "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"
OB3_CONTEXT_PREFIX = "https://purl.imsglobal.org/spec/ob/v3p0/context"
# Our extension terms. "@json" keeps a JSON-LD processor from reading the bundle or the claims as graph
# data; eddsa-jcs-2022 itself never expands contexts, so this is for other processors only.
LER_CONTEXT: dict[str, Any] = {
    "ler": "urn:ler:",
    "ler:anchor": {"@id": "urn:ler:anchor", "@type": "@json"},
    "ler:claims": {"@id": "urn:ler:claims", "@type": "@json"},
    "ler:hiddenClaims": {"@id": "urn:ler:hiddenClaims", "@type": "@json"},
    "ler:proofBundle": {"@id": "urn:ler:proofBundle", "@type": "@json"},
}
CREDENTIAL_TYPES = ["VerifiableCredential", "OpenBadgeCredential"]
OB3_CREDENTIAL_TYPES = ("OpenBadgeCredential", "AchievementCredential")
BUNDLE_PROPERTY = "ler:proofBundle"
CLAIMS_PROPERTY = "ler:claims"
HIDDEN_PROPERTY = "ler:hiddenClaims"
ANCHOR_PROPERTY = "ler:anchor"

# Open Badges 3.0 AchievementType values, and the record types that map onto them (longest prefix wins).
ACHIEVEMENT_TYPES = frozenset({
    "Achievement", "ApprenticeshipCertificate", "Assessment", "Assignment", "AssociateDegree", "Award",
    "Badge", "BachelorDegree", "Certificate", "CertificateOfCompletion", "Certification", "CommunityService",
    "Competency", "Course", "CoCurricular", "Degree", "Diploma", "DoctoralDegree", "Fieldwork",
    "GeneralEducationDevelopment", "JourneymanCertificate", "LearningProgram", "License", "Membership",
    "ProfessionalDoctorate", "QualityAssuranceCredential", "MasterCertificate", "MasterDegree",
    "MicroCredential", "ResearchDoctorate", "SecondarySchoolDiploma"})
_EXT_ACHIEVEMENT_TYPE = re.compile(r"ext:[A-Za-z0-9._-]+")
RTYPE_ACHIEVEMENT_TYPES = {
    "degree": "Degree", "degree.associate": "AssociateDegree", "degree.bachelor": "BachelorDegree",
    "degree.master": "MasterDegree", "degree.doctorate": "DoctoralDegree", "degree.doctoral": "DoctoralDegree",
    "degree.phd": "DoctoralDegree", "diploma": "Diploma", "diploma.secondary": "SecondarySchoolDiploma",
    "certificate": "Certificate", "certification": "Certification", "course": "Course", "license": "License",
    "licence": "License", "badge": "Badge", "award": "Award", "assessment": "Assessment",
    "apprenticeship": "ApprenticeshipCertificate", "membership": "Membership",
    "micro-credential": "MicroCredential", "microcredential": "MicroCredential", "skill": "Competency",
    "competency": "Competency", "learning-program": "LearningProgram"}
# Disclosed claims that name the achievement, in order of preference.
NAME_CLAIMS = ("name", "title", "achievement", "degree", "course", "certificate", "qualification", "role")

_MAX_MULTIBASE_SIG = 100


class CredentialError(LerError):
    """A credential that cannot be signed, built or read as asked."""


# --- part 1: the eddsa-jcs-2022 cryptosuite -------------------------------------------------------------

def canonical(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value; CredentialError for what JSON cannot hold (NaN, bytes, ...)."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise CredentialError(f"not canonicalisable as JSON (RFC 8785): {exc}") from None


def verification_method(did: str) -> str:
    """The did:key URL of a key: "did:key:z6Mk...#z6Mk..." (the fragment is the did's multibase part)."""
    keys.public_key_from_did(did)
    return f"{did}#{did[len('did:key:'):]}"


def key_from_verification_method(vm: Any) -> tuple[str, bytes]:
    """(did, public key) of a did:key verification method; DecodeError for anything else."""
    if not isinstance(vm, str) or "#" not in vm:
        raise DecodeError("the verificationMethod must be a did:key URL with a fragment (did:key:z...#z...)")
    did, _, fragment = vm.partition("#")
    public_key = keys.public_key_from_did(did)
    if fragment != did[len("did:key:"):]:
        raise DecodeError("the verificationMethod's fragment is not the did:key's own key")
    return did, public_key


def is_datetime(value: Any) -> bool:
    """An XML Schema 1.1 dateTime (as Data Integrity and VC 2.0 use it), years beyond 9999 included."""
    return isinstance(value, str) and xsd_ms(value) is not None


def iso_ms(ms: int) -> str:
    """A block time (ms since the epoch) as an XML Schema dateTimeStamp in UTC; any time a ledger field holds
    (up to 2^64 - 1 ms, year 584556019) has one."""
    return dates.iso_ms(ms)


def now_iso() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hash_data(unsecured: dict[str, Any], proof_config: dict[str, Any]) -> bytes:
    """vc-di-eddsa 3.3.4: SHA-256(JCS(proofConfig)) || SHA-256(JCS(unsecuredDocument))."""
    return hashlib.sha256(canonical(proof_config)).digest() + hashlib.sha256(canonical(unsecured)).digest()


def sign_credential(doc: dict[str, Any], key: KeyPair, created: str,
                    proof_purpose: str = ASSERTION) -> dict[str, Any]:
    """`doc` with an eddsa-jcs-2022 DataIntegrityProof by `key` (vc-di-eddsa 3.3.1, Create Proof)."""
    if not isinstance(doc, dict):
        raise CredentialError("a credential is a JSON object")
    if "proof" in doc:
        raise CredentialError("the document already has a proof")
    if not is_datetime(created):
        raise CredentialError(f"created {created!r} is not an XML Schema dateTime")
    proof: dict[str, Any] = {"type": PROOF_TYPE, "cryptosuite": CRYPTOSUITE, "created": created,
                             "verificationMethod": verification_method(key.did), "proofPurpose": proof_purpose}
    if "@context" in doc:
        proof["@context"] = copy.deepcopy(doc["@context"])
    signature = key.sign(hash_data(doc, proof))
    proof["proofValue"] = "z" + base58.b58encode(signature).decode("ascii")
    return {**copy.deepcopy(doc), "proof": proof}


@dataclass(slots=True)
class VcResult:
    """The outcome of checking one eddsa-jcs-2022 proof: each step with a plain-language line."""

    checks: list[Check]
    signer: str | None = None          # the did:key whose key verified the proof
    created: str | None = None
    proof_purpose: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.ok, "cryptosuite": CRYPTOSUITE, "signer": self.signer, "created": self.created,
                "proofPurpose": self.proof_purpose, "checks": [c.to_json() for c in self.checks]}


def verify_credential(doc: Any, expected_purpose: str | None = ASSERTION) -> VcResult:
    """Check the eddsa-jcs-2022 proof of a secured document (vc-di-eddsa 3.3.2). Never raises for bad input."""
    res = VcResult(checks=[])

    def fail(name: str, detail: str) -> VcResult:
        res.checks.append(Check(name, False, detail))
        return res

    if not isinstance(doc, dict):
        return fail("proof", "the credential is not a JSON object")
    proof = doc.get("proof")
    if isinstance(proof, list) and len(proof) == 1:
        proof = proof[0]
    if isinstance(proof, list):
        return fail("proof", f"the credential carries {len(proof)} proofs; only a single proof is supported")
    if not isinstance(proof, dict):
        return fail("proof", "the credential carries no proof object")
    if proof.get("type") != PROOF_TYPE or proof.get("cryptosuite") != CRYPTOSUITE:
        return fail("proof", f"the proof is {_short(proof.get('type'))} / {_short(proof.get('cryptosuite'))}; "
                             f"only {PROOF_TYPE} with cryptosuite {CRYPTOSUITE} is supported")
    for unsupported in ("previousProof",):
        if unsupported in proof:
            return fail("proof", f"proof chains ({unsupported}) are not supported")
    value = proof.get("proofValue")
    if not isinstance(value, str) or not value.startswith("z") or len(value) > _MAX_MULTIBASE_SIG:
        return fail("proof", "the proofValue is not a multibase base58btc string (\"z...\")")
    try:
        signature = base58.b58decode(value[1:])
    except ValueError:
        return fail("proof", "the proofValue is not valid base58btc")
    if len(signature) != 64 or "z" + base58.b58encode(signature).decode("ascii") != value:
        return fail("proof", "the proofValue is not a canonical 64-byte Ed25519 signature")
    try:
        did, public_key = key_from_verification_method(proof.get("verificationMethod"))
    except DecodeError as exc:
        return fail("verification method", f"{exc}")
    purpose = proof.get("proofPurpose")
    if not isinstance(purpose, str):
        return fail("proof", "the proof has no proofPurpose")
    res.proof_purpose = purpose
    if expected_purpose is not None and purpose != expected_purpose:
        return fail("proof", f"the proof's purpose is {_short(purpose)}, expected {expected_purpose}")
    created = proof.get("created")
    if created is not None and not is_datetime(created):
        return fail("proof", "the proof's created time is not an XML Schema dateTime")
    res.created = created
    expires = proof.get("expires")
    if expires is not None:
        when = xsd_ms(expires) if isinstance(expires, str) else None
        if when is None:
            return fail("proof", "the proof's expires time is not an XML Schema dateTime")
        if when < time.time_ns() // 1_000_000:
            return fail("proof", f"the proof expired at {expires}")
    res.checks.append(Check("proof", True, f"{PROOF_TYPE} {CRYPTOSUITE} for {purpose}, key {did}"))

    unsecured = {k: v for k, v in doc.items() if k != "proof"}
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    if "@context" in options:
        want, have = _as_list(options["@context"]), _as_list(doc.get("@context"))
        if have[:len(want)] != want:
            return fail("context", "the proof's @context is not the start of the credential's @context")
        unsecured["@context"] = options["@context"]
    try:
        data = hash_data(unsecured, options)
    except CredentialError as exc:
        return fail("signature", f"the credential cannot be canonicalised: {exc}")
    if not keys.verify(public_key, data, signature):
        return fail("signature", f"the signature does not verify with {did}: the credential or its proof was "
                                 "changed after signing, or another key signed it")
    res.signer = did
    res.checks.append(Check("signature", True, f"signed by {did}"))
    return res


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --- part 2: a ledger record as an Open Badges 3.0 AchievementCredential ----------------------------------

@dataclass(frozen=True, slots=True)
class BundleRecord:
    """What a one-record bundle says about its record (read from the bundle, not yet verified)."""

    bundle: ProofBundle
    anchor: RecordAnchor
    issuer_entry: IssuerEntry | None     # the issuer's ledger entry at the head (or when anchored)
    anchored_height: int
    anchored_time: int
    revealed: dict[str, Any]
    hidden: list[str]

    @property
    def record_hex(self) -> str:
        return self.anchor.record.hex()

    @property
    def issuer_name(self) -> str:
        if self.issuer_entry is not None:
            return self.issuer_entry.name
        if self.anchor.issuer == self.anchor.holder:
            return "The holder (self-asserted)"
        return "Unregistered issuer"

    def signing_key(self) -> bytes:
        """The key that signs for the issuer as of the bundle's head: its current key after rotations. A
        rotation the head holds counts though it takes effect at the next block: whatever is signed after
        the head lands there or later, where only the new key signs (and the old one may be why it rotated)."""
        if self.issuer_entry is not None:
            return self.issuer_entry.key_at(self.bundle.head.header.height + 1)
        return keys.public_key_from_did(self.anchor.issuer)


def bundle_record(bundle: ProofBundle) -> BundleRecord:
    """Read the one record of a bundle; CredentialError if the bundle does not hold exactly one."""
    if len(bundle.records) != 1:
        raise CredentialError(f"a credential carries exactly one record; the bundle has {len(bundle.records)}")
    rp = bundle.records[0]
    try:
        tx = Tx.decode(rp.anchor.tx)
        if not isinstance(tx.body, RecordAnchor) or tx.body.record != rp.record_id:
            raise CredentialError("the bundle's anchoring transaction does not anchor its record")
        entry = None
        for proof in (rp.issuer_now, rp.issuer_then):
            if proof.value is not None:
                entry = IssuerEntry.decode(proof.value)
                break
    except DecodeError as exc:
        raise CredentialError(f"the bundle's record cannot be read: {exc}") from None
    return BundleRecord(bundle=bundle, anchor=tx.body, issuer_entry=entry,
                        anchored_height=rp.anchor.header.height, anchored_time=rp.anchor.header.time,
                        revealed=rp.disclosure.values(), hidden=rp.disclosure.hidden_names())


def achievement_type(rtype: str, revealed: dict[str, Any]) -> str | None:
    """An Open Badges achievementType: a disclosed valid one, else the record type's, else none."""
    given = revealed.get("achievementType")
    if isinstance(given, str) and (given in ACHIEVEMENT_TYPES or _EXT_ACHIEVEMENT_TYPE.fullmatch(given)):
        return given
    parts = rtype.split(".")
    for n in range(len(parts), 0, -1):
        mapped = RTYPE_ACHIEVEMENT_TYPES.get(".".join(parts[:n]))
        if mapped:
            return mapped
    return None


def rtype_title(rtype: str) -> str:
    """"degree.bachelor" -> "Degree (bachelor)"; "military-training" -> "Military training"."""
    words = [p.replace("-", " ").replace("_", " ") for p in rtype.split(".")]
    title = words[0].capitalize()
    return f"{title} ({', '.join(words[1:])})" if len(words) > 1 else title


def _text_claim(revealed: dict[str, Any], *names: str) -> str | None:
    for n in names:
        v = revealed.get(n)
        if isinstance(v, str) and v.strip():
            return v
    return None


def _evidence(revealed: dict[str, Any]) -> list[dict[str, Any]]:
    """OB3 Evidence for each disclosed evidence claim, identified by an RFC 6920 ni: URI of its SHA-256."""
    out = []
    for key, value in revealed.items():
        if not (isinstance(value, dict) and set(value) == {"sha256", "media_type", "name"}):
            continue
        digest, media, name = value["sha256"], value["media_type"], value["name"]
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) and isinstance(media, str)
                and isinstance(name, str)):
            continue
        out.append({"id": f"ni:///sha-256;{b64url(bytes.fromhex(digest))}?ct={media}", "type": ["Evidence"],
                    "name": name, "description": f"The file the claim '{key}' commits to by its SHA-256 "
                                                 f"({digest}); the holder hands it over with the credential."})
    return out


def credential_from_bundle(bundle: ProofBundle, credential_id: str) -> dict[str, Any]:
    """The unsigned AchievementCredential a one-record bundle determines (docs/VC.md, "Export").

    Only disclosed claims feed it: a hidden claim's value never reaches the credential, not even through
    the achievement's name.
    """
    rec = bundle_record(bundle)
    a = rec.anchor
    name = _text_claim(rec.revealed, *NAME_CLAIMS) or rtype_title(a.rtype)
    description = _text_claim(rec.revealed, "description") or (
        f"A '{a.rtype}' record of {rec.issuer_name}, anchored on the ledger '{bundle.chain_id}'.")
    narrative = _text_claim(rec.revealed, "criteria") or (
        f"Recorded by {rec.issuer_name} ({a.issuer}) as a '{a.rtype}' record and anchored in block "
        f"{rec.anchored_height} of the ledger '{bundle.chain_id}'; the proof bundle in this credential proves it.")
    achievement: dict[str, Any] = {"id": f"urn:ler:record:{rec.record_hex}#achievement", "type": ["Achievement"],
                                   "name": name, "description": description, "criteria": {"narrative": narrative}}
    kind = achievement_type(a.rtype, rec.revealed)
    if kind:
        achievement["achievementType"] = kind
    cred: dict[str, Any] = {
        "@context": [VC_CONTEXT, OB3_CONTEXT, copy.deepcopy(LER_CONTEXT)],
        "id": credential_id,
        "type": list(CREDENTIAL_TYPES),
        "name": name,
        "issuer": {"id": a.issuer, "type": ["Profile"], "name": rec.issuer_name},
        "validFrom": iso_ms(rec.anchored_time),
    }
    if a.expires is not None:
        cred["validUntil"] = iso_ms(a.expires)
    cred["credentialSubject"] = {"id": a.holder, "type": ["AchievementSubject"], "achievement": achievement,
                                 CLAIMS_PROPERTY: copy.deepcopy(rec.revealed), HIDDEN_PROPERTY: list(rec.hidden)}
    evidence = _evidence(rec.revealed)
    if evidence:
        cred["evidence"] = evidence
    cred[ANCHOR_PROPERTY] = {"chain": bundle.chain_id, "genesisHash": bundle.genesis_hash.hex(),
                             "record": rec.record_hex, "recordType": a.rtype, "height": rec.anchored_height}
    cred[BUNDLE_PROPERTY] = bundle.to_json()
    return cred


def issuer_id(doc: dict[str, Any]) -> str | None:
    issuer = doc.get("issuer")
    if isinstance(issuer, dict):
        issuer = issuer.get("id")
    return issuer if isinstance(issuer, str) else None


# --- verifying a credential: signature, issuer key, ledger anchor --------------------------------------

LEDGER_ABSENT, LEDGER_NOT_CHECKED, LEDGER_CHECKED = "absent", "not-checked", "checked"
# A genesis was given, so the verifier asked for the ledger's word, but no proof bundle travels with the
# credential: its signature alone cannot say the record is on that ledger, accredited or not revoked.
LEDGER_MISSING = "missing"
NOT_ANCHORED = "not anchored"      # the ledger_anchor part (and the headline) for LEDGER_MISSING


@dataclass(slots=True)
class CredentialReport:
    """Every part of a credential's verification, and which parts could be checked at all."""

    signature: VcResult
    issuer: str | None
    issuer_key: Check
    validity: Check
    ledger_state: str = LEDGER_ABSENT
    ledger: VerificationResult | None = None
    match: Check | None = None         # the credential says what its bundle proves
    claims: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None
    name: str | None = None
    issuer_name: str | None = None
    evidence: list[Check] = field(default_factory=list)  # files the holder handed over (`--evidence`)

    @property
    def ledger_ok(self) -> bool:
        if self.ledger_state == LEDGER_MISSING:
            return False
        if self.ledger_state != LEDGER_CHECKED:
            return True
        return self.ledger is not None and self.ledger.ok and self.match is not None and self.match.ok

    @property
    def evidence_ok(self) -> bool:
        return all(c.ok for c in self.evidence)

    @property
    def ok(self) -> bool:
        return (self.signature.ok and self.issuer_key.ok and self.validity.ok and self.ledger_ok
                and self.evidence_ok)

    @property
    def checks(self) -> list[Check]:
        out = [*self.signature.checks, self.issuer_key, self.validity]
        if self.ledger is not None:
            out.extend(self.ledger.checks)
        if self.match is not None:
            out.append(self.match)
        return out

    def to_json(self) -> dict[str, Any]:
        obj = {"kind": "credential", "valid": self.ok, "name": self.name, "issuer": self.issuer,
               "issuer_name": self.issuer_name, "subject": self.subject, "claims": self.claims,
               "parts": {"signature": "valid" if self.signature.ok else "invalid",
                         "issuer_key": "valid" if self.issuer_key.ok else "invalid",
                         "validity_period": "valid" if self.validity.ok else "invalid",
                         "ledger_anchor": self.ledger_part()},
               "signature": self.signature.to_json(),
               "ledger": self.ledger.to_json() if self.ledger is not None else None,
               "checks": [c.to_json() for c in self.checks]}
        if self.evidence:
            obj["evidence"] = [c.to_json() for c in self.evidence]
        return obj

    def ledger_part(self) -> str:
        if self.ledger_state == LEDGER_ABSENT:
            return "absent"
        if self.ledger_state == LEDGER_MISSING:
            return NOT_ANCHORED
        if self.ledger_state == LEDGER_NOT_CHECKED:
            return "not checked"
        return "valid" if self.ledger_ok else (self.ledger.verdict if self.ledger and not self.ledger.ok
                                               else "mismatch")


def verify_ler_credential(doc: Any, genesis: Genesis | None, now_ms: int | None = None) -> CredentialReport:
    """Check a credential: its eddsa-jcs-2022 proof, that the key is the issuer's, its validity period, and,
    when it carries a proof bundle and a genesis is given, the ledger anchor and that the credential says
    exactly what the bundle proves. Never raises for bad input."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    sig = verify_credential(doc)
    obj = doc if isinstance(doc, dict) else {}
    report = CredentialReport(signature=sig, issuer=issuer_id(obj),
                              issuer_key=Check("issuer key", False, "not checked: no valid signature"),
                              validity=_validity(obj, now_ms))
    subject = obj.get("credentialSubject")
    if isinstance(subject, dict):
        report.subject = subject.get("id") if isinstance(subject.get("id"), str) else None
        claims = subject.get(CLAIMS_PROPERTY)
        report.claims = claims if isinstance(claims, dict) else {}
    report.name = obj.get("name") if isinstance(obj.get("name"), str) else None
    issuer_obj = obj.get("issuer")
    if isinstance(issuer_obj, dict) and isinstance(issuer_obj.get("name"), str):
        report.issuer_name = issuer_obj["name"]

    rec: BundleRecord | None = None
    if BUNDLE_PROPERTY in obj:
        if genesis is None:
            report.ledger_state = LEDGER_NOT_CHECKED
        else:
            report.ledger_state = LEDGER_CHECKED
            report.ledger, rec, report.match = _check_ledger(obj, genesis, now_ms)
    elif genesis is not None:
        # The verifier gave the network's genesis to have the ledger's word; this credential has none to
        # give. Its signature may be perfect (anyone can sign a credential naming their own did:key as its
        # issuer, a retired key included), but nothing shows the record is on the ledger, that its issuer is
        # accredited or that it was not revoked: not the verdict an anchored, accredited credential gets.
        report.ledger_state = LEDGER_MISSING
        report.match = Check("matches ledger", False, "not anchored: no ledger proof (ler:proofBundle) travels "
                                                      f"with this credential, so nothing shows its record is on "
                                                      f"the ledger '{genesis.chain_id}', that its issuer is "
                                                      "accredited or that it was not revoked")

    if sig.signer is not None:
        report.issuer_key = _issuer_key_check(sig.signer, report.issuer, rec, report.ledger_state)
    return report


def _validity(doc: dict[str, Any], now_ms: int) -> Check:
    start, end = doc.get("validFrom"), doc.get("validUntil")
    for name, value in (("validFrom", start), ("validUntil", end)):
        if value is not None and not is_datetime(value):
            return Check("validity period", False, f"{name} is not an XML Schema dateTime")
    if isinstance(start, str) and (s := xsd_ms(start)) is not None and s > now_ms:
        return Check("validity period", False, f"not valid before {start}")
    if isinstance(end, str) and (e := xsd_ms(end)) is not None and e < now_ms:
        return Check("validity period", False, f"expired at {end}")
    span = f"valid from {start}" if start else "no start date"
    return Check("validity period", True, span + (f" until {end}" if end else ""))


def _issuer_key_check(signer: str, issuer: str | None, rec: BundleRecord | None, ledger_state: str) -> Check:
    name = "issuer key"
    if rec is not None:
        want = rec.signing_key()
        head = rec.bundle.head.header.height
        if keys.public_key_from_did(signer) == want:
            how = "its own did:key" if signer == issuer else "its key after a key rotation"
            return Check(name, True, f"signed with the issuer's key as of block {head} ({how}, proven by the "
                                     "ledger)")
        return Check(name, False, f"signed by {signer}, but the issuer's key as of block {head} is "
                                  f"{keys.did_from_public_key(want)}")
    if issuer is not None and signer == issuer:
        return Check(name, True, "signed by the issuer's own did:key")
    if ledger_state == LEDGER_NOT_CHECKED:
        return Check(name, False, f"signed by {signer}, not the issuer's did ({issuer}): only the ledger "
                                  "anchor can prove it is the issuer's key after a rotation (needs the genesis)")
    return Check(name, False, f"signed by {signer}, but the issuer is {issuer}: nothing proves that key speaks "
                              "for the issuer")


def _check_ledger(doc: dict[str, Any], genesis: Genesis,
                  now_ms: int) -> tuple[VerificationResult, BundleRecord | None, Check]:
    try:
        data = canonical(doc[BUNDLE_PROPERTY])
    except CredentialError as exc:
        res = VerificationResult(TAMPERED, [Check("format", False, f"the proof bundle in the credential is not "
                                                                   f"JSON: {exc}")], [])
        return res, None, Check("matches ledger", False, "not compared: the bundle is unreadable")
    res = verify_bundle(data, genesis, now_ms)
    if res.verdict in (TAMPERED, WRONG_CHAIN):
        return res, None, Check("matches ledger", False, "not compared: the bundle does not verify")
    try:
        bundle = ProofBundle.loads(data)
        rec = bundle_record(bundle)
        expected = credential_from_bundle(bundle, str(doc.get("id")))
    except (LerError, DecodeError) as exc:
        return res, None, Check("matches ledger", False, f"the bundle does not describe one record: {exc}")
    diffs = _differences(expected, doc)
    if diffs:
        return res, rec, Check("matches ledger", False, "the credential does not say what its ledger anchor "
                                                        "proves: " + "; ".join(diffs))
    extra = sorted(set(doc) - set(expected) - {"proof"})
    note = f"; it also carries {', '.join(extra)} (signed by the issuer, not on the ledger)" if extra else ""
    return res, rec, Check("matches ledger", True, "issuer, holder, record, dates and every disclosed claim "
                                                   "are the ones the ledger anchor proves" + note)


_NESTED = frozenset({"issuer", "credentialSubject", "achievement", "criteria"})


def _differences(expected: dict[str, Any], actual: dict[str, Any], top: bool = True) -> list[str]:
    """Where `actual` differs from `expected`, by JSON path; values compared as canonical JSON (so 1 != true).

    Objects of the OB3 structure (issuer, subject, achievement, criteria) are compared member by member,
    so an issuer may add members of its own there; every other value, the claims included, must be equal.
    """
    out: list[str] = []
    for key, want in expected.items():
        if top and key == "id":
            continue
        have = actual.get(key)
        if key not in actual:
            out.append(f"{key} is missing")
        elif key in _NESTED and isinstance(want, dict) and isinstance(have, dict):
            out.extend(f"{key}.{d}" for d in _differences(want, have, top=False))
        elif _canon_or_none(want) != _canon_or_none(have):
            out.append(f"{key} differs")
    if top and "validUntil" in actual and "validUntil" not in expected:
        out.append("validUntil is set but the record does not expire")
    return out


def _canon_or_none(value: Any) -> bytes | None:
    try:
        return canonical(value)
    except CredentialError:
        return None


# --- part 3: importing an Open Badges 3.0 credential ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class BadgeImport:
    """Record claims read from an Open Badges 3.0 credential, and what was found out about its proof."""

    claims: dict[str, Any]
    proof_note: str                 # a plain-language line, also kept as the claim "source_proof"
    proof_verified: bool
    valid_until_ms: int | None
    subject_id: str | None


def _dt_ms(value: str) -> int:
    ms = xsd_ms(value)
    assert ms is not None
    return ms


def badge_claims(obj: Any, file_sha256: str, file_name: str) -> BadgeImport:
    """Map an Open Badges 3.0 AchievementCredential to claims (docs/VC.md, "Import").

    CredentialError for a document that is not one, or whose eddsa-jcs-2022 proof fails.
    """
    if not isinstance(obj, dict):
        raise CredentialError("an Open Badges credential is a JSON object")
    contexts = obj.get("@context")
    if not isinstance(contexts, list) or not contexts or contexts[0] not in (VC_CONTEXT, VC1_CONTEXT):
        raise CredentialError(f"@context must be a list starting with {VC_CONTEXT!r}")
    if not any(isinstance(c, str) and c.startswith(OB3_CONTEXT_PREFIX) for c in contexts):
        raise CredentialError(f"@context does not name an Open Badges 3.0 context ({OB3_CONTEXT_PREFIX}...)")
    types = _as_list(obj.get("type"))
    if "VerifiableCredential" not in types or not any(t in types for t in OB3_CREDENTIAL_TYPES):
        raise CredentialError("type must hold VerifiableCredential and OpenBadgeCredential (or "
                              "AchievementCredential)")
    subject = obj.get("credentialSubject")
    if not isinstance(subject, dict):
        raise CredentialError("credentialSubject must be one AchievementSubject object")
    achievement = subject.get("achievement")
    if not isinstance(achievement, dict):
        raise CredentialError("credentialSubject.achievement is missing")
    name = achievement.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CredentialError("credentialSubject.achievement.name is missing")
    issuer = issuer_id(obj)
    if issuer is None:
        raise CredentialError("issuer (or issuer.id) is missing")
    valid_from = obj.get("validFrom", obj.get("issuanceDate"))
    valid_until = obj.get("validUntil", obj.get("expirationDate"))
    for label, value in (("validFrom", valid_from), ("validUntil", valid_until)):
        if value is not None and not is_datetime(value):
            raise CredentialError(f"{label} {_short(value)} is not a date-time")

    if "proof" not in obj:
        note, verified = "no proof: the credential was not signed", False
    else:
        proofs = _as_list(obj["proof"])
        first = proofs[0] if proofs and isinstance(proofs[0], dict) else {}
        if len(proofs) == 1 and first.get("cryptosuite") == CRYPTOSUITE:
            res = verify_credential(obj)
            if not res.ok:
                failed = next(c for c in res.checks if not c.ok)
                raise CredentialError(f"its {CRYPTOSUITE} proof does not verify: {failed.detail}")
            note, verified = f"{CRYPTOSUITE} proof verified, signed by {res.signer}", True
        else:
            suite = first.get("cryptosuite") or first.get("type") or "unknown"
            note, verified = f"proof not checked ({_short(suite)} is not supported here)", False

    claims: dict[str, Any] = {"name": name}
    if isinstance(achievement.get("description"), str):
        claims["description"] = achievement["description"]
    criteria = achievement.get("criteria")
    if isinstance(criteria, dict):
        text = criteria.get("narrative") if isinstance(criteria.get("narrative"), str) else criteria.get("id")
        if isinstance(text, str):
            claims["criteria"] = text
    if isinstance(achievement.get("achievementType"), str):
        claims["achievementType"] = achievement["achievementType"]
    if isinstance(achievement.get("id"), str):
        claims["achievement_id"] = achievement["id"]
    issuer_obj = obj.get("issuer")
    if isinstance(issuer_obj, dict) and isinstance(issuer_obj.get("name"), str):
        claims["issuer_name"] = issuer_obj["name"]
    claims["issuer_id"] = issuer
    if isinstance(obj.get("id"), str):
        claims["credential_id"] = obj["id"]
    if isinstance(valid_from, str):
        claims["valid_from"] = valid_from
    if isinstance(valid_until, str):
        claims["valid_until"] = valid_until
    subject_id = subject.get("id") if isinstance(subject.get("id"), str) else None
    claims["source_proof"] = note
    claims["credential_file"] = {"sha256": file_sha256, "media_type": "application/vc", "name": file_name}
    return BadgeImport(claims=claims, proof_note=note, proof_verified=verified,
                       valid_until_ms=_dt_ms(valid_until) if isinstance(valid_until, str) else None,
                       subject_id=subject_id)


__all__ = ["ASSERTION", "CRYPTOSUITE", "PROOF_TYPE", "BadgeImport", "BundleRecord", "CredentialError",
           "CredentialReport", "VcResult", "badge_claims", "bundle_record", "canonical", "credential_from_bundle",
           "hash_data", "iso_ms", "key_from_verification_method", "now_iso", "sign_credential",
           "verification_method", "verify_credential", "verify_ler_credential"]
