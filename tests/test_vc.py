"""eddsa-jcs-2022 Data Integrity (ler.vc) against the W3C vc-di-eddsa specification's official test vectors.

The vectors are read at test time from the shared folder (../shared/vectors/vc-di-eddsa next to the repository,
or $LER_SHARED_DIR/vectors/vc-di-eddsa). Note on the vector set: the eddsa-jcs-2022 intermediate values
(canonDocJCS ... sigBTC58JCS) are those of the specification's "Alumni Credential" (signedJCS.json without its
proof), not of employmentAuth.json, which the specification uses for its eddsa-rdfc-2022 enhanced example; we
sign employmentAuth.json too, and check what can be checked of it (round trip, tamper rejection).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler import vc
from ler.keys import KeyPair


def _vectors_dir() -> Path | None:
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "vectors" / "vc-di-eddsa"]
    env = os.environ.get("LER_SHARED_DIR")
    if env:
        candidates += [Path(env) / "vectors" / "vc-di-eddsa", Path(env) / "vc-di-eddsa", Path(env)]
    for c in candidates:
        if (c / "keyPair.json").is_file() and (c / "eddsa-jcs-2022" / "signedJCS.json").is_file():
            return c
    return None


VECTORS = _vectors_dir()
needs_vectors = pytest.mark.skipif(
    VECTORS is None, reason="the W3C vc-di-eddsa test vectors are not here: expected ../shared/vectors/vc-di-eddsa "
                            "beside the repository, or set LER_SHARED_DIR to the shared folder")


def vec_json(name: str) -> Any:
    assert VECTORS is not None
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def vec_text(name: str) -> str:
    assert VECTORS is not None
    return (VECTORS / "eddsa-jcs-2022" / name).read_text(encoding="utf-8").strip()


def vector_key() -> KeyPair:
    """The Ed25519 key of keyPair.json: its secret key is multibase base58btc of multicodec ed25519-priv
    (varint 0x1300 = bytes 0x80 0x26) followed by the 32-byte seed."""
    pair = vec_json("keyPair.json")
    secret = pair.get("privateKeyMultibase") or pair["secretKeyMultibase"]
    assert secret.startswith("z")
    raw = base58.b58decode(secret[1:])
    assert raw[:2] == b"\x80\x26" and len(raw) == 34
    key = KeyPair(raw[2:])
    public = base58.b58decode(pair["publicKeyMultibase"][1:])
    assert public[:2] == b"\xed\x01" and public[2:] == key.public_key
    assert key.did == "did:key:" + pair["publicKeyMultibase"]
    return key


def unsigned_alumni() -> dict[str, Any]:
    doc = vec_json("eddsa-jcs-2022/signedJCS.json")
    del doc["proof"]
    return doc


# --- the specification's vectors, step by step ---------------------------------------------------------

@needs_vectors
def test_canonical_document_and_its_hash() -> None:
    canon = vc.canonical(unsigned_alumni())
    assert canon.decode("utf-8") == vec_text("canonDocJCS.txt")
    assert hashlib.sha256(canon).hexdigest() == vec_text("docHashJCS.txt")


@needs_vectors
def test_canonical_proof_config_and_its_hash() -> None:
    config = vec_json("eddsa-jcs-2022/proofConfigJCS.json")
    canon = vc.canonical(config)
    assert canon.decode("utf-8") == vec_text("proofCanonJCS.txt")
    assert hashlib.sha256(canon).hexdigest() == vec_text("proofHashJCS.txt")


@needs_vectors
def test_combined_hash_signature_and_proof_value() -> None:
    config = vec_json("eddsa-jcs-2022/proofConfigJCS.json")
    data = vc.hash_data(unsigned_alumni(), config)
    assert data.hex() == vec_text("combinedHashJCS.txt")  # proof config hash first, then the document's
    signature = vector_key().sign(data)
    assert signature.hex() == vec_text("sigHexJCS.txt")
    assert "z" + base58.b58encode(signature).decode() == vec_text("sigBTC58JCS.txt")


@needs_vectors
def test_sign_credential_reproduces_signed_vector_exactly() -> None:
    config = vec_json("eddsa-jcs-2022/proofConfigJCS.json")
    signed = vc.sign_credential(unsigned_alumni(), vector_key(), config["created"])
    assert signed == vec_json("eddsa-jcs-2022/signedJCS.json")


@needs_vectors
def test_verification_method_is_the_did_key_url() -> None:
    config = vec_json("eddsa-jcs-2022/proofConfigJCS.json")
    assert vc.verification_method(vector_key().did) == config["verificationMethod"]


@needs_vectors
def test_signed_vector_verifies() -> None:
    res = vc.verify_credential(vec_json("eddsa-jcs-2022/signedJCS.json"))
    assert res.ok, res.checks
    assert res.signer == vector_key().did
    assert res.created == "2023-02-24T23:36:38Z" and res.proof_purpose == "assertionMethod"


def _tamperings() -> list[tuple[str, Any]]:
    other = KeyPair(bytes(range(32))).did

    def claim(d: dict[str, Any]) -> None:
        d["credentialSubject"]["alumniOf"] = "The School of Counterexamples"

    def added_claim(d: dict[str, Any]) -> None:
        d["credentialSubject"]["degree"] = "PhD"

    def issuer(d: dict[str, Any]) -> None:
        d["issuer"] = "https://vc.example/issuers/9999"

    def valid_from(d: dict[str, Any]) -> None:
        d["validFrom"] = "2023-01-02T00:00:00Z"

    def proof_value(d: dict[str, Any]) -> None:
        sig = bytearray(base58.b58decode(d["proof"]["proofValue"][1:]))
        sig[10] ^= 0x01
        d["proof"]["proofValue"] = "z" + base58.b58encode(bytes(sig)).decode()

    def proof_value_other_base(d: dict[str, Any]) -> None:
        d["proof"]["proofValue"] = "u" + d["proof"]["proofValue"][1:]

    def vm_other_key(d: dict[str, Any]) -> None:
        d["proof"]["verificationMethod"] = vc.verification_method(other)

    def vm_fragment(d: dict[str, Any]) -> None:
        did = d["proof"]["verificationMethod"].split("#")[0]
        d["proof"]["verificationMethod"] = did + "#" + other.removeprefix("did:key:")

    def vm_not_did_key(d: dict[str, Any]) -> None:
        d["proof"]["verificationMethod"] = "https://vc.example/issuers/5678#key-1"

    def cryptosuite(d: dict[str, Any]) -> None:
        d["proof"]["cryptosuite"] = "eddsa-rdfc-2022"

    def proof_type(d: dict[str, Any]) -> None:
        d["proof"]["type"] = "Ed25519Signature2020"

    def created(d: dict[str, Any]) -> None:
        d["proof"]["created"] = "2023-02-24T23:36:39Z"

    def purpose(d: dict[str, Any]) -> None:
        d["proof"]["proofPurpose"] = "authentication"

    def context_dropped(d: dict[str, Any]) -> None:
        d["@context"] = d["@context"][:1]

    def proof_context(d: dict[str, Any]) -> None:
        d["proof"]["@context"] = ["https://www.w3.org/ns/credentials/v2"]

    def no_proof(d: dict[str, Any]) -> None:
        del d["proof"]

    return [("claim", claim), ("added claim", added_claim), ("issuer", issuer), ("validFrom", valid_from),
            ("proofValue bit", proof_value), ("proofValue base", proof_value_other_base),
            ("verificationMethod key", vm_other_key), ("verificationMethod fragment", vm_fragment),
            ("verificationMethod not did:key", vm_not_did_key), ("cryptosuite", cryptosuite),
            ("proof type", proof_type), ("created", created), ("proofPurpose", purpose),
            ("document @context", context_dropped), ("proof @context", proof_context), ("no proof", no_proof)]


@needs_vectors
@pytest.mark.parametrize(("what", "change"), _tamperings(), ids=[t[0] for t in _tamperings()])
def test_signed_vector_rejected_after_any_change(what: str, change: Any) -> None:
    doc = vec_json("eddsa-jcs-2022/signedJCS.json")
    change(doc)
    res = vc.verify_credential(doc)
    assert not res.ok, what
    assert res.signer is None
    assert any(not c.ok and c.detail for c in res.checks)


@needs_vectors
def test_key_order_and_whitespace_do_not_matter() -> None:
    doc = vec_json("eddsa-jcs-2022/signedJCS.json")
    shuffled = json.loads(json.dumps(dict(reversed(list(doc.items()))), indent=7))
    assert vc.verify_credential(shuffled).ok


@needs_vectors
def test_employment_authorization_round_trip() -> None:
    doc = vec_json("employmentAuth.json")
    key = vector_key()
    signed = vc.sign_credential(doc, key, "2024-05-01T10:00:00Z")
    assert signed["proof"]["@context"] == doc["@context"]
    res = vc.verify_credential(signed)
    assert res.ok and res.signer == key.did
    forged = copy.deepcopy(signed)
    forged["credentialSubject"]["employmentAuthorizationDocument"]["lprCategory"] = "C10"
    assert not vc.verify_credential(forged).ok
    assert "credential" not in doc and "proof" not in doc  # the input is left as it was


# --- our own signing, and hostile input ------------------------------------------------------------------

def test_sign_refuses_bad_input() -> None:
    key = KeyPair.generate()
    with pytest.raises(vc.CredentialError):
        vc.sign_credential({"a": 1, "proof": {}}, key, "2024-01-01T00:00:00Z")
    with pytest.raises(vc.CredentialError):
        vc.sign_credential({"a": 1}, key, "yesterday")
    with pytest.raises(vc.CredentialError):
        vc.sign_credential({"a": float("nan")}, key, "2024-01-01T00:00:00Z")


def test_proof_set_of_one_is_accepted_but_larger_sets_are_not() -> None:
    key = KeyPair.generate()
    signed = vc.sign_credential({"@context": ["https://www.w3.org/ns/credentials/v2"], "x": 1}, key,
                                "2024-01-01T00:00:00Z")
    as_set = {**signed, "proof": [signed["proof"]]}
    assert vc.verify_credential(as_set).ok
    two = {**signed, "proof": [signed["proof"], signed["proof"]]}
    assert not vc.verify_credential(two).ok


def test_document_without_context() -> None:
    key = KeyPair.generate()
    signed = vc.sign_credential({"hello": "world"}, key, "2024-01-01T00:00:00.123Z")
    assert "@context" not in signed["proof"]
    assert vc.verify_credential(signed).ok


def test_expired_proof_is_rejected() -> None:
    key = KeyPair.generate()
    doc = {"x": 1}
    proof = {"type": vc.PROOF_TYPE, "cryptosuite": vc.CRYPTOSUITE, "created": "2020-01-01T00:00:00Z",
             "expires": "2021-01-01T00:00:00Z", "verificationMethod": vc.verification_method(key.did),
             "proofPurpose": "assertionMethod"}
    proof["proofValue"] = "z" + base58.b58encode(key.sign(vc.hash_data(doc, proof))).decode()
    res = vc.verify_credential({**doc, "proof": proof})
    assert not res.ok and "expired" in res.checks[-1].detail


def test_datetime_forms() -> None:
    for ok in ("2023-02-24T23:36:38Z", "2023-02-24T23:36:38.5Z", "2023-02-24T23:36:38+01:00",
               "2023-02-24T23:36:38", "2023-02-24T23:36:38.123456789Z"):
        assert vc.is_datetime(ok), ok
    for bad in ("2023-02-24", "2023-13-01T00:00:00Z", "2023-02-30T00:00:00Z", "yesterday", 5, None):
        assert not vc.is_datetime(bad), bad
    assert vc.iso_ms(1_700_000_000_000) == "2023-11-14T22:13:20Z"
    assert vc.iso_ms(1_700_000_000_042) == "2023-11-14T22:13:20.042Z"


# --- times beyond Python's datetime: a ledger field holds up to 2^64 - 1 ms (year 584556019) ------------------

U64 = 2**64 - 1


def test_times_past_year_9999_are_shown_and_read_back() -> None:
    from ler.dates import utc_text, xsd_ms

    assert vc.iso_ms(U64) == "584556019-04-03T14:25:51.615Z"
    assert utc_text(U64) == "584556019-04-03 14:25:51 UTC"
    assert vc.iso_ms(253_402_300_800_000) == "10000-01-01T00:00:00Z"          # the first ms datetime cannot hold
    for ms in (U64, U64 - 999, 253_402_300_800_000, 253_402_300_799_999, 0, 1):
        assert xsd_ms(vc.iso_ms(ms)) == ms and vc.is_datetime(vc.iso_ms(ms))
    assert xsd_ms("10000-01-01T01:00:00+01:00") == 253_402_300_800_000
    assert xsd_ms("10000-02-29T00:00:00Z") is not None                        # 10000 is a leap year
    for bad in ("10100-02-29T00:00:00Z", "010000-01-01T00:00:00Z", "10000-13-01T00:00:00Z",
                "10000-01-01T24:00:00Z", "10000-01-01T00:00:60Z", "10000-01-01T00:00:00+24:00",
                "-2023-01-01T00:00:00Z"):
        assert xsd_ms(bad) is None and not vc.is_datetime(bad), bad


@settings(max_examples=500, deadline=None)
@given(ms=st.integers(0, 253_402_300_799_999))
def test_times_within_datetime_match_datetime(ms: int) -> None:
    from datetime import UTC, datetime

    from ler.dates import utc_text, xsd_ms

    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    want = dt.strftime("%Y-%m-%dT%H:%M:%S")
    assert vc.iso_ms(ms) == (f"{want}.{ms % 1000:03d}Z" if ms % 1000 else f"{want}Z")
    assert utc_text(ms) == dt.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert xsd_ms(vc.iso_ms(ms)) == ms


def test_a_validity_period_past_year_9999() -> None:
    key = KeyPair.generate()
    doc = {"@context": ["https://www.w3.org/ns/credentials/v2"], "issuer": key.did,
           "validFrom": "2023-01-01T00:00:00Z", "validUntil": vc.iso_ms(U64)}
    rep = vc.verify_ler_credential(vc.sign_credential(doc, key, "2024-01-01T00:00:00Z"), None)
    assert rep.ok and rep.validity.ok and "584556019" in rep.validity.detail
    rep = vc.verify_ler_credential(vc.sign_credential({**doc, "validFrom": "10000-01-01T00:00:00Z"}, key,
                                                      "2024-01-01T00:00:00Z"), None)
    assert not rep.validity.ok and "not valid before 10000-01-01" in rep.validity.detail


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(doc=json_values, proof=json_values)
def test_verify_never_raises(doc: Any, proof: Any) -> None:
    res = vc.verify_credential(doc)
    assert not res.ok
    if isinstance(doc, dict):
        assert not vc.verify_credential({**doc, "proof": proof}).ok


@settings(max_examples=200, deadline=None)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "proof"),
                             st.text(max_size=10) | st.integers(-10**6, 10**6), min_size=1, max_size=3))
def test_any_added_member_breaks_the_signature(extra: dict[str, Any]) -> None:
    key = KeyPair(b"\x07" * 32)
    signed = vc.sign_credential({"@context": ["https://www.w3.org/ns/credentials/v2"], "a": 1}, key,
                                "2024-01-01T00:00:00Z")
    changed = {**signed, **{k: v for k, v in extra.items() if signed.get(k) != v}}
    if changed == signed:
        return
    assert not vc.verify_credential(changed).ok
