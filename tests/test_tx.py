"""Signed transactions (ler.tx): the five types, their encodings, what the signature covers, and the
syntax every body must have before a ledger rule ever sees it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler import codec, keys
from ler.errors import DecodeError
from ler.keys import KeyPair, sha256
from ler.tx import (
    ACTION_KINDS,
    MAX_TX_BYTES,
    Action,
    GovVote,
    IssuerRotate,
    RecordAnchor,
    RecordEndorse,
    RecordRevoke,
    Tx,
    check_chain_id,
    check_record_type,
    rotation_body,
    scope_covers,
    sign_tx,
)

CHAIN = "ler-test"
AUTH = KeyPair(bytes([1]) * 32)
ISSUER = KeyPair(bytes([2]) * 32)
HOLDER = KeyPair(bytes([3]) * 32)
NEW = KeyPair(bytes([4]) * 32)

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
segments = st.builds(lambda a, b: a + b, st.sampled_from(_ALNUM), st.text(alphabet=_ALNUM + "-_", max_size=39))
rtypes = st.lists(segments, min_size=1, max_size=8).map(".".join)
dids = st.sampled_from([AUTH.did, ISSUER.did, HOLDER.did, NEW.did])


def bodies() -> dict[str, Any]:
    """One body of each of the five types."""
    return {
        "gov.vote": GovVote(Action(kind="accredit", subject=ISSUER.did, name="Example University",
                                   scopes=("course", "degree"), until=1_900_000_000_000)),
        "issuer.rotate": rotation_body(ISSUER.did, CHAIN, NEW),
        "record.anchor": RecordAnchor(record=bytes(range(16)), issuer=ISSUER.did, holder=HOLDER.did,
                                      rtype="degree.bachelor", commitment=bytes(range(32)), expires=None),
        "record.revoke": RecordRevoke(record=bytes(range(16)), reason="issued in error"),
        "record.endorse": RecordEndorse(record=bytes(range(16)), digest=sha256(b"statement")),
    }


def signed(kind: str, nonce: int = 7) -> Tx:
    key = AUTH if kind == "gov.vote" else ISSUER
    return sign_tx(key, CHAIN, bodies()[kind], nonce=nonce)


TYPES = list(bodies())

actions = st.one_of(
    st.builds(lambda s, n, sc, u: Action("accredit", s, n, tuple(sorted(set(sc))), u), dids,
              st.text(min_size=1, max_size=20), st.lists(rtypes, min_size=1, max_size=4),
              st.none() | st.integers(0, 2**64 - 1)),
    st.builds(lambda s, n: Action("add_authority", s, n, (), None), dids, st.text(min_size=1, max_size=20)),
    st.builds(lambda k, s: Action(k, s, None, (), None),
              st.sampled_from(["suspend", "reinstate", "withdraw", "remove_authority"]), dids),
)
any_body = st.one_of(
    st.builds(GovVote, actions),
    st.builds(lambda k: rotation_body(ISSUER.did, CHAIN, k),
              st.binary(min_size=32, max_size=32).map(KeyPair)),
    st.builds(RecordAnchor, st.binary(min_size=16, max_size=16), dids, dids, rtypes,
              st.binary(min_size=32, max_size=32), st.none() | st.integers(0, 2**64 - 1)),
    st.builds(RecordRevoke, st.binary(min_size=16, max_size=16),
              st.text(min_size=1, max_size=50).filter(lambda r: r.strip() != "")),
    st.builds(RecordEndorse, st.binary(min_size=16, max_size=16), st.none() | st.binary(min_size=32, max_size=32)),
)


# --- round trips ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TYPES)
def test_every_type_round_trips(kind: str) -> None:
    tx = signed(kind)
    assert tx.type == kind and type(tx.body).TYPE == kind
    assert tx.signature_valid()
    assert tx.tx_id == sha256(tx.raw)
    assert tx.raw == codec.encode(tx.to_obj())
    assert Tx.decode(tx.raw) == tx
    assert Tx.from_obj(codec.decode(tx.raw)) == tx
    text = json.dumps(tx.to_json())
    back = Tx.from_json(json.loads(text))
    assert back == tx and back.raw == tx.raw
    j = tx.to_json()
    assert j["id"] == tx.tx_id.hex() and j["signer"] == tx.signer_did and j["sig"] == tx.sig.hex()
    del j["id"]  # the id is optional in JSON, and checked when present
    assert Tx.from_json(j) == tx


@settings(max_examples=80)
@given(any_body, st.integers(0, 2**64 - 1), st.sampled_from([AUTH, ISSUER, HOLDER]))
def test_any_body_round_trips(body: Any, nonce: int, key: KeyPair) -> None:
    tx = sign_tx(key, CHAIN, body, nonce=nonce)
    assert tx.signature_valid() and tx.signer == key.public_key and tx.nonce == nonce
    assert Tx.decode(tx.raw) == tx
    assert Tx.from_json(json.loads(json.dumps(tx.to_json()))) == tx
    assert tx.tx_id == sha256(tx.raw)


def test_random_nonce_makes_distinct_transactions() -> None:
    body = bodies()["record.revoke"]
    a, b = sign_tx(ISSUER, CHAIN, body), sign_tx(ISSUER, CHAIN, body)
    assert a.tx_id != b.tx_id and 0 <= a.nonce < 2**63
    assert sign_tx(ISSUER, CHAIN, body, nonce=1).tx_id == sign_tx(ISSUER, CHAIN, body, nonce=1).tx_id


def test_rotation_body_proves_possession_of_the_new_key() -> None:
    body = rotation_body(ISSUER.did, CHAIN, NEW)
    payload = IssuerRotate.possession_payload(ISSUER.did, NEW.public_key)
    assert body.new_key == NEW.public_key
    assert keys.verify_signed(NEW.public_key, "rotate", CHAIN, payload, body.new_key_sig)
    assert not keys.verify_signed(NEW.public_key, "rotate", "other-chain", payload, body.new_key_sig)
    assert not keys.verify_signed(NEW.public_key, "tx", CHAIN, payload, body.new_key_sig)


# --- what the signature and the id cover ---------------------------------------------------------------

def outcome(raw: bytes, original: Tx) -> str:
    try:
        tx = Tx.decode(raw)
    except DecodeError:
        return "refused"
    assert tx.tx_id != original.tx_id  # a different raw is a different id, always
    return "valid" if tx.signature_valid() else "bad signature"


@pytest.mark.parametrize("kind", TYPES)
def test_every_single_byte_change_is_caught(kind: str) -> None:
    tx = signed(kind)
    for pos in range(len(tx.raw)):
        for mask in (0x01, 0x80, 0x20):
            raw = bytearray(tx.raw)
            raw[pos] ^= mask
            assert outcome(bytes(raw), tx) != "valid", (pos, mask)


@settings(max_examples=300)
@given(st.sampled_from(TYPES), st.data())
def test_any_single_byte_replacement_is_caught(kind: str, data: Any) -> None:
    tx = signed(kind)
    pos = data.draw(st.integers(0, len(tx.raw) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != tx.raw[pos]))
    raw = bytearray(tx.raw)
    raw[pos] = value
    assert outcome(bytes(raw), tx) != "valid"


@pytest.mark.parametrize("kind", TYPES)
def test_signature_covers_every_field(kind: str) -> None:
    tx = signed(kind)
    obj = codec.decode(tx.raw)
    changes: list[dict[str, Any]] = [
        {"chain": "other-chain"}, {"chain": CHAIN + "x"}, {"nonce": tx.nonce + 1},
        {"signer": HOLDER.public_key},
    ]
    for change in changes:
        relabelled = Tx.from_obj({**obj, **change})
        assert not relabelled.signature_valid(), change
        assert relabelled.tx_id != tx.tx_id
    # a body field changed
    body = dict(obj["body"])
    for k, v in body.items():
        if isinstance(v, bytes):
            body[k] = bytes([v[0] ^ 1]) + v[1:]
            break
    else:
        body["action"] = {**body["action"], "name": "Other"}
    assert not Tx.from_obj({**obj, "body": body}).signature_valid()


def test_a_signature_for_one_chain_is_worthless_on_another() -> None:
    for kind in TYPES:
        tx = signed(kind)
        other = sign_tx(AUTH if kind == "gov.vote" else ISSUER, "other-chain", tx.body, nonce=tx.nonce)
        assert other.signature_valid()
        assert other.sig != tx.sig
        moved = Tx.from_obj({**codec.decode(tx.raw), "chain": "other-chain"})
        assert not moved.signature_valid()


# --- refusals --------------------------------------------------------------------------------------------

def obj_of(kind: str) -> dict[str, Any]:
    return dict(codec.decode(signed(kind).raw))


@pytest.mark.parametrize("kind", TYPES)
def test_unknown_missing_and_extra_fields(kind: str) -> None:
    base = obj_of(kind)
    with pytest.raises(DecodeError, match="unknown field"):
        Tx.from_obj({**base, "memo": "hi"})
    with pytest.raises(DecodeError, match="unknown field"):
        Tx.from_obj({**base, "body": {**base["body"], "memo": "hi"}})
    for field in base:
        with pytest.raises(DecodeError, match="missing field"):
            Tx.from_obj({k: v for k, v in base.items() if k != field})
    for field in base["body"]:
        if base["body"][field] is None:
            continue
        with pytest.raises(DecodeError, match="missing field"):
            Tx.from_obj({**base, "body": {k: v for k, v in base["body"].items() if k != field}})
    with pytest.raises(DecodeError):
        Tx.decode(codec.encode({**base, "memo": "hi"}))


@pytest.mark.parametrize("bad_type", ["record.delete", "gov.Vote", "", "record.anchor ", 1, None, b"gov.vote"])
def test_unknown_type_is_refused(bad_type: Any) -> None:
    with pytest.raises(DecodeError, match="type"):
        Tx.from_obj({**obj_of("record.revoke"), "type": bad_type})


def test_body_must_match_the_type() -> None:
    for kind in TYPES:
        for other in TYPES:
            if other == kind:
                continue
            with pytest.raises(DecodeError):
                Tx.from_obj({**obj_of(kind), "type": other})


@pytest.mark.parametrize(("field", "bad"), [
    ("chain", ""), ("chain", "has space"), ("chain", "x" * 65), ("chain", ".lead"), ("chain", "ünï"),
    ("chain", 5), ("chain", b"ler-test"), ("chain", None),
    ("signer", bytes(31)), ("signer", bytes(33)), ("signer", "did:key:z6Mk"), ("signer", None),
    ("nonce", -1), ("nonce", True), ("nonce", "1"), ("nonce", None),
    ("sig", bytes(63)), ("sig", bytes(65)), ("sig", "00" * 64), ("sig", None),
    ("body", None), ("body", []), ("body", b""),
])
def test_malformed_envelope_fields(field: str, bad: Any) -> None:
    with pytest.raises(DecodeError):
        Tx.from_obj({**obj_of("record.endorse"), field: bad})


def test_oversize_is_refused() -> None:
    # An accredit action with 16 scopes of 8 long segments encodes to more than MAX_TX_BYTES.
    seg = "s" * 40
    scopes = tuple(sorted(f"{i:02d}{seg[2:]}." + ".".join([seg] * 7) for i in range(16)))
    action = Action("accredit", ISSUER.did, "n" * 200, scopes, None)
    assert len(action.encode()) > MAX_TX_BYTES
    with pytest.raises(DecodeError, match="exceeds"):
        sign_tx(AUTH, CHAIN, GovVote(action), nonce=1)
    tx = signed("record.revoke")
    with pytest.raises(DecodeError):
        Tx.decode(tx.raw + bytes(MAX_TX_BYTES))  # over the size limit before anything is parsed
    with pytest.raises(DecodeError):
        Tx.decode(tx.raw + b"\x00")  # trailing byte


@given(st.binary(max_size=300))
def test_random_bytes_never_decode_to_a_valid_transaction(data: bytes) -> None:
    try:
        tx = Tx.decode(data)
    except DecodeError:
        return
    assert not tx.signature_valid()


# --- JSON form -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    lambda j: j.update(id="00" * 32),
    lambda j: j.update(id=j["id"].upper()),
    lambda j: j.update(sig=j["sig"].upper()),
    lambda j: j.update(sig=" " + j["sig"]),
    lambda j: j.update(sig=j["sig"][:64] + " " + j["sig"][64:]),
    lambda j: j.update(sig=j["sig"][:-1]),
    lambda j: j.update(sig=j["sig"][:-2]),
    lambda j: j.update(sig=None),
    lambda j: j.update(signer=HOLDER.public_key.hex()),
    lambda j: j.update(signer=j["signer"] + " "),
    lambda j: j.update(signer=None),
    lambda j: j["body"].update(record=j["body"]["record"].upper()),
    lambda j: j["body"].update(record=j["body"]["record"] + "00"),
    lambda j: j["body"].update(extra=1),
    lambda j: j.update(extra=1),
    lambda j: j.pop("nonce"),
    lambda j: j.pop("body"),
    lambda j: j.update(type="record.delete"),
    lambda j: j.update(nonce="7"),
])
def test_json_form_is_strict(change: Any) -> None:
    j = json.loads(json.dumps(signed("record.revoke").to_json()))
    change(j)
    with pytest.raises(DecodeError):
        Tx.from_json(j)


@pytest.mark.parametrize("bad", [None, [], "tx", 5])
def test_json_form_must_be_an_object(bad: Any) -> None:
    with pytest.raises(DecodeError):
        Tx.from_json(bad)


# --- governance actions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ACTION_KINDS)
def test_action_kinds_required_and_forbidden_fields(kind: str) -> None:
    s = ISSUER.did
    combos: dict[tuple[bool, bool, bool], Action | None] = {}
    for has_name in (False, True):
        for has_scopes in (False, True):
            for has_until in (False, True):
                args = (kind, s, "Name" if has_name else None, ("degree",) if has_scopes else (),
                        5 if has_until else None)
                try:
                    combos[(has_name, has_scopes, has_until)] = Action(*args)
                except DecodeError:
                    combos[(has_name, has_scopes, has_until)] = None
    accepted = {k for k, v in combos.items() if v is not None}
    if kind == "accredit":
        assert accepted == {(True, True, False), (True, True, True)}
    elif kind == "add_authority":
        assert accepted == {(True, False, False)}
    else:
        assert accepted == {(False, False, False)}


def test_action_field_checks() -> None:
    good = Action("accredit", ISSUER.did, "Uni", ("course", "degree"), None)
    assert Action.from_obj(good.to_obj()) == good
    for bad in [
        dict(kind="accredit", name="", scopes=("degree",)),               # empty name
        dict(kind="accredit", name="Uni", scopes=("degree", "course")),   # unsorted
        dict(kind="accredit", name="Uni", scopes=("degree", "degree")),   # repeated
        dict(kind="accredit", name="Uni", scopes=("Degree",)),            # bad scope syntax
        dict(kind="accredit", name="Uni", scopes=("degree.",)),
        dict(kind="add_authority", name=""),
        dict(kind="approve"), dict(kind=""), dict(kind="Accredit", name="Uni", scopes=("degree",)),
        dict(kind="suspend", subject="did:key:zBad"), dict(kind="suspend", subject="did:web:example.org"),
        dict(kind="suspend", subject=""),
    ]:
        fields = {"subject": ISSUER.did, "name": None, "scopes": (), "until": None, **bad}
        with pytest.raises(DecodeError):
            Action(**fields)
        obj = {**fields, "scopes": list(fields["scopes"])}
        with pytest.raises(DecodeError):
            Action.from_obj(obj)
    with pytest.raises(DecodeError):
        Action.from_obj({**good.to_obj(), "scopes": [f"s{i:02d}" for i in range(17)]})  # more than 16


@given(actions)
def test_action_id_is_the_hash_of_its_encoding(action: Action) -> None:
    assert action.action_id == sha256(action.encode())
    assert Action.decode(action.encode()) == action


@given(st.lists(rtypes, min_size=2, max_size=5, unique=True))
def test_scopes_must_be_sorted_and_distinct(scopes: list[str]) -> None:
    ordered = tuple(sorted(scopes))
    assert Action("accredit", ISSUER.did, "U", ordered, None).scopes == ordered
    with pytest.raises(DecodeError):
        Action("accredit", ISSUER.did, "U", tuple(reversed(ordered)), None)
    with pytest.raises(DecodeError):
        Action("accredit", ISSUER.did, "U", tuple(sorted([*scopes, scopes[0]])), None)


# --- bodies ----------------------------------------------------------------------------------------------

def test_body_field_checks() -> None:
    r16, h32 = bytes(16), bytes(32)
    with pytest.raises(DecodeError):
        RecordAnchor(r16, "did:key:zBad", HOLDER.did, "degree", h32, None)
    with pytest.raises(DecodeError):
        RecordAnchor(r16, ISSUER.did, "did:example:123", "degree", h32, None)
    with pytest.raises(DecodeError):
        RecordAnchor(r16, ISSUER.did, HOLDER.did, "Degree", h32, None)
    with pytest.raises(DecodeError):
        IssuerRotate("not a did", bytes(32), bytes(64))
    for reason in ["", " ", "\n\t"]:
        with pytest.raises(DecodeError):
            RecordRevoke(r16, reason)
    anchor_obj = RecordAnchor(r16, ISSUER.did, HOLDER.did, "degree", h32, None).to_obj()
    for field, bad in [("record", bytes(15)), ("record", bytes(17)), ("commitment", bytes(31)),
                       ("expires", -1), ("expires", "soon"), ("rtype", "x" * 201), ("issuer", "d" * 65)]:
        with pytest.raises(DecodeError):
            RecordAnchor.from_obj({**anchor_obj, field: bad})
    with pytest.raises(DecodeError):
        RecordRevoke.from_obj({"record": r16, "reason": "r" * 201})
    assert RecordRevoke.from_obj({"record": r16, "reason": "r" * 200}).reason == "r" * 200
    with pytest.raises(DecodeError):
        RecordEndorse.from_obj({"record": r16, "digest": bytes(31)})
    assert RecordEndorse.from_obj({"record": r16, "digest": None}).digest is None


# --- record types, scopes and chain ids --------------------------------------------------------------------

def is_record_type(text: str) -> bool:
    """The record-type grammar, written out independently of the regular expression under test."""
    segments = text.split(".")
    if not 1 <= len(segments) <= 8:
        return False
    for seg in segments:
        if not 1 <= len(seg) <= 40 or seg[0] not in "abcdefghijklmnopqrstuvwxyz0123456789":
            return False
        if any(ch not in "abcdefghijklmnopqrstuvwxyz0123456789-_" for ch in seg):
            return False
    return True


@pytest.mark.parametrize("good", ["degree", "degree.bachelor", "a", "0", "x1_-", "a.b.c.d.e.f.g.h", "d" * 40,
                                  "military-training.basic_2"])
def test_valid_record_types(good: str) -> None:
    check_record_type(good)
    assert is_record_type(good)


@pytest.mark.parametrize("bad", ["", ".", "Degree", "degree.", ".degree", "degree..x", "-degree", "_x", "degree.-x",
                                 "d" * 41, "a.b.c.d.e.f.g.h.i", "degree bachelor", "dégree", "degree/x", "degree\n",
                                 " degree", "degree.Bachelor", "\u0661", None, 5, b"degree"])
def test_invalid_record_types(bad: Any) -> None:
    with pytest.raises(DecodeError):
        check_record_type(bad)


@settings(max_examples=400)
@given(st.text(alphabet="ab0.-_Z é", max_size=20) | rtypes)
def test_record_type_grammar(text: str) -> None:
    try:
        check_record_type(text)
        accepted = True
    except DecodeError:
        accepted = False
    assert accepted == is_record_type(text)


@pytest.mark.parametrize(("scope", "rtype", "covers"), [
    ("degree", "degree", True), ("degree", "degree.bachelor", True), ("degree", "degree.bachelor.hons", True),
    ("degree.bachelor", "degree.bachelor.hons", True),
    ("degree", "degrees", False), ("degree", "deg", False), ("degree", "degree-x", False),
    ("degree", "degree_x", False), ("degree", "higher.degree", False), ("degree.bachelor", "degree", False),
    ("degree.bachelor", "degree.bachelors", False), ("degree", "degreebachelor", False),
])
def test_scope_covers(scope: str, rtype: str, covers: bool) -> None:
    assert scope_covers(scope, rtype) is covers


@given(rtypes, rtypes)
def test_scope_covers_is_a_segment_prefix(scope: str, rtype: str) -> None:
    s, r = scope.split("."), rtype.split(".")
    assert scope_covers(scope, rtype) == (r[:len(s)] == s)
    assert scope_covers(rtype, rtype)


@pytest.mark.parametrize("good", ["ler-test", "a", "A.b_c-1", "x" * 64, "0"])
def test_valid_chain_ids(good: str) -> None:
    check_chain_id(good)


@pytest.mark.parametrize("bad", ["", "x" * 65, "-lead", ".lead", "_lead", "has space", "ünï", "a/b", "a\n", None, 1])
def test_invalid_chain_ids(bad: Any) -> None:
    with pytest.raises(DecodeError):
        check_chain_id(bad)
    with pytest.raises(DecodeError):
        sign_tx(ISSUER, bad, bodies()["record.revoke"], nonce=1)
