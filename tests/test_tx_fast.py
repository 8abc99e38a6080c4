"""Tx.decode's fast path must decide exactly as the general canonical decoder does.

The reference is `Tx.from_obj(codec.decode(data))`: the strict rebuild-and-compare check. For every
input, valid or damaged, both must refuse, or both must give the same transaction, and the signing
bytes a decoded transaction carries must be those keys.signing_bytes builds from its fields.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import msgpack
import pytest

from ler import codec, keys
from ler.errors import DecodeError
from ler.tx import MAX_TX_BYTES, Tx, sign_tx
from tests.test_tx import CHAIN, ISSUER, bodies, signed


def reference(data: bytes) -> Tx | str:
    try:
        return Tx.from_obj(codec.decode(data, MAX_TX_BYTES), raw=bytes(data))
    except DecodeError as exc:
        return f"refused: {exc}"


def fast(data: bytes) -> Tx | str:
    try:
        return Tx.decode(data)
    except DecodeError as exc:
        return f"refused: {exc}"


def same_outcome(data: bytes) -> None:
    want, got = reference(data), fast(data)
    if isinstance(want, str):
        assert isinstance(got, str), f"fast path accepted what the reference refuses ({want}): {data.hex()}"
        assert got == want  # the same reason, too
        return
    assert isinstance(got, Tx), f"fast path refused a canonical transaction ({got}): {data.hex()}"
    assert got == want and got.raw == want.raw and got.tx_id == want.tx_id
    assert got.signing_bytes() == keys.signing_bytes("tx", want.chain, want.signed_payload())
    assert got.signature_valid() == want.signature_valid()


@functools.cache
def all_txs() -> list[Tx]:
    return [signed(kind, nonce) for kind in bodies() for nonce in (0, 1, 127, 128, 255, 2**16, 2**40, 2**64 - 1)]


@pytest.mark.parametrize("tx", all_txs(), ids=lambda t: f"{t.type}-{t.nonce}")
def test_valid_transactions_decode_the_same(tx: Tx) -> None:
    same_outcome(tx.raw)
    decoded = Tx.decode(tx.raw)
    assert decoded.signature_valid()


def test_signed_bytes_spliced_from_the_encoding_are_those_of_the_fields() -> None:
    """Decoding splices the signed bytes out of the transaction's encoding (once its chain id is known):
    for every type and every size of nonce they must be what keys.signing_bytes builds."""
    for tx in all_txs():
        Tx.decode(tx.raw)
        decoded = Tx.decode(tx.raw)  # the chain id is known now
        assert decoded.signing is not None
        assert decoded.signing == keys.signing_bytes("tx", tx.chain, tx.signed_payload())
        assert decoded.signature_valid()
        assert Tx.decode(tx.raw, keys.sha256(tx.raw)) == decoded  # with the id a caller already has
    long_chain = "c" * 64
    for nonce in (0, 2**40):
        tx = sign_tx(ISSUER, long_chain, bodies()["record.anchor"], nonce=nonce)
        Tx.decode(tx.raw)
        assert Tx.decode(tx.raw).signing == keys.signing_bytes("tx", long_chain, tx.signed_payload())


def test_every_single_byte_change_decides_the_same() -> None:
    rng = random.Random(7)
    for tx in all_txs()[::3]:
        raw = tx.raw
        for i in range(len(raw)):
            for delta in (1, 0x80, rng.randrange(1, 256)):
                damaged = bytearray(raw)
                damaged[i] = (damaged[i] + delta) % 256
                same_outcome(bytes(damaged))


def test_truncation_and_extension_decide_the_same() -> None:
    for tx in all_txs()[::5]:
        raw = tx.raw
        for n in range(len(raw)):
            same_outcome(raw[:n])
        for extra in (b"\x00", b"\xc0", raw):
            same_outcome(raw + extra)


def _repack(obj: Any, **kw: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, **kw)


def _obj(tx: Tx) -> dict[str, Any]:
    return codec.decode(tx.raw)


def test_non_canonical_forms_are_refused_by_both() -> None:
    tx = signed("record.anchor")
    obj = _obj(tx)
    cases: list[bytes] = []
    # Unsorted top-level and body keys.
    cases.append(_repack(dict(reversed(list(obj.items())))))
    body_rev = dict(obj, body=dict(reversed(list(obj["body"].items()))))
    cases.append(_repack(body_rev))
    # A float where an int or None stands.
    cases.append(_repack(dict(obj, nonce=7.0)))
    cases.append(_repack(dict(obj, body=dict(obj["body"], expires=1.5))))
    # A byte-string key, and a str where bytes are due.
    cases.append(_repack({**{k: v for k, v in obj.items() if k != "body"},
                          "body": {k.encode(): v for k, v in obj["body"].items()}}))
    cases.append(_repack(dict(obj, sig=obj["sig"].hex())))
    # Bytes packed as str (old msgpack spec) and an int in a longer form than needed.
    cases.append(msgpack.packb(obj, use_bin_type=False))
    long_nonce = _repack(dict(obj, nonce=2**40))
    cases.append(long_nonce.replace(b"\xcf" + (2**40).to_bytes(8, "big"), b"\xcf" + (7).to_bytes(8, "big")))
    # A map16 header for a six-entry map, and an extension type.
    cases.append(b"\xde\x00\x06" + tx.raw[1:])
    cases.append(_repack(dict(obj, nonce=msgpack.ExtType(1, b"x"))))
    # A nested map in a flat body, an extra field, a missing field.
    cases.append(_repack(dict(obj, body=dict(obj["body"], expires={"a": 1}))))
    cases.append(_repack(dict(obj, extra=1)))
    cases.append(_repack({k: v for k, v in obj.items() if k != "nonce"}))
    for data in cases:
        same_outcome(data)
        assert isinstance(fast(data), str), data.hex()


def test_random_structures_decide_the_same() -> None:
    """Random re-packings of real transactions with values swapped for other types and lengths."""
    rng = random.Random(11)
    values: list[Any] = [None, True, False, 0, -1, 2**63, 1.0, "", "x" * 70, b"", b"\x00" * 32, b"\x00" * 64,
                         [], {}, {"a": 1}, CHAIN, keys.sha256(b"x")[:16]]
    txs = all_txs()
    for _ in range(3000):
        obj = _obj(rng.choice(txs))
        target = obj if rng.random() < 0.4 else obj["body"]
        if isinstance(target, dict) and target:
            key = rng.choice(list(target))
            target[key] = rng.choice(values)
        same_outcome(_repack(obj))
