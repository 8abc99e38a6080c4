"""Proof bundles end to end: built from a real LevelDB chain (storage.bundles), checked offline with nothing but
the genesis (ler.bundle.verify_bundle). Every verdict, and every way of tampering we can think of."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from helpers_chain import CHAIN, T0, ChainBuilder, fixed_key, make_genesis, new_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ler.block import Genesis
from ler.bundle import (
    ProofBundle,
    StatusProof,
    VerificationResult,
    check_extends,
    refresh_bundle,
    verify_bundle,
    verify_refreshed,
)
from ler.dates import utc_text
from ler.errors import ProofError
from ler.keys import KeyPair, sha256
from ler.record import RecordDocument
from ler.tx import Action, GovVote, RecordEndorse, RecordRevoke, rotation_body, sign_tx
from ler.wire import b64url
from storage.bundles import BundleError, build_bundle, build_status

AUTH, AUTH2 = fixed_key(1), fixed_key(2)
UNI, UNI2 = fixed_key(3), fixed_key(4)     # genesis issuer for "degree", and the key it rotates to
COLLEGE = fixed_key(5)                      # genesis issuer for "course", suspended later
HOLDER, STRANGER, ENDORSER = fixed_key(6), fixed_key(7), fixed_key(8)
NOW = T0 + 100_000                          # after every block; verification time for the tests


@dataclass
class World:
    """One chain with a record of every kind, and the heights where things happened."""

    genesis: Genesis
    chain: ChainBuilder
    docs: dict[str, RecordDocument] = field(default_factory=dict)
    heights: dict[str, int] = field(default_factory=dict)

    def bundle(self, *names: str, reveal: tuple[str, ...] = ("degree",), head: int | None = None) -> ProofBundle:
        items = []
        for n in names:
            doc = self.docs[n]
            shown = [k for k in reveal if any(c.key == k for c in doc.claims)]
            items.append((doc.record_id, doc.disclose(shown)))
        return build_bundle(self.chain.store, items, head)

    def raw(self, *names: str, **kw: Any) -> bytes:
        return self.bundle(*names, **kw).dumps()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    genesis = make_genesis([AUTH], [(UNI, ("degree",)), (COLLEGE, ("course",))])
    chain = ChainBuilder(tmp_path_factory.mktemp("bundle") / "db", genesis, [AUTH])
    w = World(genesis, chain)

    def rec(name: str, signer: KeyPair, holder: KeyPair = HOLDER, **kw: Any) -> Any:
        doc, tx = new_record(signer, holder.did, **kw)
        w.docs[name] = doc
        return tx

    # block 1: records of every standing
    b1 = [rec("valid", UNI), rec("revoked", UNI), rec("expiring", UNI, expires=T0 + 5_000),
          rec("self", HOLDER, rtype="skill.python"), rec("unaccredited", STRANGER),
          rec("out-of-scope", UNI, rtype="course.physics"), rec("college", COLLEGE, rtype="course.physics")]
    chain.commit(b1)
    # block 2: an endorsement, and the university rotates its key (effective from block 3)
    chain.commit([sign_tx(ENDORSER, CHAIN, RecordEndorse(w.docs["valid"].record_id, sha256(b"a statement"))),
                  sign_tx(UNI, CHAIN, rotation_body(UNI.did, CHAIN, UNI2))])
    # block 3: a record signed with the new key
    chain.commit([rec("rotated", UNI2, issuer_did=UNI.did)])
    # block 4: a revocation
    chain.commit([sign_tx(UNI2, CHAIN, RecordRevoke(w.docs["revoked"].record_id, "issued in error"))])
    w.heights["revoked"] = 4
    # block 5: governance: the college is suspended; a second authority joins (validators change at height 7).
    # In this order: the new authority counts in the ledger at once, so a later vote would need it too.
    chain.commit([sign_tx(AUTH, CHAIN, GovVote(Action("suspend", COLLEGE.did, None, (), None))),
                  sign_tx(AUTH, CHAIN, GovVote(Action("add_authority", AUTH2.did, "authority 2", (), None)))])
    chain.add_validator_key(AUTH2)
    chain.commit([])  # block 6: still signed by AUTH alone; announces the new set
    chain.commit([])  # block 7: signed by both
    assert chain.store.validators(7) == tuple(sorted([AUTH.public_key, AUTH2.public_key]))
    yield w
    chain.close()


VERDICTS = ("tampered", "wrong-network", "refresh-failed", "revoked", "stale", "expired", "unaccredited",
            "self-asserted", "valid")


def verify(data: bytes | str | ProofBundle, genesis: Genesis, now: int = NOW,
           max_age_ms: int | None = None) -> VerificationResult:
    result = verify_bundle(data, genesis, now, max_age_ms)
    assert result.verdict in VERDICTS
    json.dumps(result.to_json())  # the report always serialises
    return result


# --- verdicts -------------------------------------------------------------------------------------------

def test_valid_accredited_record(world: World) -> None:
    raw = world.raw("valid", reveal=("degree", "grade"))
    assert raw == rfc8785.dumps(json.loads(raw))
    r = verify(raw, world.genesis)
    assert r.verdict == "valid" and r.ok
    assert all(c.ok for c in r.checks), [c.detail for c in r.checks if not c.ok]
    assert (r.chain_id, r.head_height) == (CHAIN, 7)
    rep = r.records[0]
    doc = world.docs["valid"]
    assert rep.record_id == doc.record_id.hex() and rep.standing == "accredited"
    assert (rep.issuer, rep.holder, rep.type, rep.anchored_height) == (UNI.did, HOLDER.did, "degree.bachelor", 1)
    assert rep.issuer_name == "issuer 0" and rep.issuer_status_now == "active"
    assert rep.disclosed == {"degree": doc.claim("degree").value, "grade": doc.claim("grade").value}
    assert rep.hidden == 2 and rep.revoked is None
    # the bundle carries the validator-set change from genesis to the head
    assert len(json.loads(raw)["transitions"]) == 1
    # a trailing newline is allowed, and a parsed bundle verifies the same
    assert verify(raw + b"\n", world.genesis).verdict == "valid"
    assert verify(raw.decode(), world.genesis).verdict == "valid"
    assert verify(ProofBundle.loads(raw), world.genesis).verdict == "valid"


def test_bundle_at_the_anchoring_height(world: World) -> None:
    raw = world.raw("valid", head=1)
    r = verify(raw, world.genesis)
    assert r.verdict == "valid" and r.head_height == 1
    assert json.loads(raw)["records"][0]["anchor"]["history_path"] == []
    # the anchoring block is the head: no history path may ride along, and no newer anchor fits
    junk = edited(raw, lambda o: o["records"][0]["anchor"].update(history_path=[b64url(bytes(32))]))
    assert verify(junk, world.genesis).verdict == "tampered"
    newer = json.loads(world.raw("rotated"))["records"][0]
    spliced = edited(raw, lambda o: o["records"][0].update(anchor=newer["anchor"], record_id=newer["record_id"],
                                                           disclosure=newer["disclosure"]))
    assert verify(spliced, world.genesis).verdict == "tampered"


def test_revoked(world: World) -> None:
    r = verify(world.raw("revoked"), world.genesis)
    assert r.verdict == "revoked"
    assert r.records[0].revoked == {"height": world.heights["revoked"], "reason": "issued in error"}
    assert r.records[0].standing == "accredited"


def test_a_bundle_speaks_as_of_its_head(world: World) -> None:
    # made before the revocation (head 3): still valid as of block 3, and it says so through head_height
    old = world.raw("revoked", head=3)
    r = verify(old, world.genesis)
    assert r.verdict == "valid" and r.head_height == 3 and r.records[0].revoked is None
    assert verify(world.raw("revoked"), world.genesis).head_height == 7


def test_expired(world: World) -> None:
    raw = world.raw("expiring")
    r = verify(raw, world.genesis, now=NOW)
    assert r.verdict == "expired" and r.records[0].expires == T0 + 5_000
    assert verify(raw, world.genesis, now=T0 + 5_000).verdict == "valid"  # expires at, not before
    assert verify(raw, world.genesis, now=T0 + 5_001).verdict == "expired"


def test_self_asserted(world: World) -> None:
    r = verify(world.raw("self"), world.genesis)
    assert r.verdict == "self-asserted" and r.records[0].standing == "self-asserted"
    assert r.records[0].issuer == r.records[0].holder == HOLDER.did


@pytest.mark.parametrize("name", ["unaccredited", "out-of-scope"])
def test_unaccredited(world: World, name: str) -> None:
    raw = world.raw(name)
    for now in (T0, NOW, 2**62):
        r = verify(raw, world.genesis, now=now)
        assert r.verdict == "unaccredited" and r.records[0].standing == "unaccredited"


def test_record_by_a_rotated_key(world: World) -> None:
    r = verify(world.raw("rotated"), world.genesis)
    assert r.verdict == "valid" and r.records[0].issuer == UNI.did and r.records[0].anchored_height == 3
    assert any(c.name == "issuer signature" and UNI2.did in c.detail for c in r.checks)


def test_records_issued_before_a_suspension_stay_valid(world: World) -> None:
    r = verify(world.raw("college", reveal=("degree",)), world.genesis)
    assert r.verdict == "valid" and r.records[0].issuer_status_now == "suspended"


def test_endorsements_show_the_endorser(world: World) -> None:
    r = verify(world.raw("valid"), world.genesis)
    assert r.records[0].endorsements == [{"endorser": ENDORSER.did, "height": 2,
                                          "digest": sha256(b"a statement").hex()}]
    assert r.verdict == "valid"
    before = verify(world.raw("valid", head=1), world.genesis)
    assert before.records[0].endorsements == []  # not endorsed yet at block 1


@pytest.mark.parametrize("copies", [2, 5])
def test_an_endorsement_repeated_is_tampered(world: World, copies: int) -> None:
    # One genuine endorsement proof shown N times must not pass as N endorsements: the ledger holds one
    # endorsement per endorser and record.
    obj = json.loads(world.raw("valid"))
    ends = obj["records"][0]["endorsements"]
    assert len(ends) == 1
    obj["records"][0]["endorsements"] = ends * copies
    r = verify(rfc8785.dumps(obj), world.genesis)
    assert r.verdict == "tampered" and r.records[0].verdict == "tampered"
    failed = [c for c in r.checks if not c.ok]
    assert len(failed) == 1 and failed[0].name == "record"
    assert f"the endorsement by {ENDORSER.did} appears more than once" in failed[0].detail
    assert not any(c.name == "endorsements" and c.ok for c in r.checks)


def test_a_refresh_that_repeats_an_endorsement_fails(world: World) -> None:
    old = world.bundle("valid", head=3)
    status = status_for(world, ("valid",), 3).document()
    status["records"][0]["endorsements"] *= 2
    res = refreshed(world, old, status)
    assert res.verdict == "refresh-failed"
    assert "appears more than once" in next(c for c in res.checks if c.name == "refresh").detail


@pytest.mark.parametrize(("names", "verdict"), [
    (("valid", "rotated"), "valid"),
    (("valid", "revoked"), "revoked"),
    (("self", "valid"), "self-asserted"),
    (("valid", "unaccredited", "self"), "unaccredited"),
    (("expiring", "unaccredited"), "expired"),
    (("revoked", "expiring"), "revoked"),
])
def test_stacked_bundle_worst_verdict_wins(world: World, names: tuple[str, ...], verdict: str) -> None:
    r = verify(world.raw(*names), world.genesis)
    assert r.verdict == verdict
    assert [x.record_id for x in r.records] == [world.docs[n].record_id.hex() for n in names]
    singles = [verify(world.raw(n), world.genesis).verdict for n in names]
    assert [x.verdict for x in r.records] == singles


def test_the_same_record_twice_is_refused(world: World) -> None:
    obj = json.loads(world.raw("valid"))
    obj["records"].append(copy.deepcopy(obj["records"][0]))
    r = verify(rfc8785.dumps(obj), world.genesis)
    assert r.verdict == "tampered" and r.records[1].verdict == "tampered"


def other_genesis(world: World, **changes: Any) -> Genesis:
    obj = world.genesis.to_json()
    obj.update(changes)
    return Genesis.from_json(obj)


@pytest.mark.parametrize("changes", [
    {"chain_id": "other-chain"},
    {"genesis_time": T0 + 1},                                   # same chain id, another genesis
    {"issuers": []},
])
def test_wrong_network(world: World, changes: dict[str, Any]) -> None:
    genesis = other_genesis(world, **changes)
    assert genesis.hash != world.genesis.hash
    for names in (("valid",), ("revoked", "self")):
        r = verify(world.raw(*names), genesis)
        assert r.verdict == "wrong-network" and all(x.verdict == "wrong-network" for x in r.records)
        detail = next(c.detail for c in r.checks if c.name == "network")
        if genesis.chain_id == CHAIN:  # same name, another network: the genesis hashes differ, and say so
            assert detail == (f"the bundle is for another network also named {CHAIN!r}: its genesis hash is "
                              f"{world.genesis.hash.hex()}, the genesis file's is {genesis.hash.hex()}")
        else:
            assert detail == f"the bundle is for chain {CHAIN!r}, the genesis file is for {genesis.chain_id!r}"


def relabel(raw: bytes, other: Genesis) -> bytes:
    def edit(o: dict[str, Any]) -> None:
        o.update(chain_id=other.chain_id, genesis_hash=b64url(other.hash))
    return edited(raw, edit)


def test_a_bundle_relabelled_for_another_chain_is_not_valid(world: World) -> None:
    # Claiming another network's chain id and genesis hash does not help: every signature names this chain.
    other = other_genesis(world, chain_id="other-chain")
    assert verify(relabel(world.raw("valid"), other), other).verdict == "tampered"


def test_a_bundle_relabelled_for_another_genesis_of_the_same_chain_id_is_not_valid(world: World) -> None:
    other = other_genesis(world, genesis_time=T0 + 1)
    assert other.chain_id == CHAIN and other.validators == world.genesis.validators
    assert verify(relabel(world.raw("valid"), other), other).verdict != "valid"


def test_build_bundle_refusals(world: World) -> None:
    with pytest.raises(BundleError):
        build_bundle(world.chain.store, [(bytes(16), world.docs["valid"].disclose([]))])
    with pytest.raises(BundleError):
        build_bundle(world.chain.store, [(world.docs["valid"].record_id, world.docs["valid"].disclose([]))], 99)
    with pytest.raises(BundleError):  # anchored at block 3, not there at block 2
        build_bundle(world.chain.store, [(world.docs["rotated"].record_id, world.docs["rotated"].disclose([]))], 2)


# --- tampering: bytes -----------------------------------------------------------------------------------

def test_every_byte_flipped_is_never_valid(world: World) -> None:
    raw = world.raw("valid", reveal=("degree", "grade"))
    assert verify(raw, world.genesis).verdict == "valid"
    found = []
    for pos in range(len(raw)):
        bit = pos % 7  # bits 0-6 in turn: an ASCII byte stays ASCII, the hard case for the parser
        m = bytearray(raw)
        m[pos] ^= 1 << bit
        verdict = verify_bundle(bytes(m), world.genesis, NOW).verdict
        if verdict == "valid":
            found.append((pos, bit, raw[max(0, pos - 40):pos + 5]))
    assert found == []


def test_high_bit_flips_are_never_valid(world: World) -> None:
    raw = world.raw("valid")
    for pos in range(0, len(raw), 3):
        m = bytearray(raw)
        m[pos] ^= 0x80
        assert verify_bundle(bytes(m), world.genesis, NOW).verdict == "tampered"


# --- tampering: meaning ---------------------------------------------------------------------------------

def edited(raw: bytes, edit: Any) -> bytes:
    obj = json.loads(raw)
    edit(obj)
    return rfc8785.dumps(obj)


def assert_not_valid(world: World, data: bytes) -> str:
    r = verify(data, world.genesis)
    assert r.verdict != "valid", [c.detail for c in r.checks]
    return r.verdict


def test_changed_claim_value(world: World) -> None:
    raw = world.raw("valid")

    def edit(o: dict[str, Any]) -> None:
        o["records"][0]["disclosure"]["revealed"][0]["value"] = "PhD Physics"
    assert assert_not_valid(world, edited(raw, edit)) == "tampered"


def test_changed_claim_key_salt_and_index(world: World) -> None:
    raw = world.raw("valid", reveal=("degree", "grade"))
    d = json.loads(raw)["records"][0]["disclosure"]
    claims, hidden = d["revealed"], d["hidden"]
    edits = [
        lambda o: o["records"][0]["disclosure"]["revealed"][0].update(key="diploma"),
        lambda o: o["records"][0]["disclosure"]["revealed"][0].update(salt=claims[1]["salt"]),
        lambda o: o["records"][0]["disclosure"]["revealed"].reverse(),
        lambda o: o["records"][0]["disclosure"]["revealed"].append(claims[0]),
        lambda o: o["records"][0]["disclosure"]["revealed"].pop(),
        lambda o: o["records"][0]["disclosure"]["hidden"].pop(),
        lambda o: o["records"][0]["disclosure"]["hidden"][0].update(key="zz-renamed"),
        lambda o: o["records"][0]["disclosure"]["hidden"][0].update(digest=claims[0]["salt"] * 2),
        lambda o: o["records"][0]["disclosure"]["hidden"].append({"key": "zzz", "digest": hidden[0]["digest"]}),
    ]
    for e in edits:
        assert assert_not_valid(world, edited(raw, e)) == "tampered"


def test_swapped_anchoring_header(world: World) -> None:
    raw = world.raw("valid")
    store = world.chain.store
    for h in (2, 3, 5, 6, 7):  # every other committed header, alone or with its own history path
        header = store.header(h)
        assert header is not None
        path = [b64url(p) for p in store.history_inclusion(h, 7)] if h < 7 else []

        def edit(o: dict[str, Any], header: Any = header) -> None:
            o["records"][0]["anchor"]["header"] = header.to_json(True)

        def edit_both(o: dict[str, Any], header: Any = header, path: list[str] = path) -> None:
            o["records"][0]["anchor"].update(header=header.to_json(True), history_path=path)
        assert assert_not_valid(world, edited(raw, edit)) == "tampered"
        assert assert_not_valid(world, edited(raw, edit_both)) == "tampered"


def test_dropped_or_altered_transition(world: World) -> None:
    raw = world.raw("valid")
    assert assert_not_valid(world, edited(raw, lambda o: o["transitions"].clear())) == "tampered"
    assert assert_not_valid(world, edited(raw, lambda o: o["transitions"][0]["validators"].pop())) == "tampered"
    assert assert_not_valid(world, edited(raw, lambda o: o["transitions"].append(o["transitions"][0]))) == "tampered"


def test_head_cert_with_fewer_signatures(world: World) -> None:
    raw = world.raw("valid")
    assert len(json.loads(raw)["head"]["cert"]["sigs"]) == 2
    for keep in (0, 1):
        def edit(o: dict[str, Any], keep: int = keep) -> None:
            sigs = o["head"]["cert"]["sigs"]
            o["head"]["cert"]["sigs"] = [sigs[keep]]
        assert assert_not_valid(world, edited(raw, edit)) == "tampered"
    assert assert_not_valid(world, edited(raw, lambda o: o["head"]["cert"].update(sigs=[]))) == "tampered"
    sigs = json.loads(raw)["head"]["cert"]["sigs"]
    dup = edited(raw, lambda o: o["head"]["cert"].update(sigs=[sigs[0], sigs[0]]))
    assert assert_not_valid(world, dup) == "tampered"
    swapped = edited(raw, lambda o: o["head"]["cert"].update(sigs=[
        {"validator": sigs[0]["validator"], "sig": sigs[1]["sig"]},
        {"validator": sigs[1]["validator"], "sig": sigs[0]["sig"]}]))
    assert assert_not_valid(world, swapped) == "tampered"


def test_head_swapped_for_an_older_committed_head(world: World) -> None:
    # An older, genuinely committed head with this bundle's proofs: the proofs are for the newer head.
    raw = world.raw("revoked")
    older = json.loads(world.raw("revoked", head=3))
    assert assert_not_valid(world, edited(raw, lambda o: o.update(head=older["head"]))) == "tampered"


def test_record_state_from_an_older_bundle(world: World) -> None:
    raw = world.raw("revoked")
    older = json.loads(world.raw("revoked", head=3))["records"][0]

    def edit(o: dict[str, Any]) -> None:
        o["records"][0]["record_state"] = older["record_state"]  # says "not revoked", for an older root
    assert assert_not_valid(world, edited(raw, edit)) == "tampered"


@pytest.mark.parametrize("part", ["disclosure", "anchor", "record_state", "issuer_then", "record_id"])
def test_spliced_from_another_record(world: World, part: str) -> None:
    raw = world.raw("valid")
    for other_name in ("rotated", "revoked", "unaccredited"):
        other = json.loads(world.raw(other_name))["records"][0]

        def edit(o: dict[str, Any], other: dict[str, Any] = other) -> None:
            o["records"][0][part] = other[part]
        spliced = edited(raw, edit)
        if spliced != raw:
            assert assert_not_valid(world, spliced) == "tampered", (part, other_name)


def test_an_endorsement_of_another_record_is_refused(world: World) -> None:
    raw = world.raw("rotated")
    theirs = json.loads(world.raw("valid"))["records"][0]["endorsements"]
    assert theirs
    assert assert_not_valid(world, edited(raw, lambda o: o["records"][0].update(endorsements=theirs))) == "tampered"


def test_changed_anchor_index(world: World) -> None:
    raw = world.raw("valid")
    for index in (1, 2, 6, 7, 100):
        def edit(o: dict[str, Any], index: int = index) -> None:
            o["records"][0]["anchor"]["index"] = index
        assert assert_not_valid(world, edited(raw, edit)) == "tampered"


def test_unaccredited_cannot_be_dressed_as_accredited(world: World) -> None:
    raw = world.raw("unaccredited")
    valid = json.loads(world.raw("valid"))["records"][0]
    for part in ("issuer_then", "issuer_now", "record_state"):
        def edit(o: dict[str, Any], part: str = part) -> None:
            o["records"][0][part] = valid[part]
        assert assert_not_valid(world, edited(raw, edit)) == "tampered"


def test_claims_cannot_be_dropped_from_a_disclosure(world: World) -> None:
    """Every claim of the record is accounted for: hiding one means naming it, never leaving it out."""
    raw = world.raw("valid")
    obj = json.loads(raw)
    n = len(obj["records"][0]["disclosure"]["hidden"])
    assert n >= 1
    assert_not_valid(world, edited(raw, lambda o: o["records"][0]["disclosure"]["hidden"].pop()))


def test_non_canonical_json_is_tampered(world: World) -> None:
    raw = world.raw("valid")
    obj = json.loads(raw)
    for text in (json.dumps(obj, indent=2), json.dumps(obj), json.dumps(obj, separators=(",", ":")),
                 json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n\n", " " + raw.decode(),
                 raw.decode().replace('"format":"ler-bundle/1"', '"format":"ler-bundle\\/1"'),
                 raw.decode() + "\r\n"):
        if text.encode() == raw or text.encode() == raw + b"\n":
            continue
        r = verify(text.encode(), world.genesis)
        assert r.verdict == "tampered" and not r.checks[0].ok and r.checks[0].name == "format"


# --- garbage never raises ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20)


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    r = verify_bundle(data, make_genesis([AUTH]), NOW)
    assert r.verdict == "tampered"


@settings(max_examples=150)
@given(json_values)
def test_random_json_never_raises(value: Any) -> None:
    r = verify_bundle(json.dumps(value).encode(), make_genesis([AUTH]), NOW)
    assert r.verdict == "tampered"


@pytest.mark.parametrize("data", [b"[" * 100_000, "\ud800", '{"format":"ler-bundle/1","x":"\\ud800"}', b"",
                                  b"\n", b"null", b'"' + b"a" * 1000 + b'"', b"1" * 5000, b"1e999999", b"-0"])
def test_pathological_input_never_raises(world: World, data: bytes | str) -> None:
    assert verify(data, world.genesis).verdict == "tampered"


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, (*prefix, i))
    return out


@pytest.fixture(scope="module")
def valid_obj(world: World) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(world.raw("valid", reveal=("degree", "grade")))
    return obj


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data(), json_values)
def test_any_replaced_part_never_raises_and_is_never_valid(world: World, valid_obj: dict[str, Any], data: Any,
                                                          value: Any) -> None:
    where = data.draw(st.sampled_from(paths(valid_obj)[1:]))
    obj = copy.deepcopy(valid_obj)
    node = obj
    for k in where[:-1]:
        node = node[k]
    if node[where[-1]] == value and type(node[where[-1]]) is type(value):
        return
    if where == ("records", 0, "endorsements") and value == []:
        return  # a holder may leave endorsements out; a bundle proves what it shows
    node[where[-1]] = value
    try:
        raw = rfc8785.dumps(obj)
    except Exception:
        raw = json.dumps(obj).encode()
    r = verify_bundle(raw, world.genesis, NOW)
    assert r.verdict != "valid", where


# --- freshness: stale verdict, bringing a head forward, refreshing from an untrusted node --------------------

def test_stale_when_the_head_is_older_than_max_age(world: World) -> None:
    raw = world.raw("valid", head=3)          # block 3 was made at T0 + 3 s
    age = NOW - (T0 + 3000)
    res = verify(raw, world.genesis, max_age_ms=age - 1)
    assert res.verdict == "stale" and not res.ok
    [fresh] = [c for c in res.checks if c.name == "fresh"]
    assert not fresh.ok and "1m 37s old (block 3" in fresh.detail
    assert res.head_height == 3 and res.head_time == T0 + 3000
    ok = verify(raw, world.genesis, max_age_ms=age)
    assert ok.verdict == "valid" and [c.ok for c in ok.checks if c.name == "fresh"] == [True]
    assert verify(raw, world.genesis).verdict == "valid"  # no max age: no freshness check
    assert not [c for c in verify(raw, world.genesis).checks if c.name == "fresh"]


@pytest.mark.parametrize(("name", "verdict"), [("revoked", "revoked"), ("expiring", "stale"),
                                               ("unaccredited", "stale"), ("self", "stale")])
def test_stale_ranks_right_after_revoked(world: World, name: str, verdict: str) -> None:
    assert verify(world.raw(name), world.genesis, max_age_ms=1000).verdict == verdict


def test_check_extends(world: World) -> None:
    store = world.chain.store
    h3, h7 = store.header(3), store.header(7)
    assert h3 is not None and h7 is not None
    proof, path = store.history_consistency(3, 7), store.history_inclusion(3, 7)
    assert check_extends(h3, h7, proof) and check_extends(h3, h7, proof, path)
    assert check_extends(h3, h3, []) and not check_extends(h3, h3, proof)
    assert not check_extends(h7, h3, proof)                         # backwards
    assert not check_extends(h3, h7, [])                            # no proof
    assert not check_extends(h3, h7, store.history_consistency(2, 7))  # a proof from another size
    assert not check_extends(h3, h7, proof, store.history_inclusion(2, 7))  # another block's path
    for i in range(len(proof)):                                    # every element, every bit position class
        for bit in (0, 7):
            bad = list(proof)
            bad[i] = bytes([bad[i][0] ^ (1 << bit)]) + bad[i][1:]
            assert not check_extends(h3, h7, bad)
    assert not check_extends(h3, h7, [*proof, proof[0]])            # extra element
    assert not check_extends(h3, h7, proof[:-1])                    # missing element
    h2 = store.header(2)
    assert h2 is not None and not check_extends(h2, h3, proof)      # headers not matching the proof


def status_for(world: World, names: tuple[str, ...], since: int, head: int | None = None) -> StatusProof:
    return build_status(world.chain.store, [world.docs[n].record_id for n in names], since, head)


def refreshed(world: World, bundle: ProofBundle, status: Any, max_age_ms: int | None = None) -> VerificationResult:
    res = verify_refreshed(bundle.dumps(), status, world.genesis, NOW, max_age_ms, "node-x")
    assert res.verdict in VERDICTS
    json.dumps(res.to_json())
    return res


def test_refresh_brings_a_bundle_forward_across_a_validator_change(world: World) -> None:
    old = world.bundle("valid", "rotated", head=3)
    status = status_for(world, ("valid", "rotated"), 3)
    assert StatusProof.loads(status.dumps()) == status
    res = refreshed(world, old, status.dumps())
    assert res.verdict == "valid", [c.detail for c in res.checks if not c.ok]
    assert res.head_height == 7
    [line] = [c for c in res.checks if c.name == "refresh"]
    assert line.ok and line.detail.startswith("refreshed from node-x: as of block 7 (")
    assert "extends block 3" in line.detail
    assert any(c.name == "validator set" and "1 authority-set change" in c.detail for c in res.checks)
    # the holder's disclosure stays the holder's
    assert list(res.records[0].disclosed) == ["degree"] and res.records[0].hidden_claims
    assert res.records[0].endorsements  # the endorsement comes with the fresh status


def test_refresh_reveals_a_later_revocation(world: World) -> None:
    old = world.bundle("revoked", head=3)
    assert verify(old, world.genesis).verdict == "valid"  # as of block 3
    res = refreshed(world, old, status_for(world, ("revoked",), 3).document())
    assert res.verdict == "revoked" and res.head_height == 7


def test_refresh_and_max_age(world: World) -> None:
    old = world.bundle("valid", head=2)
    assert verify(old, world.genesis, max_age_ms=95_000).verdict == "stale"      # block 2: 98 s old
    assert refreshed(world, old, status_for(world, ("valid",), 2), 95_000).verdict == "valid"  # block 7: 93 s
    res = refreshed(world, old, status_for(world, ("valid",), 2), 90_000)
    assert res.verdict == "stale"
    # Refreshed and still too old: the node's latest block is, and the verifier is told that refreshing
    # again will not help until the network makes a block (not "refresh it from a node").
    from node.cli import verdict_line

    fresh = next(c for c in res.checks if c.name == "fresh")
    assert "latest block node-x holds" in fresh.detail and "heartbeat_s" in fresh.detail, fresh.detail
    assert "--refresh" not in fresh.detail
    line = verdict_line(res, world.genesis)
    assert "the network made no block since" in line and "--refresh" not in line, line
    alone = verify(old, world.genesis, max_age_ms=95_000)   # not refreshed: refreshing is the advice
    assert "--refresh URL" in next(c for c in alone.checks if c.name == "fresh").detail
    assert "--refresh URL" in verdict_line(alone, world.genesis)


def test_refresh_at_the_same_height(world: World) -> None:
    old = world.bundle("valid")
    res = refreshed(world, old, status_for(world, ("valid",), 7))
    assert res.verdict == "valid" and "the same block" in next(c for c in res.checks if c.name == "refresh").detail


def lied(world: World, old: ProofBundle, edit: Any, since: int = 3) -> VerificationResult:
    obj = status_for(world, ("valid",), since).document()
    edit(obj)
    res = refreshed(world, old, obj)
    assert res.verdict == "refresh-failed", res.verdict
    assert [c for c in res.checks if c.name == "refresh" and not c.ok]
    assert res.head_height == old.head.header.height  # the bundle alone speaks for its own block
    return res


def test_a_lying_node_never_makes_a_refresh_valid(world: World) -> None:
    old = world.bundle("valid", head=3)
    s6 = status_for(world, ("valid",), 3, head=6).to_json(True)
    s4 = status_for(world, ("valid",), 3, head=4).to_json(True)  # (block 7 is empty: its state is block 6's)
    # a certificate for another block
    lied(world, old, lambda o: o["head"].__setitem__("cert", s6["head"]["cert"]))
    # fewer signatures than needed (block 7 is signed by two validators)
    lied(world, old, lambda o: o["head"]["cert"].__setitem__("sigs", o["head"]["cert"]["sigs"][:1]))
    # the validator transition dropped
    lied(world, old, lambda o: o.__setitem__("transitions", []))
    # a consistency proof altered, or from another size
    lied(world, old, lambda o: o["consistency"].reverse())
    lied(world, old, lambda o: o.__setitem__("since", 2))
    lied(world, old, lambda o: o.__setitem__("since_path", o["since_path"][1:]))
    # state proofs from another head, or for another record
    lied(world, old, lambda o: o["records"][0].__setitem__("record_state", s4["records"][0]["record_state"]))
    lied(world, old, lambda o: o["records"][0].__setitem__("issuer_now", s4["records"][0]["issuer_now"]))
    other = status_for(world, ("rotated",), 3).to_json(True)["records"][0]
    lied(world, old, lambda o: o["records"].__setitem__(0, other))
    lied(world, old, lambda o: o["records"][0].__setitem__("anchor_history_path", []))
    # another network, and an unreadable answer
    lied(world, old, lambda o: o.__setitem__("chain_id", "other"))
    lied(world, old, lambda o: o.__setitem__("format", "ler-bundle/1"))
    lied(world, old, lambda o: o.pop("consistency"))
    # a head older than the bundle's
    newer = world.bundle("valid", head=5)
    res = refreshed(world, newer, status_for(world, ("valid",), 3, head=4))
    assert res.verdict == "refresh-failed" and "older" in res.checks[-1].detail
    # the node could not be asked at all
    res = refreshed(world, old, ProofError("connection refused"))
    assert res.verdict == "refresh-failed" and "connection refused" in res.checks[-1].detail


def test_a_revoked_record_stays_revoked_when_the_refresh_fails(world: World) -> None:
    old = world.bundle("revoked", head=5)
    res = refreshed(world, old, ProofError("unreachable"))
    assert res.verdict == "revoked"


def test_a_forked_history_is_refused(world: World, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A node on another history of the same genesis, certified by the same validators, cannot refresh."""
    fork = ChainBuilder(tmp_path_factory.mktemp("fork") / "db", world.genesis, [AUTH])
    try:
        doc = world.docs["valid"]
        fork.commit([new_record(UNI, HOLDER.did)[1]])  # a different block 1
        fork.commit([])
        fork.commit([])
        old = world.bundle("valid", head=2)
        with pytest.raises(BundleError):
            build_status(fork.store, [doc.record_id], 2)  # the record is not there
        mine = ChainBuilder(tmp_path_factory.mktemp("fork2") / "db", world.genesis, [AUTH])
        try:
            d2, tx2 = new_record(UNI, HOLDER.did)
            mine.commit([tx2])
            mine.commit([])
            b2 = build_bundle(mine.store, [(d2.record_id, d2.disclose(["degree"]))])
            other = ChainBuilder(tmp_path_factory.mktemp("fork3") / "db", world.genesis, [AUTH])
            try:
                other.commit([tx2], time=T0 + 1500)  # the same record, in a block of another time
                other.commit([])
                other.commit([])
                st_other = build_status(other.store, [d2.record_id], 2)
                res = verify_refreshed(b2.dumps(), st_other, world.genesis, NOW, None, "fork")
                assert res.verdict == "refresh-failed"
                assert "does not extend" in res.checks[-1].detail
                with pytest.raises(ProofError):
                    refresh_bundle(b2, st_other)
            finally:
                other.close()
        finally:
            mine.close()
        assert verify(old, world.genesis).verdict == "valid"
    finally:
        fork.close()


def test_status_proof_byte_flips_never_make_a_refresh_valid(world: World) -> None:
    old = world.bundle("valid", head=3)
    raw = status_for(world, ("valid",), 3).dumps()
    assert refreshed(world, old, raw).verdict == "valid"
    for i in range(0, len(raw), max(1, len(raw) // 300)):
        flipped = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1:]
        assert refreshed(world, old, flipped).verdict != "valid", i


def test_build_status_refusals(world: World) -> None:
    rid = world.docs["valid"].record_id
    with pytest.raises(BundleError):
        build_status(world.chain.store, [rid], 0)
    with pytest.raises(BundleError):
        build_status(world.chain.store, [rid], 8)
    with pytest.raises(BundleError):
        build_status(world.chain.store, [bytes(16)], 3)


@pytest.mark.parametrize("names", [("revoked", "valid"), ("unaccredited", "valid"), ("expiring", "valid")])
def test_a_stack_with_one_record_tampered_names_that_records_fault(world: World, names: tuple[str, ...]) -> None:
    """The headline of a stack found tampered says why the tampered record fails, and which it is, not
    the first failed check of an earlier record whose own verdict is only revoked (or the like)."""
    from node.cli import verdict_line

    obj = json.loads(world.raw(*names))
    obj["records"][1]["endorsements"] *= 2
    r = verify(rfc8785.dumps(obj), world.genesis)
    assert r.verdict == "tampered" and [x.verdict for x in r.records][1] == "tampered"
    assert r.records[0].verdict != "tampered"
    line = verdict_line(r, world.genesis)
    assert "record 2 of 2" in line and "appears more than once" in line, line


def test_an_unaccredited_record_says_why(tmp_path: Path) -> None:
    """Unaccredited for one of three reasons, and the verifier says which: the signer is no registered
    issuer, the issuer is accredited for other record types, or its accreditation had ended (and when)."""
    from node.cli import verdict_line

    academy = fixed_key(9)
    genesis = make_genesis([AUTH], [(UNI, ("degree",))])
    chain = ChainBuilder(tmp_path / "db", genesis, [AUTH])
    ends = chain.time_of(2)
    try:
        chain.commit([sign_tx(AUTH, CHAIN, GovVote(Action("accredit", academy.did, "Night Academy", ("course",),
                                                          ends)))])
        docs = {}
        txs = []
        for name, signer, rtype in (("stranger", STRANGER, "degree"), ("scope", UNI, "course.welding"),
                                    ("ended", academy, "course.welding")):
            docs[name], tx = new_record(signer, HOLDER.did, rtype=rtype)
            txs.append(tx)
        chain.commit(txs[:2])                  # block 2: still within the academy's accreditation
        chain.commit(txs[2:])                  # block 3: after it ended
        says = {
            "stranger": f"{STRANGER.did} was no registered issuer when the record was anchored (block 2)",
            "scope": "issuer 0 is accredited for degree, not for 'course.welding'",
            "ended": f"Night Academy's accreditation ended on {utc_text(ends)}, before the record was anchored "
                     f"({utc_text(chain.time_of(3))})",
        }
        for name, doc in docs.items():
            r = verify(build_bundle(chain.store, [(doc.record_id, doc.disclose([]))]).dumps(), genesis)
            assert r.verdict == "unaccredited", (name, r.verdict)
            detail = next(c.detail for c in r.checks if c.name == "issuer accredited")
            assert detail.startswith(f"unaccredited: {says[name]}"), detail
            assert verdict_line(r, genesis).startswith(f"UNACCREDITED: {says[name]}")
            assert "later" not in detail
        # Accredited after the record was anchored: the record stays unaccredited, and the reason says so.
        chain.commit([sign_tx(AUTH, CHAIN, GovVote(Action("accredit", STRANGER.did, "Late College", ("degree",),
                                                          None)))])
        doc = docs["stranger"]
        r = verify(build_bundle(chain.store, [(doc.record_id, doc.disclose([]))]).dumps(), genesis)
        detail = next(c.detail for c in r.checks if c.name == "issuer accredited")
        assert r.verdict == "unaccredited" and detail == (
            f"unaccredited: {says['stranger']}; Late College was accredited later (block 4), which does not "
            "change the standing of a record anchored before"), detail
    finally:
        chain.close()
