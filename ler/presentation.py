"""Holder-bound presentations: a proof bundle (or an exported credential) signed by the holder's key over the
verifier's challenge, so that a copied bundle cannot be replayed as someone else's (docs/VC.md).

A presentation file is RFC 8785 canonical JSON:

    {"format": "ler-presentation/1", "chain_id", "holder": did:key, "challenge": str,
     "bundle": <proof bundle JSON> | "credential": <credential JSON>, "signature": base64url}

The signature is the holder key's Ed25519 signature over
    signing_bytes("presentation", chain_id, {"challenge", "holder", "kind": "bundle" | "credential",
                                             "digest": SHA-256(RFC 8785 bytes of the bundle or credential)})
A verifier checks that signature with the key inside the holder's did, that the challenge is the one it
issued, that what is presented verifies (bundle against the genesis, or credential), and that every record
presented is held by that same did.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ler import keys
from ler.block import Genesis
from ler.bundle import TAMPERED, Check, ProofBundle, VerificationResult, verify_bundle
from ler.errors import DecodeError, LerError
from ler.keys import KeyPair
from ler.tx import RecordAnchor, Tx, check_chain_id
from ler.vc import BUNDLE_PROPERTY, CredentialError, CredentialReport, canonical, verify_ler_credential
from ler.wire import b64url, b64url_bytes

PRESENTATION_FORMAT = "ler-presentation/1"
PRESENTATION_DOMAIN = "presentation"
KINDS = ("bundle", "credential")
MAX_CHALLENGE = 1024
MAX_PRESENTATION_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Presentation:
    chain_id: str
    holder: str
    challenge: str
    kind: str                    # "bundle" | "credential"
    content: dict[str, Any]      # the bundle or credential JSON, exactly as presented
    signature: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(canonical(self.content)).digest()

    def payload(self) -> dict[str, Any]:
        return presentation_payload(self.challenge, self.holder, self.kind, self.digest)

    def signature_valid(self) -> bool:
        try:
            public_key = keys.public_key_from_did(self.holder)
        except DecodeError:
            return False
        return keys.verify_signed(public_key, PRESENTATION_DOMAIN, self.chain_id, self.payload(), self.signature)

    def to_json(self) -> dict[str, Any]:
        return {"format": PRESENTATION_FORMAT, "chain_id": self.chain_id, "holder": self.holder,
                "challenge": self.challenge, self.kind: self.content, "signature": b64url(self.signature)}

    def dumps(self) -> bytes:
        return canonical(self.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> Presentation:
        if not isinstance(obj, dict) or obj.get("format") != PRESENTATION_FORMAT:
            raise DecodeError(f"not a {PRESENTATION_FORMAT} presentation")
        kinds = [k for k in KINDS if k in obj]
        if len(kinds) != 1:
            raise DecodeError("a presentation holds exactly one of bundle or credential")
        kind = kinds[0]
        fields = {"format", "chain_id", "holder", "challenge", kind, "signature"}
        if set(obj) != fields:
            raise DecodeError(f"presentation: unexpected or missing field {sorted(set(obj) ^ fields)[0]!r}")
        chain_id, holder, challenge, content = obj["chain_id"], obj["holder"], obj["challenge"], obj[kind]
        check_chain_id(chain_id)
        keys.public_key_from_did(holder)
        check_challenge(challenge)
        if not isinstance(content, dict):
            raise DecodeError(f"presentation.{kind}: expected an object")
        return cls(chain_id=chain_id, holder=holder, challenge=challenge, kind=kind, content=content,
                   signature=b64url_bytes(obj["signature"], 64, "presentation.signature"))

    @classmethod
    def loads(cls, data: bytes) -> Presentation:
        if len(data) > MAX_PRESENTATION_BYTES:
            raise DecodeError(f"presentation larger than {MAX_PRESENTATION_BYTES} bytes")
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise DecodeError(f"presentation is not valid JSON: {exc}") from None
        except RecursionError:
            raise DecodeError("presentation is not valid JSON: nested too deeply") from None
        return cls.from_json(obj)


def presentation_payload(challenge: str, holder: str, kind: str, digest: bytes) -> dict[str, Any]:
    return {"challenge": challenge, "holder": holder, "kind": kind, "digest": digest}


def check_challenge(challenge: Any) -> str:
    if not isinstance(challenge, str) or not 1 <= len(challenge) <= MAX_CHALLENGE:
        raise DecodeError(f"the challenge must be a string of 1 to {MAX_CHALLENGE} characters")
    return challenge


def holders_of(kind: str, content: dict[str, Any]) -> tuple[str, list[str]]:
    """(chain id, holder dids) that a bundle or a ledger-anchored credential names, read without verifying."""
    try:
        if kind == "bundle":
            bundle = ProofBundle.from_json(content)
        else:
            subject = content.get("credentialSubject")
            if not isinstance(subject, dict) or not isinstance(subject.get("id"), str):
                raise DecodeError("the credential names no subject id")
            if BUNDLE_PROPERTY not in content:
                raise DecodeError("the credential carries no ledger anchor (ler:proofBundle)")
            bundle = ProofBundle.from_json(content[BUNDLE_PROPERTY])
        holders = []
        for r in bundle.records:
            body = Tx.decode(r.anchor.tx).body
            if not isinstance(body, RecordAnchor):
                raise DecodeError("a record's anchoring transaction is not a record.anchor")
            holders.append(body.holder)
        if kind == "credential":
            holders.append(content["credentialSubject"]["id"])
        return bundle.chain_id, holders
    except LerError as exc:
        raise DecodeError(f"cannot read the {kind}: {exc}") from None


def make_presentation(kind: str, content: dict[str, Any], key: KeyPair, challenge: str) -> Presentation:
    """Sign `content` (a bundle or credential JSON object) for the verifier's `challenge` with the holder key.

    DecodeError if the content does not read, or if `key` is not the holder of every record in it.
    """
    if kind not in KINDS:
        raise DecodeError(f"kind must be one of {', '.join(KINDS)}")
    check_challenge(challenge)
    chain_id, holders = holders_of(kind, content)
    others = sorted({h for h in holders if h != key.did})
    if others:
        raise DecodeError(f"the key {key.did} is not the holder: the {kind} names {', '.join(others)}")
    try:
        digest = hashlib.sha256(canonical(content)).digest()
    except CredentialError as exc:
        raise DecodeError(str(exc)) from None
    signature = key.sign_payload(PRESENTATION_DOMAIN, chain_id, presentation_payload(challenge, key.did, kind,
                                                                                      digest))
    return Presentation(chain_id=chain_id, holder=key.did, challenge=challenge, kind=kind, content=content,
                        signature=signature)


@dataclass(slots=True)
class PresentationReport:
    """The holder binding checks, and the verification of what was presented."""

    binding: list[Check]
    holder: str | None = None
    challenge: str | None = None
    kind: str | None = None
    bundle: VerificationResult | None = None
    credential: CredentialReport | None = None
    extra: list[Check] = field(default_factory=list)

    @property
    def inner_ok(self) -> bool:
        if self.bundle is not None:
            return self.bundle.ok
        if self.credential is not None:
            return self.credential.ok
        return False

    @property
    def ok(self) -> bool:
        return bool(self.binding) and all(c.ok for c in self.binding) and self.inner_ok

    def to_json(self) -> dict[str, Any]:
        return {"kind": "presentation", "valid": self.ok, "holder": self.holder, "challenge": self.challenge,
                "presents": self.kind, "binding": [c.to_json() for c in self.binding],
                "bundle": self.bundle.to_json() if self.bundle is not None else None,
                "credential": self.credential.to_json() if self.credential is not None else None}


def verify_presentation(data: bytes | dict[str, Any], genesis: Genesis | None, challenge: str,
                        now_ms: int | None = None) -> PresentationReport:
    """Check a presentation for the verifier's `challenge`. A bundle needs the genesis; a credential is checked
    as `verify_ler_credential` does (its ledger anchor only with a genesis). Never raises for bad input."""
    report = PresentationReport(binding=[])
    try:
        pres = Presentation.from_json(data) if isinstance(data, dict) else Presentation.loads(data)
    except (LerError, CredentialError) as exc:
        report.binding.append(Check("presentation", False, f"not a readable presentation: {exc}"))
        return report
    report.holder, report.challenge, report.kind = pres.holder, pres.challenge, pres.kind
    try:
        signed = pres.signature_valid()
    except CredentialError as exc:
        signed = False
        report.binding.append(Check("holder signature", False, f"the presented {pres.kind} cannot be "
                                                               f"canonicalised: {exc}"))
    if signed:
        report.binding.append(Check("holder signature", True, f"signed by the holder key {pres.holder}"))
    elif not report.binding:
        report.binding.append(Check("holder signature", False, f"the signature is not {pres.holder}'s over this "
                                                               f"{pres.kind} and challenge"))
    if pres.challenge == challenge:
        report.binding.append(Check("challenge", True, "made for your challenge"))
    else:
        report.binding.append(Check("challenge", False, f"made for another challenge ({pres.challenge[:80]!r}): "
                                                        "a copy of someone's earlier presentation?"))

    holders: list[str] = []
    if pres.kind == "bundle":
        if genesis is None:
            report.binding.append(Check("bundle", False, "a presented bundle needs the network's genesis file"))
            return report
        try:
            raw = canonical(pres.content)
        except CredentialError as exc:
            report.bundle = VerificationResult(TAMPERED, [Check("format", False, f"{exc}")], [])
            return report
        report.bundle = verify_bundle(raw, genesis, now_ms)
        if pres.chain_id != report.bundle.chain_id:
            report.binding.append(Check("network", False, "the presentation was signed for another chain"))
        holders = [r.holder or "" for r in report.bundle.records]
    else:
        report.credential = verify_ler_credential(pres.content, genesis, now_ms)
        holders = [report.credential.subject or ""]
        if report.credential.ledger is not None:
            holders += [r.holder or "" for r in report.credential.ledger.records]
            if pres.chain_id != report.credential.ledger.chain_id:
                report.binding.append(Check("network", False, "the presentation was signed for another chain"))
    strangers = sorted({h or "unknown" for h in holders if h != pres.holder})
    if not holders or strangers:
        report.binding.append(Check("holder", False, f"presented by {pres.holder}, but the {pres.kind} belongs to "
                                                     f"{', '.join(strangers) or 'nobody'}"))
    else:
        report.binding.append(Check("holder", True, f"every record presented is held by {pres.holder}"))
    return report
