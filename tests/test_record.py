"""Record documents, claim commitments and selective disclosure (ler.record)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler import merkle
from ler.errors import DecodeError
from ler.keys import KeyPair
from ler.record import (
    MAX_CLAIMS,
    MAX_SAFE_INT,
    SALT_BYTES,
    Claim,
    Disclosure,
    HiddenClaim,
    RecordDocument,
    commitment,
    evidence_value,
    make_claims,
)

ISSUER = KeyPair(bytes([2]) * 32).did
HOLDER = KeyPair(bytes([3]) * 32).did

# Claim keys and hidden values spelled with letters beyond "f", so none can turn up inside a hex string by chance.
_NONHEX = "ghijklmnopqrstuvwxyz"
claim_keys = st.text(alphabet=_NONHEX, min_size=1, max_size=8)
secret_values = st.text(alphabet=_NONHEX, min_size=12, max_size=16).map(lambda s: "zz" + s)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8)
claim_maps = st.dictionaries(claim_keys, json_values, min_size=1, max_size=12)


def doc_of(values: dict[str, Any], **kw: Any) -> RecordDocument:
    fields = dict(chain_id="ler-test", record_id=bytes(range(16)), issuer=ISSUER, holder=HOLDER,
                  rtype="degree.bachelor", expires=None, claims=make_claims(values))
    fields.update(kw)
    return RecordDocument(**fields)


# --- commitments ----------------------------------------------------------------------------------------

@given(claim_maps, st.randoms(use_true_random=False))
def test_commitment_is_order_independent(values: dict[str, Any], rnd: Any) -> None:
    claims = list(make_claims(values))
    shuffled = claims[:]
    rnd.shuffle(shuffled)
    assert commitment(shuffled) == commitment(claims) == commitment(tuple(claims))
    # and it is the RFC 6962 root over the leaves sorted by the keys' UTF-8 bytes
    ordered = sorted(claims, key=lambda c: c.key.encode("utf-8"))
    assert commitment(claims) == merkle.root([c.leaf_data for c in ordered])


def test_commitment_sorts_by_utf8_bytes() -> None:
    claims = make_claims({"é": 1, "z": 2, "Z": 3, "a": 4})
    assert [c.key for c in claims] == ["Z", "a", "z", "é"]


@given(claim_maps, st.data())
def test_commitment_depends_on_every_key_value_and_salt(values: dict[str, Any], data: Any) -> None:
    claims = list(make_claims(values))
    root = commitment(claims)
    i = data.draw(st.integers(0, len(claims) - 1))
    c = claims[i]
    variants = [dataclasses.replace(c, salt=bytes([c.salt[0] ^ 1]) + c.salt[1:]),
                dataclasses.replace(c, value=[c.value]),
                dataclasses.replace(c, value="zz-other" if c.value != "zz-other" else "zz-else")]
    if c.key + "x" not in values:
        variants.append(dataclasses.replace(c, key=c.key + "x"))
    for v in variants:
        assert commitment([*claims[:i], v, *claims[i + 1:]]) != root
    if len(claims) > 1:
        assert commitment(claims[:i] + claims[i + 1:]) != root  # a dropped claim


def test_duplicate_claim_keys_are_refused() -> None:
    a = Claim("degree", "BSc", os.urandom(16))
    b = Claim("degree", "MSc", os.urandom(16))
    with pytest.raises(DecodeError, match="twice"):
        commitment([a, b])
    with pytest.raises(DecodeError, match="twice"):
        commitment([a, Claim("x", 1, os.urandom(16)), a])
    doc = RecordDocument("ler-test", bytes(16), ISSUER, HOLDER, "degree", None, (a, b))
    with pytest.raises(DecodeError):
        _ = doc.commitment


def test_salts_are_fresh_and_16_bytes() -> None:
    values = {f"k{i}": "same" for i in range(50)}
    first, second = make_claims(values), make_claims(values)
    salts = [c.salt for c in first + second]
    assert all(isinstance(s, bytes) and len(s) == SALT_BYTES == 16 for s in salts)
    assert len(set(salts)) == len(salts)
    assert commitment(first) != commitment(second)  # the same claims, salted anew, commit differently


def test_make_claims_refusals() -> None:
    for bad in [{}, [], None, "x", [("a", 1)]]:
        with pytest.raises(DecodeError):
            make_claims(bad)  # type: ignore[arg-type]
    assert len(make_claims({f"k{i:03d}": i for i in range(MAX_CLAIMS)})) == MAX_CLAIMS
    with pytest.raises(DecodeError):
        make_claims({f"k{i:03d}": i for i in range(MAX_CLAIMS + 1)})


# --- claim values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    1.5, 0.0, float("inf"), [1, 2.0], {"a": {"b": 1e3}},
    b"raw", bytearray(b"x"), [b"x"], {"a": [b""]},
    MAX_SAFE_INT + 1, -(MAX_SAFE_INT + 1), 2**63, [2**53], {"n": -(2**60)},
    {1: "a"}, {"a": {None: 1}}, {1, 2}, object(), "\ud800",
    "x" * 5000, ["y" * 1000] * 5,
])
def test_bad_claim_values_are_refused(value: Any) -> None:
    with pytest.raises(DecodeError):
        Claim("k", value, bytes(16))
    with pytest.raises(DecodeError):
        make_claims({"k": value})


@pytest.mark.parametrize("value", [None, True, 0, MAX_SAFE_INT, -MAX_SAFE_INT, "", "BSc", [], {}, {"a": [1, "b", None]},
                                   "x" * 4000])
def test_json_claim_values_are_accepted(value: Any) -> None:
    assert Claim("k", value, bytes(16)).value == value


@pytest.mark.parametrize(("key", "salt"), [("", bytes(16)), ("k" * 101, bytes(16)), (5, bytes(16)),
                                           ("k", bytes(15)), ("k", bytes(17)), ("k", "00" * 16)])
def test_bad_claim_keys_and_salts_are_refused(key: Any, salt: Any) -> None:
    with pytest.raises(DecodeError):
        Claim(key, "v", salt)


def test_evidence_value_hashes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "portfolio.pdf"
    content = os.urandom(2_500_000)  # more than two of the hashing chunks
    path.write_bytes(content)
    value = evidence_value(path, "application/pdf")
    assert value == {"sha256": hashlib.sha256(content).hexdigest(), "media_type": "application/pdf",
                     "name": "portfolio.pdf"}
    claims = make_claims({"evidence": value})
    assert claims[0].value == value
    path.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    assert evidence_value(path, "application/pdf")["sha256"] != value["sha256"]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert evidence_value(empty, "text/plain")["sha256"] == hashlib.sha256(b"").hexdigest()
    with pytest.raises(OSError):
        evidence_value(tmp_path / "absent", "text/plain")


# --- selective disclosure -------------------------------------------------------------------------------

distinct_secrets = st.lists(st.tuples(claim_keys, secret_values), min_size=1, max_size=12,
                           unique_by=(lambda kv: kv[0], lambda kv: kv[1])).map(dict)


@settings(max_examples=150)
@given(distinct_secrets, st.data())
def test_every_subset_discloses_verifies_and_hides_the_rest(values: dict[str, str], data: Any) -> None:
    doc = doc_of(values)
    reveal = data.draw(st.lists(st.sampled_from(sorted(values)), unique=True, max_size=len(values)))
    d = doc.disclose(reveal)
    assert d.verify(doc.commitment) == []
    assert d.values() == {k: values[k] for k in reveal}
    assert d.hidden_count() == len(values) - len(reveal)
    assert sorted(d.hidden_names()) == sorted(k for k in values if k not in reveal)
    assert [c.key for c in d.revealed] == sorted(reveal, key=lambda k: k.encode("utf-8"))
    text = json.dumps(d.to_json())
    salts = {c.key: c.salt.hex() for c in doc.claims}
    for k, v in values.items():
        if k not in reveal:  # the name shows, the value and salt never do
            assert json.dumps(v) not in text and salts[k] not in text
    # through JSON (hex and base64url forms) and back it still verifies
    assert Disclosure.from_json(json.loads(text)).verify(doc.commitment) == []
    assert Disclosure.from_json(d.to_json(b64=True), b64=True) == d


@given(claim_maps)
def test_full_and_empty_disclosures(values: dict[str, Any]) -> None:
    doc = doc_of(values)
    full = doc.disclose(list(values))
    assert full.verify(doc.commitment) == [] and full.hidden_count() == 0 and full.values() == values
    none = doc.disclose([])
    assert none.verify(doc.commitment) == [] and none.revealed == () and none.hidden_count() == len(values)
    other = doc_of(values)  # same claims, other salts: another commitment
    assert full.verify(other.commitment) != []


def test_disclose_unknown_and_repeated_names() -> None:
    doc = doc_of({"degree": "BSc", "year": 2009})
    with pytest.raises(DecodeError):
        doc.disclose(["grade"])
    assert [c.key for c in doc.disclose(["year", "degree", "year"]).revealed] == ["degree", "year"]


def tampered_variants(d: Disclosure) -> list[tuple[str, Disclosure]]:
    """Each a single edit of a disclosure: every one must stop it from rebuilding the commitment."""
    out = []
    rev, hid = d.revealed, d.hidden
    for i, c in enumerate(rev):
        def at(new: Claim, i: int = i) -> Disclosure:
            return Disclosure((*rev[:i], new, *rev[i + 1:]), hid)
        out.append(("value", at(dataclasses.replace(c, value=[c.value]))))
        out.append(("value", at(dataclasses.replace(c, value="zz-forged"))))
        out.append(("salt", at(dataclasses.replace(c, salt=bytes([c.salt[0] ^ 0x80]) + c.salt[1:]))))
        out.append(("key", at(dataclasses.replace(c, key=c.key + "q"))))
        out.append(("dropped", Disclosure((*rev[:i], *rev[i + 1:]), hid)))
        out.append(("duplicated", Disclosure((*rev[:i + 1], c, *rev[i + 1:]), hid)))
        out.append(("revealed also hidden", Disclosure(rev, (*hid, c.hidden()))))
    for i, h in enumerate(hid):
        def at_h(new: HiddenClaim, i: int = i) -> Disclosure:
            return Disclosure(rev, (*hid[:i], new, *hid[i + 1:]))
        out.append(("hidden digest", at_h(dataclasses.replace(h, digest=bytes([h.digest[0] ^ 1]) + h.digest[1:]))))
        out.append(("hidden key", at_h(dataclasses.replace(h, key=h.key + "q"))))
        out.append(("hidden dropped", Disclosure(rev, (*hid[:i], *hid[i + 1:]))))
        out.append(("hidden duplicated", Disclosure(rev, (*hid[:i + 1], h, *hid[i + 1:]))))
    out.append(("claim added", Disclosure((*rev, Claim("zzzz-extra", "x", bytes(16))), hid)))
    out.append(("hidden claim added", Disclosure(rev, (*hid, HiddenClaim("zzzz-extra", bytes(32))))))
    return out


@settings(max_examples=60)
@given(st.dictionaries(claim_keys, json_values, min_size=1, max_size=10), st.data())
def test_tampered_disclosures_fail(values: dict[str, Any], data: Any) -> None:
    doc = doc_of(values)
    reveal = data.draw(st.lists(st.sampled_from(sorted(values)), unique=True))
    d = doc.disclose(reveal)
    for what, bad in tampered_variants(d):
        assert bad.verify(doc.commitment) != [], what


def test_the_number_of_claims_is_bound_by_the_commitment() -> None:
    """A holder cannot make a record look smaller or larger: every claim is accounted for."""
    for n in range(1, 10):
        doc = doc_of({f"k{i}": i for i in range(n)})
        d = doc.disclose([doc.claims[0].key])
        for k in range(len(d.hidden)):
            assert Disclosure(d.revealed, d.hidden[:k] + d.hidden[k + 1:]).verify(doc.commitment) != []


# --- disclosure JSON --------------------------------------------------------------------------------------

def disclosure_json() -> dict[str, Any]:
    doc = doc_of({"degree": "BSc", "year": 2009, "grade": "first", "honours": "yes"})
    return doc.disclose(["degree", "year"]).to_json()


@pytest.mark.parametrize("change", [
    lambda j: j.update(extra=1),
    lambda j: j.pop("hidden"),
    lambda j: j.pop("revealed"),
    lambda j: j.update(revealed={}),
    lambda j: j.update(hidden="x"),
    lambda j: j.update(revealed=[], hidden=[]),
    lambda j: j["revealed"][0].update(extra=1),
    lambda j: j["revealed"][0].pop("salt"),
    lambda j: j["revealed"][0].update(salt=j["revealed"][0]["salt"].upper()),
    lambda j: j["revealed"][0].update(salt=j["revealed"][0]["salt"][:-2]),
    lambda j: j["revealed"][0].update(key=""),
    lambda j: j["revealed"][0].update(key=5),
    lambda j: j["revealed"][0].update(value=1.5),
    lambda j: j["revealed"][0].update(value=2**60),
    lambda j: j["revealed"].reverse(),
    lambda j: j["hidden"].reverse(),
    lambda j: j["hidden"][0].update(digest=j["hidden"][0]["digest"][:-2]),
    lambda j: j["hidden"][0].update(digest=j["hidden"][0]["digest"].upper()),
    lambda j: j["hidden"][0].update(key=""),
    lambda j: j["hidden"][0].update(value="x"),
    lambda j: j["hidden"][0].pop("digest"),
])
def test_disclosure_json_is_strict(change: Any) -> None:
    j = disclosure_json()
    assert Disclosure.from_json(json.loads(json.dumps(j))).to_json() == j
    change(j)
    with pytest.raises(DecodeError):
        Disclosure.from_json(j)


# --- record documents and files --------------------------------------------------------------------------

def test_record_document_checks() -> None:
    claims = make_claims({"a": 1, "b": 2})
    base = dict(chain_id="ler-test", record_id=bytes(16), issuer=ISSUER, holder=HOLDER, rtype="degree",
                expires=None, claims=claims)
    RecordDocument(**base)  # type: ignore[arg-type]
    for change in [dict(claims=tuple(reversed(claims))), dict(claims=()), dict(record_id=bytes(15)),
                   dict(rtype="Degree"), dict(chain_id="bad chain")]:
        with pytest.raises(DecodeError):
            RecordDocument(**{**base, **change})  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        RecordDocument(**{**base, "claims": make_claims({f"k{i:03d}": i for i in range(MAX_CLAIMS)}) +
                          make_claims({"zzz": 1})})  # type: ignore[arg-type]


@given(claim_maps, st.none() | st.integers(0, 2**53), st.booleans())
@settings(max_examples=40)
def test_record_file_round_trip(tmp_path_factory: pytest.TempPathFactory, values: dict[str, Any],
                                expires: int | None, anchored: bool) -> None:
    doc = doc_of(values, expires=expires, record_id=os.urandom(16),
                 anchor_tx=os.urandom(32) if anchored else None)
    path = tmp_path_factory.mktemp("rec") / "record.json"
    doc.save(path)
    back = RecordDocument.load(path)
    assert back == doc and back.commitment == doc.commitment
    assert RecordDocument.from_json(json.loads(json.dumps(doc.to_json()))) == doc


def saved(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    doc = doc_of({"degree": "BSc Physics", "year": 2009, "grade": "first"}, anchor_tx=bytes(32))
    path = tmp_path / "record.json"
    doc.save(path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("change", [
    lambda j: j["claims"][0].update(value="MSc Physics"),
    lambda j: j["claims"][1].update(value=2008),
    lambda j: j["claims"][0].update(salt=("00" if j["claims"][0]["salt"][:2] != "00" else "11")
                                    + j["claims"][0]["salt"][2:]),
    lambda j: j["claims"][0].update(key="diploma"),
    lambda j: j["claims"].pop(),
    lambda j: j["claims"].append({"key": "honours", "value": True, "salt": "00" * 16}),
    lambda j: j["claims"].append(dict(j["claims"][0])),          # a claim twice
    lambda j: j["claims"].reverse(),
    lambda j: j.update(commitment="00" * 32),
    lambda j: j.update(commitment=j["commitment"].upper()),
    lambda j: j.update(format="ler-record/2"),
    lambda j: j.update(extra=1),
    lambda j: j.pop("holder"),
    lambda j: j.update(record_id="00" * 15),
    lambda j: j.update(record_id=j["record_id"].upper()),
    lambda j: j.update(anchor_tx="zz"),
    lambda j: j.update(expires="never"),
    lambda j: j.update(expires=True),
    lambda j: j.update(type="Degree"),
    lambda j: j.update(chain_id=""),
    lambda j: j.update(claims="none"),
    lambda j: j["claims"][0].update(value=0.5),
])
def test_altered_record_file_is_refused(tmp_path: Path, change: Any) -> None:
    path, obj = saved(tmp_path)
    assert RecordDocument.load(path).to_json() == obj
    change(obj)
    path.write_text(json.dumps(obj))
    with pytest.raises(DecodeError):
        RecordDocument.load(path)


@pytest.mark.parametrize("content", [b"", b"not json", b"\xff", b"[]", b"null", b"[" * 100_000, b'{"a":' * 50_000])
def test_garbage_record_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "record.json"
    path.write_bytes(content)
    with pytest.raises(DecodeError):
        RecordDocument.load(path)
    with pytest.raises(DecodeError):
        RecordDocument.load(tmp_path / "absent.json")
