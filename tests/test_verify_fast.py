"""The fast paths of offline verification accept exactly what the checked paths accept, with the same result.

Wire parsing and decoding run a compiled fast parser first and fall back to the checked, field-by-field
parser (which names the problem) whenever it declines. These tests run both on valid and on altered input
and require the same outcome: an equal value, or a DecodeError with the same message.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers_chain import CHAIN, T0, ChainBuilder, fixed_key, make_genesis, new_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bundle import paths

from ler import codec, wire
from ler.block import Block, Genesis, Header
from ler.bundle import ProofBundle, StatusProof, verify_bundle
from ler.errors import DecodeError
from ler.keys import sha256
from ler.smt import StateProof
from ler.state import IssuerEntry, RecordEntry
from ler.tx import Action, GovVote, RecordEndorse, Tx, sign_tx
from ler.wire import Wire, b64url, b64url_bytes, b64url_hashes
from storage.bundles import build_bundle, build_status

AUTH, AUTH2, UNI, HOLDER, ENDORSER = (fixed_key(n) for n in (11, 12, 13, 14, 15))
NOW = T0 + 100_000


@dataclass
class Fixture:
    genesis: Genesis
    raw: bytes
    status: bytes
    blocks: list[Block]


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    genesis = make_genesis([AUTH], [(UNI, ("degree",))])
    chain = ChainBuilder(tmp_path_factory.mktemp("fast") / "db", genesis, [AUTH])
    doc, tx = new_record(UNI, HOLDER.did)
    chain.commit([tx])
    chain.commit([sign_tx(ENDORSER, CHAIN, RecordEndorse(doc.record_id, sha256(b"statement")))])
    chain.commit([sign_tx(AUTH, CHAIN, GovVote(Action("add_authority", AUTH2.did, "authority 2", (), None)))])
    chain.add_validator_key(AUTH2)
    chain.commit([])
    chain.commit([])
    bundle = build_bundle(chain.store, [(doc.record_id, doc.disclose(["degree"]))])
    status = build_status(chain.store, [doc.record_id], 2)
    blocks = [chain.store.block(h) for h in range(1, chain.store.height + 1)]
    assert bundle.transitions, "the fixture should exercise validator transitions"
    yield Fixture(genesis, bundle.dumps(), status.dumps(), [b for b in blocks if b is not None])
    chain.close()


def outcome(f: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", f()
    except DecodeError as exc:
        return "error", str(exc)


def checked_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def checked(cls: type, obj: Any, where: str, json_mode: str) -> Any:
        return wire._from_checked(cls, obj, where, json_mode)
    monkeypatch.setattr(wire, "_from", checked)


def both(f: Callable[[], Any]) -> tuple[tuple[str, Any], tuple[str, Any]]:
    fast = outcome(f)
    with pytest.MonkeyPatch.context() as mp:
        checked_only(mp)
        slow = outcome(f)
    return fast, slow


def test_valid_bundle_parses_the_same(fx: Fixture) -> None:
    fast, slow = both(lambda: ProofBundle.loads(fx.raw))
    assert fast[0] == "ok" and fast == slow
    fast, slow = both(lambda: StatusProof.loads(fx.status))
    assert fast[0] == "ok" and fast == slow
    assert verify_bundle(fx.raw, fx.genesis, NOW).verdict == "valid"


def b64_variants(s: str) -> list[Any]:
    """Near misses of a base64url string: every way the fast decoder could go wrong."""
    out: list[Any] = [s + "A", s[:-1], s[:-2], s + "=", s + "==", s.replace("-", "+"), s.replace("_", "/"),
                      " " + s, s + "\n", s.upper(), s.lower(), s + ".", "." + s[1:], s[:21] + "." + s[22:],
                      s[:-1] + chr(ord(s[-1]) + 1), s[:-1] + "B", s[:-1] + "F", s[:-1] + "9", s[:-1] + "_",
                      s + "AAAA", s[:-4], bytes(s, "ascii"), [s], None, 1]
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.text(max_size=50)
    | st.sampled_from(["", "A" * 43, "A" * 42 + "B", "_" * 43, "AAAA", "AA", "A"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data(), json_values)
def test_any_replaced_part_parses_the_same(fx: Fixture, data: Any, value: Any) -> None:
    obj = json.loads(fx.raw)
    where = data.draw(st.sampled_from(paths(obj)[1:]))
    node = obj
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    fast, slow = both(lambda: ProofBundle.from_json(obj))
    assert fast == slow, where


def test_every_base64_string_altered_parses_the_same(fx: Fixture) -> None:
    base = json.loads(fx.raw)
    for where in paths(base)[1:]:
        node = base
        for k in where[:-1]:
            node = node[k]
        original = node[where[-1]]
        if not isinstance(original, str) or where[-1] in ("key", "value", "format", "chain_id", "chain"):
            continue
        for variant in b64_variants(original):
            obj = copy.deepcopy(base)
            n = obj
            for k in where[:-1]:
                n = n[k]
            n[where[-1]] = variant
            fast, slow = both(lambda obj=obj: ProofBundle.from_json(obj))  # type: ignore[misc]
            assert fast == slow, (where, variant)
            if fast[0] != "ok":
                continue
            raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            if raw != fx.raw:
                assert verify_bundle(raw, fx.genesis, NOW).verdict != "valid", (where, variant)


def test_lists_of_hashes_decode_as_one_by_one() -> None:
    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for _ in range(3000):
        items: list[Any] = [b64url(rng.randbytes(32)) for _ in range(rng.randrange(0, 6))]
        if items and rng.random() < 0.7:
            i = rng.randrange(len(items))
            s = items[i]
            j = rng.randrange(len(s))
            items[i] = rng.choice([s[:j] + rng.choice(alphabet + ".=+/ \n") + s[j + 1:], s[:j] + s[j + 1:],
                                   s + rng.choice(alphabet + "."), s[:j] + "." + s[j:], s.encode(), 3])
        try:
            expect: Any = tuple(b64url_bytes(x, 32, "x") for x in items)
        except DecodeError:
            expect = None
        try:
            got: Any = b64url_hashes(items)
        except wire._Slow:
            got = None
        assert got == expect, items


def flips(data: bytes, rng: random.Random, n: int) -> Iterator[bytes]:
    for _ in range(n):
        b = bytearray(data)
        op = rng.randrange(4)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.randrange(256)
        elif op == 2:
            del b[i]
        else:
            b.insert(i, rng.randrange(256))
        yield bytes(b)


def test_wire_decode_matches_the_checked_decode(fx: Fixture) -> None:
    bundle = ProofBundle.loads(fx.raw)
    rp = bundle.records[0]
    samples: list[tuple[type[Wire], bytes]] = [(Header, bundle.head.header.encode()),
                                               (Header, rp.anchor.header.encode())]
    for proof in (rp.record_state, rp.issuer_then, rp.issuer_now, *rp.endorsements):
        samples.append((StateProof, proof.encode()))
    samples.append((RecordEntry, rp.record_state.value or b""))
    samples.append((IssuerEntry, rp.issuer_now.value or b""))
    samples += [(Block, b.encode()) for b in fx.blocks]
    rng = random.Random(11)

    def checked(cls: type[Wire], data: bytes) -> Any:
        return cls.from_obj(codec.decode(data))

    for cls, good in samples:
        assert cls.decode(good) == checked(cls, good)
        for data in flips(good, rng, 400 if cls is not Block else 60):
            fast = outcome(lambda c=cls, d=data: c.decode(d))  # type: ignore[misc]
            slow = outcome(lambda c=cls, d=data: checked(c, d))  # type: ignore[misc]
            assert fast == slow, (cls, data.hex())


def test_encode_matches_the_generic_canonical_encoding(fx: Fixture) -> None:
    bundle = ProofBundle.loads(fx.raw)
    objs: list[Wire] = [bundle.head.header, bundle.head.cert, bundle.head, *bundle.transitions,
                        bundle.records[0].anchor, bundle.records[0].record_state, *fx.blocks, fx.genesis]
    for o in objs:
        assert o.encode() == codec.encode(o.to_obj())
    tx = Tx.decode(bundle.records[0].anchor.tx)
    assert tx.raw == codec.encode(tx.to_obj())


def reference_b64url_bytes(v: Any) -> bytes | None:
    """Canonical unpadded base64url by definition: decodes, and re-encoding gives the same text."""
    import base64
    import re
    if not isinstance(v, str) or len(v) % 4 == 1 or not re.fullmatch(r"[A-Za-z0-9_-]*", v):
        return None
    raw = base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == v else None


def test_base64url_canonical_check_matches_its_definition() -> None:
    rng = random.Random(5)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    cases: list[Any] = ["", "A", "AA", "AB", "AQ", "AR", "AAA", "AAB", "AAE", "AAAA", "A=", "AA==", "+/AA", 5, None]
    for n in range(0, 70):
        cases += ["".join(rng.choice(alphabet) for _ in range(n)) for _ in range(40)]
        cases.append(b64url(rng.randbytes(n)))
    for v in cases:
        expect = reference_b64url_bytes(v)
        try:
            got: Any = b64url_bytes(v, None, "x")
        except DecodeError:
            got = None
        assert got == expect, v
        try:
            fast: Any = wire._fast_b64(v)
        except wire._Slow:
            fast = None
        assert fast == expect, v


scalars = st.none() | st.booleans() | st.integers(-2**64, 2**65) | st.binary(max_size=40) | st.text(max_size=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6), scalars | st.lists(scalars, max_size=2), max_size=5),
       st.text(max_size=8), st.text(max_size=8))
def test_signing_bytes_match_the_generic_encoding(payload: dict[str, Any], domain: str, chain: str) -> None:
    from ler import keys
    expect = outcome(lambda: codec.encode([keys.PROTOCOL_TAG + "/" + domain, chain, payload]))
    assert outcome(lambda: keys.signing_bytes(domain, chain, payload)) == expect


@settings(max_examples=400, deadline=None)
@given(st.text(min_size=1, max_size=30), scalars | st.text(max_size=5000) | st.lists(scalars, max_size=3),
       st.binary(min_size=16, max_size=16))
def test_claim_encodings_match_the_generic_encoding(key: str, value: Any, salt: bytes) -> None:
    from hashlib import sha256 as h

    from ler.record import Claim, HiddenClaim, _check_value
    reference_ok = outcome(lambda: reference_check_value(value))
    got = outcome(lambda: _check_value(value, "x"))
    assert (got[0], reference_ok[0]) in (("ok", "ok"), ("error", "error"))
    if got[0] != "ok":
        return
    claim = outcome(lambda: Claim(key, value, salt))
    if claim[0] != "ok":
        return
    c = claim[1]
    digest = h(codec.encode([value, salt])).digest()
    assert c.digest == digest
    assert outcome(lambda: c.leaf_data) == outcome(lambda: codec.encode([key, digest]))
    assert outcome(lambda: HiddenClaim(key, digest).leaf_data) == outcome(lambda: codec.encode([key, digest]))


def reference_check_value(value: Any) -> None:
    from ler.record import MAX_CLAIM_VALUE_BYTES, MAX_SAFE_INT, _has_bytes
    enc = codec.encode(value)
    if len(enc) > MAX_CLAIM_VALUE_BYTES or _has_bytes(value):
        raise DecodeError("bad")

    def unsafe(v: Any) -> bool:
        if isinstance(v, int) and not isinstance(v, bool):
            return abs(v) > MAX_SAFE_INT
        if isinstance(v, list | tuple):
            return any(unsafe(x) for x in v)
        if isinstance(v, dict):
            return any(unsafe(x) for x in v.values())
        return False
    if unsafe(value):
        raise DecodeError("bad")


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.integers() | st.binary(max_size=4) | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=2), inner, max_size=3), max_leaves=8))
def test_sorted_maps_check_matches_the_generic_canonical_order(value: Any) -> None:
    from ler.tx import _maps_sorted

    def reference(v: Any) -> bool:
        if isinstance(v, dict):
            ks = list(v)
            return (all(isinstance(k, str) and k.isascii() for k in ks) and ks == sorted(ks)
                    and all(reference(x) for x in v.values()))
        if isinstance(v, list):
            return all(reference(x) for x in v)
        return True
    assert _maps_sorted(value) == reference(value)
