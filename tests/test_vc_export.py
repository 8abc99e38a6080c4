"""Records as Open Badges 3.0 credentials, and holder-bound presentations, against a real chain.

The chain is built in-process (storage.ChainStore through helpers_chain.ChainBuilder, blocks certified by the
validator's real precommits); bundles come from storage.bundles.build_bundle, exactly what a node serves. The
credentials are made by the same functions `ler export` uses (ler.vc), and the `ler verify` / `ler present`
commands run in-process on files. The commands that need a node are in tests/test_vc_node.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner, Result
from helpers_chain import CHAIN, T0, ChainBuilder, fixed_key, make_genesis, new_record
from test_vc import VECTORS, needs_vectors

from ler import vc
from ler.block import Genesis
from ler.bundle import ProofBundle, verify_bundle
from ler.keys import KeyPair
from ler.presentation import Presentation, make_presentation, presentation_payload, verify_presentation
from ler.record import RecordDocument
from ler.tx import RecordRevoke, rotation_body, sign_tx
from node.cli import cli
from storage.bundles import build_bundle

AUTH = fixed_key(1)
UNI = fixed_key(21)                 # accredited for degree and badge; never rotates
ROT, ROT2 = fixed_key(22), fixed_key(23)   # accredited for degree; rotates to ROT2 at block 2 (signs from 3)
HOLDER, STRANGER = fixed_key(24), fixed_key(25)
NOW = T0 + 100_000
U64 = 2**64 - 1                     # the latest expiry the ledger accepts: year 584556019
CREATED = "2024-05-01T12:00:00Z"
SCHEMA = json.loads((Path(__file__).parent / "data" / "ob3_required.schema.json").read_text())
THESIS = b"%PDF-1.7 a thesis on quantum gravity"
SECRET = "first-class-SECRET-GRADE"
CLAIMS = {"degree": "BSc Physics", "grade": SECRET, "institution": "Example University",
          "description": "Three years of physics, with a final thesis.",
          "thesis": {"sha256": hashlib.sha256(THESIS).hexdigest(), "media_type": "application/pdf",
                     "name": "thesis.pdf"}}


@dataclass
class World:
    genesis: Genesis
    chain: ChainBuilder
    docs: dict[str, RecordDocument] = field(default_factory=dict)

    def bundle(self, name: str, reveal: list[str] | None = None) -> ProofBundle:
        doc = self.docs[name]
        shown = [c.key for c in doc.claims] if reveal is None else reveal
        return build_bundle(self.chain.store, [(doc.record_id, doc.disclose(shown))])

    def credential(self, name: str, key: KeyPair, reveal: list[str] | None = None,
                   cred_id: str = "urn:uuid:00000000-0000-4000-8000-000000000001") -> dict[str, Any]:
        return vc.sign_credential(vc.credential_from_bundle(self.bundle(name, reveal), cred_id), key, CREATED)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    genesis = make_genesis([AUTH], [(UNI, ("badge", "degree")), (ROT, ("degree",))])
    chain = ChainBuilder(tmp_path_factory.mktemp("vc") / "db", genesis, [AUTH])
    w = World(genesis, chain)

    def rec(name: str, signer: KeyPair, **kw: Any) -> Any:
        doc, tx = new_record(signer, kw.pop("holder", HOLDER.did), **kw)
        w.docs[name] = doc
        return tx

    chain.commit([rec("valid", UNI, values=CLAIMS), rec("revoked", UNI), rec("other", UNI),
                  rec("expiring", UNI, expires=T0 + 5_000), rec("rot-old", ROT),
                  rec("self", HOLDER, rtype="skill.python", values={"name": "Python", "level": "expert"}),
                  rec("stranger's", UNI, holder=STRANGER.did), rec("far", UNI, expires=U64)])
    chain.commit([sign_tx(ROT, CHAIN, rotation_body(ROT.did, CHAIN, ROT2))])
    chain.commit([rec("rotated", ROT2, issuer_did=ROT.did)])
    chain.commit([sign_tx(UNI, CHAIN, RecordRevoke(w.docs["revoked"].record_id, "issued in error"))])
    yield w
    chain.close()


def check(doc: Any, genesis: Genesis | None) -> vc.CredentialReport:
    return vc.verify_ler_credential(doc, genesis, NOW)


# --- the export -----------------------------------------------------------------------------------------

def test_export_passes_the_open_badges_schema(world: World) -> None:
    cred = world.credential("valid", UNI)
    jsonschema.Draft202012Validator(SCHEMA).validate(cred)
    for reveal in ([], ["grade"]):
        jsonschema.Draft202012Validator(SCHEMA).validate(world.credential("valid", UNI, reveal))
    jsonschema.Draft202012Validator(SCHEMA).validate(world.credential("self", HOLDER))


@pytest.mark.parametrize("path", [("id",), ("issuer", "type"), ("credentialSubject", "achievement", "criteria"),
                                  ("credentialSubject", "achievement", "description"), ("validFrom",), ("name",)])
def test_the_schema_has_teeth(world: World, path: tuple[str, ...]) -> None:
    cred = copy.deepcopy(world.credential("valid", UNI))
    node = cred
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(cred)


def test_export_shape(world: World) -> None:
    doc = world.docs["valid"]
    cred = world.credential("valid", UNI)
    assert cred["@context"][:2] == [vc.VC_CONTEXT, vc.OB3_CONTEXT]
    assert cred["type"] == ["VerifiableCredential", "OpenBadgeCredential"]
    assert cred["issuer"] == {"id": UNI.did, "type": ["Profile"], "name": "issuer 0"}
    assert cred["validFrom"] == vc.iso_ms(world.chain.time_of(1)) and "validUntil" not in cred
    subject = cred["credentialSubject"]
    assert subject["id"] == HOLDER.did and subject["type"] == ["AchievementSubject"]
    ach = subject["achievement"]
    assert ach["id"] == f"urn:ler:record:{doc.record_id.hex()}#achievement"
    assert ach["name"] == cred["name"] == "BSc Physics"
    assert ach["description"] == CLAIMS["description"]
    assert ach["achievementType"] == "BachelorDegree"
    assert subject["ler:claims"] == CLAIMS and subject["ler:hiddenClaims"] == []
    assert cred["evidence"][0]["id"].startswith("ni:///sha-256;") and cred["evidence"][0]["name"] == "thesis.pdf"
    assert cred["ler:anchor"] == {"chain": CHAIN, "genesisHash": world.genesis.hash.hex(),
                                  "record": doc.record_id.hex(), "recordType": "degree.bachelor", "height": 1}
    assert ProofBundle.loads(vc.canonical(cred["ler:proofBundle"])).records[0].record_id == doc.record_id
    proof = cred["proof"]
    assert proof["verificationMethod"] == vc.verification_method(UNI.did)
    assert proof["cryptosuite"] == "eddsa-jcs-2022" and proof["@context"] == cred["@context"]


def test_partial_disclosure_never_carries_hidden_values(world: World) -> None:
    cred = world.credential("valid", UNI, ["institution"])
    text = json.dumps(cred)
    assert SECRET not in text and "BSc Physics" not in text and "thesis.pdf" not in text
    subject = cred["credentialSubject"]
    assert subject["ler:claims"] == {"institution": "Example University"}
    assert subject["ler:hiddenClaims"] == ["degree", "description", "grade", "thesis"]
    assert cred["name"] == "Degree (bachelor)"      # not the hidden "degree" claim
    assert "evidence" not in cred
    assert check(cred, world.genesis).ok


def test_reveal_none(world: World) -> None:
    cred = world.credential("valid", UNI, [])
    assert cred["credentialSubject"]["ler:claims"] == {}
    rep = check(cred, world.genesis)
    assert rep.ok and rep.ledger is not None and rep.ledger.records[0].hidden == 5


# --- verifying: signature, issuer key, ledger anchor ----------------------------------------------------

def test_valid_without_genesis_says_the_ledger_was_not_checked(world: World) -> None:
    rep = check(world.credential("valid", UNI), None)
    assert rep.ok
    assert rep.ledger_state == vc.LEDGER_NOT_CHECKED and rep.ledger is None
    assert rep.to_json()["parts"] == {"signature": "valid", "issuer_key": "valid", "validity_period": "valid",
                                      "ledger_anchor": "not checked"}


def test_valid_with_genesis_checks_everything(world: World) -> None:
    rep = check(world.credential("valid", UNI), world.genesis)
    assert rep.ok, [c.to_json() for c in rep.checks if not c.ok]
    assert rep.ledger is not None and rep.ledger.verdict == "valid"
    assert rep.match is not None and rep.match.ok
    assert rep.to_json()["parts"]["ledger_anchor"] == "valid"


def test_a_changed_claim_breaks_the_signature(world: World) -> None:
    cred = world.credential("valid", UNI)
    cred["credentialSubject"]["ler:claims"]["grade"] = "summa cum laude"
    for genesis in (None, world.genesis):
        rep = check(cred, genesis)
        assert not rep.ok and not rep.signature.ok


def test_an_issuer_that_signs_something_else_than_the_ledger_proves(world: World) -> None:
    unsigned = vc.credential_from_bundle(world.bundle("valid"), "urn:uuid:x")
    unsigned["credentialSubject"]["ler:claims"]["grade"] = "summa cum laude"
    cred = vc.sign_credential(unsigned, UNI, CREATED)
    assert check(cred, None).ok             # only the ledger can tell
    rep = check(cred, world.genesis)
    assert not rep.ok and rep.signature.ok and rep.ledger is not None and rep.ledger.ok
    assert rep.match is not None and not rep.match.ok and "ler:claims differs" in rep.match.detail


@pytest.mark.parametrize("change", ["subject", "issuer", "validUntil", "bundle of another record", "name",
                                    "claim type"])
def test_every_ledger_bound_field_is_compared(world: World, change: str) -> None:
    unsigned = vc.credential_from_bundle(world.bundle("valid"), "urn:uuid:x")
    if change == "subject":
        unsigned["credentialSubject"]["id"] = STRANGER.did
    elif change == "issuer":
        unsigned["issuer"]["name"] = "Harvard"
    elif change == "validUntil":
        unsigned["validUntil"] = "2099-01-01T00:00:00Z"
    elif change == "bundle of another record":
        unsigned["ler:proofBundle"] = world.bundle("other").to_json()
    elif change == "name":
        unsigned["credentialSubject"]["achievement"]["name"] = "PhD Physics"
    elif change == "claim type":  # 1 and true are equal in Python, not in JSON
        unsigned["credentialSubject"]["ler:claims"] = {**CLAIMS, "degree": True}
    rep = check(vc.sign_credential(unsigned, UNI, CREATED), world.genesis)
    assert not rep.ok and rep.match is not None and not rep.match.ok, change


def test_extra_issuer_fields_are_allowed_and_named(world: World) -> None:
    unsigned = vc.credential_from_bundle(world.bundle("valid"), "urn:uuid:x")
    unsigned["image"] = {"id": "https://example.edu/logo.png", "type": "Image"}
    rep = check(vc.sign_credential(unsigned, UNI, CREATED), world.genesis)
    assert rep.ok and rep.match is not None and "image" in rep.match.detail


def test_signed_by_someone_else(world: World) -> None:
    cred = world.credential("valid", STRANGER)
    for genesis in (None, world.genesis):
        rep = check(cred, genesis)
        assert rep.signature.ok and not rep.issuer_key.ok and not rep.ok


def test_rotated_issuer_signs_with_its_current_key(world: World) -> None:
    for name in ("rotated", "rot-old"):   # anchored after and before the rotation: the current key signs both
        cred = world.credential(name, ROT2)
        assert cred["issuer"]["id"] == ROT.did
        assert cred["proof"]["verificationMethod"].startswith(ROT2.did + "#")
        rep = check(cred, world.genesis)
        assert rep.ok, [c.to_json() for c in rep.checks if not c.ok]
        assert "rotation" in rep.issuer_key.detail
        without = check(cred, None)     # a standard verifier cannot tie ROT2 to ROT: not proven, so not valid
        assert without.signature.ok and not without.issuer_key.ok and "genesis" in without.issuer_key.detail


def test_retired_key_is_refused_by_the_ledger_check(world: World) -> None:
    rep = check(world.credential("rot-old", ROT), world.genesis)
    assert rep.signature.ok and not rep.issuer_key.ok
    assert ROT2.did in rep.issuer_key.detail


def test_revoked_expired_self_asserted_and_wrong_network(world: World) -> None:
    rep = check(world.credential("revoked", UNI), world.genesis)
    assert not rep.ok and rep.ledger is not None and rep.ledger.verdict == "revoked"
    assert check(world.credential("revoked", UNI), None).ok   # nothing else can know

    rep = check(world.credential("expiring", UNI), world.genesis)
    assert not rep.ok and not rep.validity.ok and rep.ledger is not None and rep.ledger.verdict == "expired"

    rep = check(world.credential("self", HOLDER), world.genesis)
    assert rep.signature.ok and rep.issuer_key.ok
    assert rep.ledger is not None and rep.ledger.verdict == "self-asserted" and not rep.ok
    assert rep.to_json()["parts"]["ledger_anchor"] == "self-asserted"

    other = make_genesis([fixed_key(99)], chain="another-chain")
    rep = check(world.credential("valid", UNI), other)
    assert not rep.ok and rep.ledger is not None and rep.ledger.verdict == "wrong-network"


def unanchored(world: World, name: str, key: KeyPair) -> dict[str, Any]:
    """The record's credential with its ledger proof removed, then signed again by `key`."""
    unsigned = vc.credential_from_bundle(world.bundle(name), "urn:uuid:x")
    del unsigned["ler:proofBundle"]
    return vc.sign_credential(unsigned, key, CREATED)


def test_a_credential_without_a_ledger_anchor_is_not_valid_against_a_genesis(world: World) -> None:
    # Re-signed by the issuer's own key, by its retired key (still its did: issuer.id), or made up by anyone
    # for a did:key of their own: the signature holds, but only the ledger could say the rest.
    forged = {**unanchored(world, "valid", UNI)}
    made_up = vc.credential_from_bundle(world.bundle("valid"), "urn:uuid:y")
    del made_up["ler:proofBundle"]
    made_up["issuer"] = {**made_up["issuer"], "id": STRANGER.did}
    for cred in (forged, unanchored(world, "rot-old", ROT), vc.sign_credential(made_up, STRANGER, CREATED)):
        rep = check(cred, world.genesis)
        assert rep.signature.ok and rep.issuer_key.ok and rep.validity.ok
        assert not rep.ok and not rep.ledger_ok and rep.ledger is None
        assert rep.ledger_state == vc.LEDGER_MISSING
        obj = rep.to_json()
        assert obj["valid"] is False and obj["parts"]["ledger_anchor"] == "not anchored"
        assert rep.match is not None and not rep.match.ok and rep.match.detail.startswith("not anchored: no ledger")
        assert [c for c in obj["checks"] if not c["pass"]] == [rep.match.to_json()]
        # A standard verifier, without the genesis, asks for less and gets a standard verdict (docs/VC.md §3).
        without = check(cred, None)
        assert without.ok and without.to_json()["parts"]["ledger_anchor"] == "absent"


def test_a_tampered_bundle_inside(world: World) -> None:
    unsigned = vc.credential_from_bundle(world.bundle("valid"), "urn:uuid:x")
    unsigned["ler:proofBundle"]["head"]["header"]["height"] += 1
    rep = check(vc.sign_credential(unsigned, UNI, CREATED), world.genesis)
    assert not rep.ok and rep.ledger is not None and rep.ledger.verdict == "tampered"


def test_an_expiry_past_year_9999(world: World) -> None:
    # The ledger takes expiries up to 2^64 - 1 ms; the bundle, the credential and their checks all show it.
    res = verify_bundle(world.bundle("far").dumps(), world.genesis, NOW)
    assert res.verdict == "valid" and res.records[0].expires == U64
    assert any(c.name == "not expired" and c.detail == "valid until 584556019-04-03 14:25:51 UTC" for c in res.checks)
    cred = world.credential("far", UNI)
    assert cred["validUntil"] == "584556019-04-03T14:25:51.615Z"
    jsonschema.Draft202012Validator(SCHEMA).validate(cred)
    rep = check(cred, world.genesis)
    assert rep.ok, [c.to_json() for c in rep.checks if not c.ok]
    assert rep.match is not None and rep.match.ok and rep.validity.ok
    changed = {k: v for k, v in cred.items() if k != "proof"} | {"validUntil": "584556019-04-03T14:25:51.614Z"}
    rep = check(vc.sign_credential(changed, UNI, CREATED), world.genesis)
    assert not rep.ok and rep.match is not None and "validUntil differs" in rep.match.detail


def test_hostile_credentials_never_raise(world: World) -> None:
    cred = world.credential("valid", UNI)
    for doc in (None, [], "x", {"proof": None}, {**cred, "ler:proofBundle": "not an object"},
                {**cred, "ler:proofBundle": {"format": 1}}, {**cred, "credentialSubject": []},
                {**cred, "issuer": 5}, {**cred, "validFrom": "soon"}, {**cred, "ler:proofBundle": 1.5}):
        rep = check(doc, world.genesis)
        assert not rep.ok
        json.dumps(rep.to_json())


# --- import ---------------------------------------------------------------------------------------------

def ob3_badge(signer: KeyPair | None = UNI) -> dict[str, Any]:
    badge: dict[str, Any] = {
        "@context": [vc.VC_CONTEXT, vc.OB3_CONTEXT],
        "id": "http://example.com/credentials/3527",
        "type": ["VerifiableCredential", "OpenBadgeCredential"],
        "issuer": {"id": UNI.did, "type": ["Profile"], "name": "Example Corp"},
        "validFrom": "2010-01-01T00:00:00Z",
        "name": "Teamwork Badge",
        "credentialSubject": {
            "id": "did:example:ebfeb1f712ebc6f1c276e12ec21", "type": ["AchievementSubject"],
            "achievement": {"id": "https://example.com/achievements/21st-century-skills/teamwork",
                            "type": ["Achievement"], "achievementType": "Badge", "name": "Teamwork",
                            "description": "Collaborates within a group.",
                            "criteria": {"narrative": "Nominated by peers, reviewed by management."}}}}
    return vc.sign_credential(badge, signer, CREATED) if signer else badge


def test_import_maps_the_badge(world: World) -> None:
    found = vc.badge_claims(ob3_badge(), "ab" * 32, "badge.json")
    assert found.proof_verified and UNI.did in found.proof_note
    c = found.claims
    assert (c["name"], c["description"], c["criteria"], c["achievementType"]) == (
        "Teamwork", "Collaborates within a group.", "Nominated by peers, reviewed by management.", "Badge")
    assert c["issuer_name"] == "Example Corp" and c["issuer_id"] == UNI.did
    assert c["valid_from"] == "2010-01-01T00:00:00Z" and c["credential_id"].endswith("/3527")
    assert c["credential_file"] == {"sha256": "ab" * 32, "media_type": "application/vc", "name": "badge.json"}
    assert found.subject_id == "did:example:ebfeb1f712ebc6f1c276e12ec21"


def test_import_without_or_with_another_proof_says_so(world: World) -> None:
    assert "no proof" in vc.badge_claims(ob3_badge(None), "00" * 32, "b.json").proof_note
    other = {**ob3_badge(None), "proof": {"type": "Ed25519Signature2020", "proofValue": "z1"}}
    found = vc.badge_claims(other, "00" * 32, "b.json")
    assert not found.proof_verified and "not checked" in found.claims["source_proof"]


def test_import_refuses_a_tampered_or_malformed_badge(world: World) -> None:
    forged = ob3_badge()
    forged["credentialSubject"]["achievement"]["name"] = "Leadership"
    with pytest.raises(vc.CredentialError, match="does not verify"):
        vc.badge_claims(forged, "00" * 32, "b.json")
    for change in ("context", "type", "achievement", "name", "issuer", "date"):
        bad = ob3_badge(None)
        if change == "context":
            bad["@context"] = [vc.VC_CONTEXT]
        elif change == "type":
            bad["type"] = ["VerifiableCredential"]
        elif change == "achievement":
            del bad["credentialSubject"]["achievement"]
        elif change == "name":
            bad["credentialSubject"]["achievement"]["name"] = ""
        elif change == "issuer":
            del bad["issuer"]
        else:
            bad["validFrom"] = "last year"
        with pytest.raises(vc.CredentialError):
            vc.badge_claims(bad, "00" * 32, "b.json")


def test_imported_badge_round_trips_through_the_ledger(world: World, tmp_path: Path) -> None:
    found = vc.badge_claims(ob3_badge(), "cd" * 32, "badge.json")
    doc, tx = new_record(UNI, HOLDER.did, rtype="badge.teamwork", values=found.claims)
    world.chain.commit([tx])
    world.docs["imported"] = doc
    cred = world.credential("imported", UNI)
    ach = cred["credentialSubject"]["achievement"]
    assert (ach["name"], ach["description"], ach["criteria"]["narrative"], ach["achievementType"]) == (
        "Teamwork", "Collaborates within a group.", "Nominated by peers, reviewed by management.", "Badge")
    assert check(cred, world.genesis).ok
    jsonschema.Draft202012Validator(SCHEMA).validate(cred)


# --- presentations --------------------------------------------------------------------------------------

def test_presentation_of_a_bundle(world: World) -> None:
    content = world.bundle("valid", ["degree"]).to_json()
    pres = make_presentation("bundle", content, HOLDER, "nonce-123")
    data = pres.dumps()
    rep = verify_presentation(data, world.genesis, "nonce-123", NOW)
    assert rep.ok, [c.to_json() for c in rep.binding]
    assert rep.bundle is not None and rep.bundle.verdict == "valid"

    copied = verify_presentation(data, world.genesis, "nonce-456", NOW)      # replayed for another challenge
    assert not copied.ok and not next(c for c in copied.binding if c.name == "challenge").ok


def test_presentation_by_someone_else(world: World) -> None:
    content = world.bundle("valid", ["degree"]).to_json()
    with pytest.raises(Exception, match="not the holder"):
        make_presentation("bundle", content, STRANGER, "nonce")
    # The stranger signs anyway, as themselves: the records are not theirs.
    sig = STRANGER.sign_payload("presentation", CHAIN, presentation_payload(
        "nonce", STRANGER.did, "bundle", hashlib.sha256(vc.canonical(content)).digest()))
    theirs = Presentation(CHAIN, STRANGER.did, "nonce", "bundle", content, sig)
    rep = verify_presentation(theirs.dumps(), world.genesis, "nonce", NOW)
    assert not rep.ok and not next(c for c in rep.binding if c.name == "holder").ok
    # ... or claims to be the holder: the signature is not the holder's.
    forged = Presentation(CHAIN, HOLDER.did, "nonce", "bundle", content, sig)
    rep = verify_presentation(forged.dumps(), world.genesis, "nonce", NOW)
    assert not rep.ok and not next(c for c in rep.binding if c.name == "holder signature").ok


def test_presentation_with_a_swapped_bundle(world: World) -> None:
    pres = make_presentation("bundle", world.bundle("valid", ["degree"]).to_json(), HOLDER, "n")
    swapped = Presentation(pres.chain_id, pres.holder, pres.challenge, "bundle",
                           world.bundle("valid", ["degree", "grade"]).to_json(), pres.signature)
    assert not verify_presentation(swapped.dumps(), world.genesis, "n", NOW).ok


def test_presentation_of_a_credential(world: World) -> None:
    cred = world.credential("valid", UNI, ["degree"])
    pres = make_presentation("credential", cred, HOLDER, "c-1")
    for genesis in (None, world.genesis):
        rep = verify_presentation(pres.dumps(), genesis, "c-1", NOW)
        assert rep.ok, rep.to_json()
    assert not verify_presentation(pres.dumps(), world.genesis, "c-2", NOW).ok


def test_hostile_presentations_never_raise(world: World) -> None:
    good = json.loads(make_presentation("bundle", world.bundle("valid", []).to_json(), HOLDER, "n").dumps())
    for obj in (b"", b"[]", b"{}", b"\xff", json.dumps({**good, "signature": "AA"}).encode(),
                json.dumps({**good, "bundle": {"x": 1}}).encode(), json.dumps({**good, "holder": "bob"}).encode(),
                json.dumps({**good, "credential": {}}).encode(), json.dumps({**good, "challenge": ""}).encode()):
        rep = verify_presentation(obj, world.genesis, "n", NOW)
        assert not rep.ok
        json.dumps(rep.to_json())


# --- the command line, offline ----------------------------------------------------------------------------

def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def files(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.delenv("LER_GENESIS", raising=False)
    genesis = tmp_path / "genesis.json"
    world.genesis.save(genesis)
    out = {"genesis": genesis}
    # Valid for the real clock: the chain's blocks are in 2023 and nothing in them expires.
    for name, key, reveal in (("valid", UNI, None), ("revoked", UNI, None), ("rotated", ROT2, None),
                              ("far", UNI, None)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(world.credential(name, key, reveal), indent=2))
        out[name] = path
    out["bare"] = tmp_path / "bare.json"
    out["bare"].write_text(json.dumps(unanchored(world, "valid", UNI), indent=2))
    for name, reveal in (("far", ["degree"]), ("valid", ["degree", "thesis"])):
        out[f"{name}-bundle"] = tmp_path / f"{name}-bundle.json"
        out[f"{name}-bundle"].write_bytes(world.bundle(name, reveal).dumps())
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(world.bundle("valid", ["degree"]).dumps())
    out["bundle"] = bundle
    thesis = tmp_path / "thesis.pdf"
    thesis.write_bytes(THESIS)
    out["thesis"] = thesis
    holder_key = tmp_path / "holder.key"
    from ler.keys import write_key_file

    write_key_file(holder_key, HOLDER)
    out["holder.key"] = holder_key
    return out


def test_cli_verify_credential_without_and_with_genesis(files: dict[str, Path]) -> None:
    r = run("verify", str(files["valid"]))
    assert r.exit_code == 0, r.output
    head = r.stdout.splitlines()[0]
    assert head.startswith("VALID: signature: valid; issuer key: valid")
    assert "ledger anchor: not checked (no --genesis)" in head

    r = run("verify", str(files["valid"]), "--genesis", str(files["genesis"]), "--evidence",
            f"thesis={files['thesis']}")
    assert r.exit_code == 0, r.output
    assert "ledger anchor: VALID: accredited record, not revoked" in r.stdout.splitlines()[0]
    assert "[ok] matches ledger" in r.stdout and "[ok] evidence thesis" in r.stdout

    r = run("verify", str(files["valid"]), "--genesis", str(files["genesis"]), "--json")
    obj = json.loads(r.stdout)
    assert r.exit_code == 0 and obj["valid"] and obj["parts"]["ledger_anchor"] == "valid"


def test_cli_verify_credential_failures(files: dict[str, Path], tmp_path: Path) -> None:
    r = run("verify", str(files["revoked"]), "--genesis", str(files["genesis"]))
    assert r.exit_code == 1 and r.stdout.startswith("REVOKED: signature: valid")

    r = run("verify", str(files["rotated"]))
    assert r.exit_code == 1 and "issuer key: INVALID" in r.stdout.splitlines()[0]
    r = run("verify", str(files["rotated"]), "--genesis", str(files["genesis"]))
    assert r.exit_code == 0, r.output

    forged = json.loads(files["valid"].read_text())
    forged["credentialSubject"]["ler:claims"]["grade"] = "summa cum laude"
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    r = run("verify", str(path))
    assert r.exit_code == 1 and r.stdout.startswith("NOT VALID: signature: INVALID")

    r = run("verify", str(files["valid"]), "--evidence", f"thesis={files['genesis']}")
    assert r.exit_code == 1 and "[FAIL] evidence thesis" in r.stdout

    dup = tmp_path / "dup.json"
    dup.write_text('{"@context": [], "name": "a", "name": "b"}')
    r = run("verify", str(dup))
    assert r.exit_code == 1 and "appears twice" in r.stdout


def test_cli_verify_a_credential_without_a_ledger_anchor(files: dict[str, Path]) -> None:
    g = str(files["genesis"])
    r = run("verify", str(files["bare"]), "--genesis", g)
    assert r.exit_code == 1
    assert r.stdout.splitlines()[0] == (
        "NOT ANCHORED: signature: valid; issuer key: valid; validity period: valid; ledger anchor: NOT ANCHORED: "
        "none travels with this credential, so nothing proves it is on the ledger of this genesis file")
    assert "  [FAIL] matches ledger: not anchored: no ledger proof (ler:proofBundle)" in r.stdout
    r = run("verify", str(files["bare"]), "--genesis", g, "--json")
    obj = json.loads(r.stdout)
    assert r.exit_code == 1 and obj["valid"] is False and obj["parts"]["ledger_anchor"] == "not anchored"
    # without a genesis nothing was asked of the ledger: the standard verdict, saying what was not checked
    r = run("verify", str(files["bare"]))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("VALID: signature: valid; issuer key: valid; validity period: valid; "
                               "ledger anchor: none travels with this credential")


def test_cli_evidence_that_fails_fails_the_verdict(files: dict[str, Path], tmp_path: Path) -> None:
    g = str(files["genesis"])
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the thesis")
    for spec, why in ((f"thesis={wrong}", "does not match the file the record commits to"),
                      (f"nothere={files['thesis']}", "no disclosed claim named 'nothere'")):
        for genesis in (["--genesis", g], []):
            r = run("verify", str(files["valid"]), *genesis, "--evidence", spec)
            assert r.exit_code == 1
            head = r.stdout.splitlines()[0]
            assert head.startswith("EVIDENCE MISMATCH: evidence ") and why in head
            assert "; signature: valid; issuer key: valid; validity period: valid; ledger anchor: " in head
            r = run("verify", str(files["valid"]), *genesis, "--evidence", spec, "--json")
            obj = json.loads(r.stdout)
            assert r.exit_code == 1 and obj["valid"] is False, obj
            assert [e["pass"] for e in obj["evidence"]] == [False]

        pres = tmp_path / "pres.json"
        for kind, path in (("--bundle", files["valid-bundle"]), ("--credential", files["valid"])):
            pres.unlink(missing_ok=True)
            r = run("present", kind, str(path), "--key", str(files["holder.key"]), "--challenge", "c",
                    "--out", str(pres))
            assert r.exit_code == 0, r.output
            r = run("verify", str(pres), "--genesis", g, "--challenge", "c", "--evidence", spec, "--json")
            obj = json.loads(r.stdout)
            assert r.exit_code == 1 and obj["valid"] is False
            if kind == "--bundle":
                assert obj["bundle"]["verdict"] == "evidence-mismatch" and obj["bundle"]["valid"] is False
            else:
                assert obj["credential"]["valid"] is False
            r = run("verify", str(pres), "--genesis", g, "--challenge", "c", "--evidence", spec)
            assert r.exit_code == 1
            assert r.stdout.startswith("NOT VALID: presented by its holder, but EVIDENCE MISMATCH: evidence ")
    # and the right file still passes everywhere
    r = run("verify", str(files["valid"]), "--genesis", g, "--evidence", f"thesis={files['thesis']}", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["valid"] is True


def test_cli_an_expiry_past_year_9999(files: dict[str, Path]) -> None:
    g = str(files["genesis"])
    r = run("verify", str(files["far-bundle"]), "--genesis", g)
    assert r.exit_code == 0, r.output
    assert "  expires:   584556019-04-03 14:25:51 UTC" in r.stdout
    r = run("verify", str(files["far-bundle"]), "--genesis", g, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["records"][0]["expires"] == U64
    r = run("verify", str(files["far"]), "--genesis", g)
    assert r.exit_code == 0, r.output
    assert "until 584556019-04-03T14:25:51.615Z" in r.stdout and "  expires:   584556019-04-03" in r.stdout


@needs_vectors
def test_cli_verify_official_vector(files: dict[str, Path]) -> None:
    assert VECTORS is not None
    r = run("verify", str(VECTORS / "eddsa-jcs-2022" / "signedJCS.json"))
    # The signature verifies; but the issuer is a URL, and nothing offline ties the did:key to it.
    assert r.exit_code == 1
    assert r.stdout.startswith("NOT VALID: signature: valid; issuer key: INVALID")
    assert "[ok] signature: signed by did:key:z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2" in r.stdout


def test_cli_verify_keeps_every_bundle_flag() -> None:
    from node import cli_vc

    original = {p.name for p in cli_vc._bundle_verify.params}
    assert original <= {p.name for p in cli.commands["verify"].params}
    assert cli.commands["verify"] is cli_vc.verify


def test_cli_bundle_path_is_unchanged(files: dict[str, Path]) -> None:
    r = run("verify", str(files["bundle"]), "--genesis", str(files["genesis"]))
    assert r.exit_code == 0 and r.stdout.startswith("VALID: accredited record, not revoked")
    r = run("verify", str(files["bundle"]))
    assert r.exit_code == 2 and "Missing option '--genesis'" in r.stderr
    r = run("verify", str(files["bundle"]), "--genesis", str(files["genesis"]), "--challenge", "x")
    assert r.exit_code == 1 and "not a presentation" in r.stderr


def test_cli_present_and_verify(files: dict[str, Path], tmp_path: Path) -> None:
    pres = tmp_path / "pres.json"
    r = run("present", "--bundle", str(files["bundle"]), "--key", str(files["holder.key"]), "--challenge",
            "employer-nonce-1", "--out", str(pres))
    assert r.exit_code == 0, r.output
    g = str(files["genesis"])
    r = run("verify", str(pres), "--genesis", g, "--challenge", "employer-nonce-1")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"VALID: presented by its holder {HOLDER.did} for your challenge")
    r = run("verify", str(pres), "--genesis", g, "--challenge", "employer-nonce-2")
    assert r.exit_code == 1 and r.stdout.startswith("NOT VALID: challenge")
    r = run("verify", str(pres), "--genesis", g)
    assert r.exit_code == 2 and "--challenge" in r.stderr
    r = run("verify", str(pres), "--challenge", "employer-nonce-1")
    assert r.exit_code == 2 and "--genesis" in r.stderr
    r = run("verify", str(pres), "--genesis", g, "--challenge", "employer-nonce-1", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["valid"] is True

    stranger_key = tmp_path / "stranger.key"
    from ler.keys import write_key_file

    write_key_file(stranger_key, STRANGER)
    r = run("present", "--bundle", str(files["bundle"]), "--key", str(stranger_key), "--challenge", "c",
            "--out", str(tmp_path / "p2.json"))
    assert r.exit_code == 2 and "not the holder" in r.stderr

    cpres = tmp_path / "cpres.json"
    r = run("present", "--credential", str(files["valid"]), "--key", str(files["holder.key"]), "--challenge",
            "c-9", "--out", str(cpres))
    assert r.exit_code == 0, r.output
    r = run("verify", str(cpres), "--genesis", g, "--challenge", "c-9")
    assert r.exit_code == 0, r.output
    r = run("verify", str(cpres), "--challenge", "c-9")
    assert r.exit_code == 0 and "ledger anchor: not checked (no --genesis)" in r.stdout


def test_a_rotation_in_the_head_block_already_names_the_key_that_signs(world: World) -> None:
    """A bundle whose head is the rotation's own block (block 2; the new key signs from block 3): a
    credential made from it is signed after that block, so the new key is the issuer's, the old one not."""
    doc = world.docs["rot-old"]
    bundle = build_bundle(world.chain.store, [(doc.record_id, doc.disclose([c.key for c in doc.claims]))], 2)
    assert bundle.head.header.height == 2
    unsigned = vc.credential_from_bundle(bundle, "urn:uuid:00000000-0000-4000-8000-000000000002")
    new = check(vc.sign_credential(unsigned, ROT2, CREATED), world.genesis)
    assert new.ok and "rotation" in new.issuer_key.detail, [c.to_json() for c in new.checks if not c.ok]
    old = check(vc.sign_credential(unsigned, ROT, CREATED), world.genesis)
    assert old.signature.ok and not old.issuer_key.ok and ROT2.did in old.issuer_key.detail
