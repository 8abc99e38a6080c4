"""Record anchors decoded in C (ler/_tx_native.c) against the Python decoding it stands in for.

For every input the C code either declines it (returns None, and Python decides) or gives exactly the
transaction Python gives, which it must never do for an input Python refuses. Every anchor in its usual
form must be taken by the C code, or the comparisons would compare nothing. tests/test_tx_fast.py
compares `Tx.decode` as a whole (the C code first) with the strict reference decoder.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import base58
import msgpack
import pytest

from ler import keys
from ler import tx as tx_module
from ler.errors import DecodeError
from ler.keys import KeyPair, did_from_public_key, sha256
from ler.tx import RecordAnchor, Tx, sign_tx
from tests.native_build import assert_keeps_no_memory, expect_built, run_under_asan

native = tx_module._native
needs_native = pytest.mark.skipif(native is None, reason="the compiled decoding is not built")
FIELDS = ("chain", "type", "signer", "nonce", "body", "sig", "raw", "tx_id")
INTS = (0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1)
ISSUER = KeyPair(bytes([2]) * 32)


def in_python(data: bytes) -> Tx | str:
    saved, tx_module._native = tx_module._native, None
    try:
        return Tx.decode(data)
    except DecodeError as exc:
        return f"refused: {exc}"
    finally:
        tx_module._native = saved


def compare(data: bytes) -> bool:
    """Whether the C code took `data`; fails if it took it differently from Python, or took what Python
    refuses."""
    assert native is not None
    got = native.anchor(data, sha256(data))
    if got is None:
        return False
    want = in_python(data)
    assert isinstance(want, Tx), f"the C code took what Python refuses ({want}): {data.hex()}"
    assert type(got) is Tx and type(got.body) is RecordAnchor
    for name in FIELDS:
        assert getattr(got, name) == getattr(want, name), name
        assert type(getattr(got, name)) is type(getattr(want, name)), name
    for name in ("record", "issuer", "holder", "rtype", "commitment", "expires"):
        assert type(getattr(got.body, name)) is type(getattr(want.body, name)), name
    assert got.signing == keys.signing_bytes("tx", want.chain, want.signed_payload())
    assert got == want and hash(got) == hash(want) and repr(got) == repr(want)
    return True


def anchor(rng: random.Random, chain: str = "ler-test", rtype: str = "degree.bachelor", expires: int | None = None,
           nonce: int | None = None, holder: str | None = None, issuer: str | None = None) -> Tx:
    body = RecordAnchor(rng.randbytes(16), issuer or ISSUER.did, holder or did_from_public_key(rng.randbytes(32)),
                        rtype, rng.randbytes(32), expires)
    return sign_tx(ISSUER, chain, body, nonce=rng.randrange(2**64) if nonce is None else nonce)


def usual_anchors() -> list[Tx]:
    """Anchors in their usual form, over the edges of every field's forms and limits."""
    rng = random.Random(5)
    out = [anchor(rng, expires=e, nonce=n) for e, n in zip((None, *INTS), (*INTS, 7), strict=True)]
    for chain in ("c", "c" * 31, "c" * 32, "c" * 64, "A.b_c-9", "9" + "-" * 63, "Z_"):
        out.append(anchor(rng, chain=chain))
    seg = "a" + "b" * 39
    for rtype in ("d", "a" * 31, "a" * 32, seg, ".".join([seg] * 4) + "." + "c" * 35, ".".join(["x"] * 8),
                  "0-_.9_-", "military-training.logistics"):
        assert len(rtype) <= 200
        out.append(anchor(rng, rtype=rtype))
    for key in (b"\x00" * 32, b"\xff" * 32, b"\x00" * 31 + b"\x01", b"\xff" * 31 + b"\xfe"):  # the range's ends
        out.append(anchor(rng, holder=did_from_public_key(key), issuer=did_from_public_key(key)))
    out += [anchor(rng) for _ in range(40)]
    return out


@expect_built("LER_TX_IN_PYTHON", "transactions decode and hash")
def test_the_compiled_decoding_is_built_and_used() -> None:
    # scripts/test installs the project, which compiles it; without it every anchor decodes in Python
    assert native is not None, "ler/_tx_native.c was not built, though a C compiler is here (see pip's output)"
    tx = usual_anchors()[0]
    assert native.anchor(tx.raw, tx.tx_id) is not None


def test_it_can_be_turned_off() -> None:
    code = ("import hashlib, ler.keys as k, ler.tx as t; "
            "print(t._native is None, k.sha256(b'') == hashlib.sha256().digest(), type(k.sha256).__name__)")
    env = dict(os.environ, LER_TX_IN_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True function"


@needs_native
def test_every_usual_anchor_is_taken_and_is_what_python_makes() -> None:
    for tx in usual_anchors():
        assert compare(tx.raw), f"declined: {tx.raw.hex()}"
        assert Tx.decode(tx.raw, tx.tx_id).signature_valid()


def _did_of_number(n: int) -> str:
    return "did:key:z" + base58.b58encode(n.to_bytes(34, "big")).decode()


def _with_body(tx: Tx, **changes: Any) -> bytes:
    obj = msgpack.unpackb(tx.raw)
    obj["body"].update(changes)
    return msgpack.packb(obj, use_bin_type=True)


@needs_native
def test_near_misses_are_declined_and_python_decides() -> None:
    rng = random.Random(9)
    tx = anchor(rng)
    low, high = 0xED01 << 256, 0xED02 << 256
    dids = [
        _did_of_number(low - 1), _did_of_number(high), _did_of_number(high + 2**200),  # outside the key's range
        "did:key:z" + "1" + ISSUER.did[10:],  # a leading zero digit
        ISSUER.did[:-1], ISSUER.did + "x", ISSUER.did.replace("did:key:z", "did:key:Z"),
        "did:web:" + "x" * 48, ISSUER.did[:-1] + "é",
    ]
    dids += [ISSUER.did[:20] + bad + ISSUER.did[21:] for bad in "0OIl+/ \x00"]
    cases = [_with_body(tx, holder=d) for d in dids] + [_with_body(tx, issuer=d) for d in dids]
    for rtype in ("", "A", "a.", ".a", "a..b", "-a", "a" * 41, ".".join(["x"] * 9), "a/b", "é",
                  ".".join(["a" * 40] * 5)[:201], "degree\n"):
        cases.append(_with_body(tx, rtype=rtype))
    for value in (-1, -(2**63), 1.5, "1", b"\x01", True, [], {}):
        cases.append(_with_body(tx, expires=value))
    cases.append(_with_body(tx, record=b"\x00" * 15))
    cases.append(_with_body(tx, commitment=b"\x00" * 33))
    obj = msgpack.unpackb(tx.raw)
    for chain in ("", "c" * 65, ".c", "-c", "c/d", "é", "c c"):
        cases.append(msgpack.packb(dict(obj, chain=chain), use_bin_type=True))
    for ttype in ("record.revoke", "record.anchor ", "Record.anchor"):
        cases.append(msgpack.packb(dict(obj, type=ttype), use_bin_type=True))
    cases.append(msgpack.packb(dict(obj, nonce=-1), use_bin_type=True))
    cases.append(msgpack.packb(dict(obj, extra=1), use_bin_type=True))
    # Longer forms than needed: a str8 for a short string, a str16, a uint16 for a small number, a bin16.
    raw = tx.raw
    cases.append(raw.replace(b"\xa5chain\xa8ler-test", b"\xa5chain\xd9\x08ler-test"))
    cases.append(raw.replace(b"\xa5chain\xa8ler-test", b"\xa5chain\xda\x00\x08ler-test"))
    cases.append(raw.replace(b"\xa7expires\xc0", b"\xa7expires\xcd\x00\x05"))
    cases.append(raw.replace(b"\xa6record\xc4\x10", b"\xa6record\xc5\x00\x10"))
    cases.append(raw.replace(b"\xa6holder\xd9\x38", b"\xa6holder\xda\x00\x38"))
    cases += [raw + b"\xc0", raw[:-1], b"\x87" + raw[1:], bytes(4097)]
    for data in cases:
        assert data != raw
        assert not compare(data), data.hex()


@needs_native
def test_every_single_byte_change_decides_as_python_does() -> None:
    rng = random.Random(13)
    taken = 0
    for tx in usual_anchors()[::4]:
        raw = tx.raw
        for i in range(len(raw)):
            for delta in (1, 0x20, 0x80, rng.randrange(1, 256)):
                damaged = bytearray(raw)
                damaged[i] = (damaged[i] + delta) % 256
                taken += compare(bytes(damaged))
        for n in range(len(raw)):
            compare(raw[:n])
    assert taken > 1000  # changed signatures, keys, hashes and many dids and types are still anchors


@needs_native
def test_random_splices_decide_as_python_does() -> None:
    """Pieces of one anchor's encoding moved, repeated or dropped: lengths and headers that disagree."""
    rng = random.Random(17)
    txs = usual_anchors()
    for _ in range(4000):
        raw = bytearray(rng.choice(txs).raw)
        i, j = sorted(rng.randrange(len(raw) + 1) for _ in range(2))
        op = rng.randrange(3)
        if op == 0:
            del raw[i:j]
        elif op == 1:
            raw[i:i] = raw[i:j]
        else:
            raw[i:j] = rng.randbytes(j - i)
        compare(bytes(raw))


@needs_native
def test_arguments_that_are_not_an_anchor_and_its_id_are_declined() -> None:
    assert native is not None
    tx = usual_anchors()[0]
    for data, tx_id in ((bytearray(tx.raw), tx.tx_id), (memoryview(tx.raw), tx.tx_id), (tx.raw, tx.tx_id[:31]),
                        (tx.raw, None), (None, tx.tx_id), (tx.raw.decode("latin-1"), tx.tx_id)):
        assert native.anchor(data, tx_id) is None
    with pytest.raises(TypeError):
        native.anchor(tx.raw)


@needs_native
def test_its_sha256_is_hashlibs() -> None:
    """ler.keys.sha256 (and so every transaction id and state key) is the C one-shot where it is built."""
    assert native is not None
    assert keys.sha256 is native.sha256
    rng = random.Random(23)
    for n in [*range(200), 1000, 2047, 2048, 4096, 70_000]:  # long inputs are hashed with the lock released
        data = rng.randbytes(n)
        assert native.sha256(data) == hashlib.sha256(data).digest(), n
    assert native.sha256(bytearray(b"abc")) == native.sha256(memoryview(b"xabc")[1:]) == hashlib.sha256(b"abc").digest()
    for bad in ("abc", None, 5, [b"a"]):
        with pytest.raises(TypeError):
            native.sha256(bad)


@needs_native
def test_the_c_decoding_keeps_no_memory_it_made() -> None:
    assert native is not None
    txs = usual_anchors()[:20]
    bad = [tx.raw[:-3] for tx in txs] + [_with_body(tx, rtype="a..b") for tx in txs]

    def rounds(n: int) -> None:
        for _ in range(n):
            for tx in txs:
                native.anchor(tx.raw, tx.tx_id)
                native.sha256(memoryview(tx.raw))
                with pytest.raises(TypeError):
                    native.sha256("text")
            for data in bad:
                native.anchor(data, tx.tx_id)

    assert_keeps_no_memory(rounds)


@needs_native
def test_the_c_decoding_under_the_address_sanitizer(tmp_path: Path) -> None:
    """The comparisons above, and tests/test_tx_fast.py's, run again with the C file built with
    AddressSanitizer."""
    source = Path(tx_module.__file__).with_name("_tx_native.c")
    run_under_asan(tmp_path, "ler._tx_native", "ler.tx", source, __file__,
                   "not sanitizer and not turned_off and not memory", link=("-ldl",))
    run_under_asan(tmp_path, "ler._tx_native", "ler.tx", source, str(Path(__file__).with_name("test_tx_fast.py")), "",
                   link=("-ldl",))
