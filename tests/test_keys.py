"""did:key identities, domain-separated signatures and key files (ler.keys)."""

from __future__ import annotations

import json
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import base58
import nacl.pwhash
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler import keys
from ler.errors import DecodeError, KeyFileError
from ler.keys import KeyPair

VECTORS = Path("/work/shared/vectors/vc-di-eddsa/keyPair.json")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    """base58btc written out here, independently of the library the code under test uses."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        n = n * 58 + _B58.index(ch)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * (len(text) - len(text.lstrip("1"))) + body


# --- did:key -------------------------------------------------------------------------------------------

@given(st.binary(min_size=32, max_size=32))
def test_did_round_trip(public_key: bytes) -> None:
    did = keys.did_from_public_key(public_key)
    assert did.startswith("did:key:z6Mk")
    assert keys.public_key_from_did(did) == public_key
    # the multibase body is base58btc(0xed 0x01 || key), checked with an independent base58
    assert did == "did:key:z" + b58encode(b"\xed\x01" + public_key)
    assert b58decode(did[len("did:key:z"):]) == b"\xed\x01" + public_key


@given(st.binary(min_size=32, max_size=32))
def test_keypair_did_is_the_did_of_its_public_key(seed: bytes) -> None:
    k = KeyPair(seed)
    assert k.did == keys.did_from_public_key(k.public_key)
    assert keys.public_key_from_did(k.did) == k.public_key


def test_rfc8032_key_gives_a_known_did() -> None:
    # RFC 8032 section 7.1, TEST 1: the secret key and the public key it derives.
    k = KeyPair(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert k.public_key.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert k.did == "did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw"
    assert k.did == "did:key:z" + b58encode(bytes.fromhex("ed01") + k.public_key)
    # and RFC 8032's signature of the empty message (Ed25519 is deterministic)
    assert k.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b")


def test_w3c_vector_key_pair() -> None:
    # The W3C vc-di-eddsa test key: its private multibase (ed25519-priv, 0x8026) holds the seed whose
    # public key is the published publicKeyMultibase (ed25519-pub, 0xed01).
    if not VECTORS.exists():
        pytest.skip("the shared W3C vectors are not on this machine")
    pair = json.loads(VECTORS.read_text())
    priv = b58decode(pair["privateKeyMultibase"].removeprefix("z"))
    assert priv[:2] == b"\x80\x26" and len(priv) == 34
    k = KeyPair(priv[2:])
    assert k.did == "did:key:" + pair["publicKeyMultibase"]
    pub = b58decode(pair["publicKeyMultibase"].removeprefix("z"))
    assert pub[:2] == b"\xed\x01" and pub[2:] == k.public_key


GOOD_DID = keys.did_from_public_key(bytes(range(32)))


def did_of(raw: bytes) -> str:
    return "did:key:z" + b58encode(raw)


@pytest.mark.parametrize("bad", [
    "", "did", "did:key:", "did:key:z", GOOD_DID.replace("did:key:", "did:web:"),
    GOOD_DID.replace("did:key:z", "did:key:Z"), GOOD_DID.replace("did:key:z", "did:key:f"),
    GOOD_DID.replace("did:key:z", "did:key:u"), GOOD_DID.replace("did:", "DID:"), GOOD_DID[len("did:key:"):],
    GOOD_DID[:-1] + "0", GOOD_DID[:-1] + "O", GOOD_DID[:-1] + "I", GOOD_DID[:-1] + "l",  # not base58
    GOOD_DID[:20] + "+" + GOOD_DID[21:], GOOD_DID + "é",
    did_of(b"\xec\x01" + bytes(32)),        # x25519-pub
    did_of(b"\xe7\x01" + bytes(33)),        # secp256k1-pub
    did_of(b"\x80\x26" + bytes(32)),        # ed25519-priv
    did_of(b"\xed\x00" + bytes(32)), did_of(b"\x01\xed" + bytes(32)),
    did_of(b"\xed\x01" + bytes(31)), did_of(b"\xed\x01" + bytes(33)), did_of(b"\xed\x01"),
    did_of(b"\x00\xed\x01" + bytes(32)),    # a leading zero byte ("1" prefix)
    "did:key:z1" + GOOD_DID[len("did:key:z"):],
    GOOD_DID + " ", GOOD_DID + "\n", " " + GOOD_DID, GOOD_DID + "\x00", GOOD_DID + "#key-1",
    GOOD_DID + "1" * 30, "did:key:z" + "1" * 100,
])
def test_malformed_dids_are_refused(bad: str) -> None:
    with pytest.raises(DecodeError):
        keys.public_key_from_did(bad)


@pytest.mark.parametrize("bad", [None, 1, b"did:key:z6Mk", ["did:key:z6Mk"]])
def test_non_string_dids_are_refused(bad: Any) -> None:
    with pytest.raises(DecodeError):
        keys.public_key_from_did(bad)


@settings(max_examples=300)
@given(st.text(max_size=70) | st.text(alphabet=_B58, max_size=60).map(lambda t: "did:key:z" + t))
def test_any_string_is_a_canonical_did_or_refused(text: str) -> None:
    try:
        key = keys.public_key_from_did(text)
    except DecodeError:
        return
    assert keys.did_from_public_key(key) == text


def reference_key_of(did: str) -> bytes | None:
    """The did's key by the general rule: base58btc decode, multicodec check, canonical re-encoding."""
    if not did.startswith("did:key:z") or len(did) > 64:
        return None
    try:
        raw = base58.b58decode(did[len("did:key:z"):])
    except ValueError:
        return None
    if len(raw) != 34 or raw[:2] != b"\xed\x01":
        return None
    return raw[2:] if "did:key:z" + base58.b58encode(raw).decode() == did else None


def test_one_character_changes_of_dids_parse_as_the_general_rule_says() -> None:
    """The usual did form is read by a shorter path; it must decide exactly as the general rule."""
    rng = random.Random(7)
    dids = [keys.did_from_public_key(bytes([b]) * 32) for b in (0, 1, 0x7F, 0xFF)]
    dids += [keys.did_from_public_key(rng.randbytes(32)) for _ in range(60)]
    tried = accepted = 0
    for did in dids:
        keys._key_of.cache_clear()
        assert keys.public_key_from_did(did) == reference_key_of(did)
        for _ in range(40):
            i = rng.randrange(len("did:key:z"), len(did))
            text = did[:i] + rng.choice(_B58 + "0OIl+/ \u00e9\x00") + did[i + 1:]
            want = reference_key_of(text)
            keys._key_of.cache_clear()
            try:
                got: bytes | None = keys.public_key_from_did(text)
            except DecodeError:
                got = None
            assert got == want, text
            tried += 1
            accepted += got is not None
    assert accepted and accepted < tried  # both outcomes were met


def _b58_number(n: int) -> str:
    """The 47-digit base-58 spelling of n (58**46 <= n < 58**47), as a did:key body."""
    digits = []
    while n:
        n, d = divmod(n, 58)
        digits.append(_B58[d])
    return "did:key:z" + "".join(reversed(digits))


def _accepts(check: Callable[[str], object], did: str) -> bool:
    keys._key_of.cache_clear()
    try:
        check(did)
    except DecodeError:
        return False
    return True


def test_checking_a_did_without_its_key_decides_as_the_general_rule() -> None:
    """check_did_key reads only the leading digits when they decide: around both ends of the range of
    valid numbers (0xed01 || key), where they do not, and on one-character changes, it must agree."""
    rng = random.Random(11)
    low, end = 0xED01 << 256, 0xED02 << 256
    texts = []
    for edge in (low, end):
        for delta in (0, 1, 2, 58**5, 58**34, 58**35 - 1, 58**35, 58**35 + 1, 58**36, 2**200, 2**250):
            texts += [_b58_number(edge - delta), _b58_number(edge + delta)]
    for _ in range(40):
        did = keys.did_from_public_key(rng.randbytes(32))
        texts.append(did)
        for _ in range(10):
            i = rng.randrange(len("did:key:z"), len(did))
            texts.append(did[:i] + rng.choice(_B58 + "0OIl+/ \u00e9") + did[i + 1:])
    texts += ["did:key:z", "did:web:example.org", "did:key:z" + "1" * 47, 7, None]  # type: ignore[list-item]
    outcomes = set()
    for text in texts:
        want = isinstance(text, str) and reference_key_of(text) is not None
        assert _accepts(keys.check_did_key, text) == want, text
        assert _accepts(keys.public_key_from_did, text) == want, text
        outcomes.add(want)
    assert outcomes == {True, False}


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_did_from_wrong_size_key_is_refused(size: int) -> None:
    with pytest.raises(DecodeError):
        keys.did_from_public_key(bytes(size))


# --- signatures ------------------------------------------------------------------------------------------

SIGNER = KeyPair(bytes([7]) * 32)
OTHER = KeyPair(bytes([8]) * 32)
payloads = st.recursive(st.none() | st.integers(0, 2**32) | st.text(max_size=8) | st.binary(max_size=8),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                        max_leaves=8)
labels = st.sampled_from(["tx", "vote", "rotate", "presentation", "tx/a", "a", ""]) | st.text(max_size=6)


def test_domain_and_chain_separation() -> None:
    payload = {"x": 1}
    sig = SIGNER.sign_payload("tx", "a", payload)
    assert keys.verify_signed(SIGNER.public_key, "tx", "a", payload, sig)
    assert not keys.verify_signed(SIGNER.public_key, "vote", "a", payload, sig)
    assert not keys.verify_signed(SIGNER.public_key, "tx", "b", payload, sig)
    assert not keys.verify_signed(SIGNER.public_key, "tx", "a", {"x": 2}, sig)
    assert not keys.verify_signed(OTHER.public_key, "tx", "a", payload, sig)
    # the raw message is never signed bare: it is tagged with the protocol, domain and chain
    assert not keys.verify(SIGNER.public_key, keys.codec.encode(payload), sig)
    assert keys.signing_bytes("tx", "a", payload) == keys.codec.encode(["ler/1/tx", "a", payload])


@settings(max_examples=60)
@given(labels, labels, labels, labels, payloads, payloads)
def test_a_signature_is_valid_only_for_its_own_domain_chain_and_payload(
        d1: str, d2: str, c1: str, c2: str, p1: Any, p2: Any) -> None:
    sig = SIGNER.sign_payload(d1, c1, p1)
    assert keys.verify_signed(SIGNER.public_key, d1, c1, p1, sig)
    same_bytes = keys.signing_bytes(d1, c1, p1) == keys.signing_bytes(d2, c2, p2)
    assert same_bytes == ((d1, c1, keys.codec.encode(p1)) == (d2, c2, keys.codec.encode(p2)))
    assert keys.verify_signed(SIGNER.public_key, d2, c2, p2, sig) == same_bytes


def test_slash_in_domain_or_chain_cannot_shift_the_boundary() -> None:
    assert keys.signing_bytes("tx", "a/b", 1) != keys.signing_bytes("tx/a", "b", 1)
    sig = SIGNER.sign_payload("tx", "a/b", 1)
    assert not keys.verify_signed(SIGNER.public_key, "tx/a", "b", 1, sig)


@given(st.binary(max_size=40), st.binary(max_size=70), st.binary(max_size=20))
def test_verify_never_raises(public_key: bytes, sig: bytes, message: bytes) -> None:
    assert keys.verify(public_key, message, sig) in (False, True)


@given(st.binary(max_size=50), st.integers(0, 63), st.integers(0, 7))
def test_any_bit_flip_in_a_signature_fails(message: bytes, pos: int, bit: int) -> None:
    sig = bytearray(SIGNER.sign(message))
    assert keys.verify(SIGNER.public_key, message, bytes(sig))
    sig[pos] ^= 1 << bit
    assert not keys.verify(SIGNER.public_key, message, bytes(sig))


def test_keypair_guards_its_seed() -> None:
    for size in (0, 31, 33, 64):
        with pytest.raises(KeyFileError):
            KeyPair(bytes(size))
    k = KeyPair.generate()
    assert k.seed.hex() not in repr(k) and k.did in repr(k)
    assert KeyPair.generate().seed != k.seed


# --- key files -------------------------------------------------------------------------------------------

@pytest.fixture
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at its minimum cost: the files are the same format, written in microseconds, not a second."""
    monkeypatch.setattr(nacl.pwhash.argon2id, "OPSLIMIT_MODERATE", nacl.pwhash.argon2id.OPSLIMIT_MIN)
    monkeypatch.setattr(nacl.pwhash.argon2id, "MEMLIMIT_MODERATE", nacl.pwhash.argon2id.MEMLIMIT_MIN)
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_plain_key_file_round_trip(tmp_path: Path) -> None:
    k = KeyPair.generate()
    path = tmp_path / "k.json"
    keys.write_key_file(path, k)
    assert mode(path) == 0o600
    doc = json.loads(path.read_text())
    assert doc == {"format": "ler-key/1", "did": k.did, "seed": k.seed.hex()}
    assert keys.read_key_file(path) == k
    assert keys.read_key_file_did(path) == k.did
    assert not keys.is_encrypted(path)


def test_key_file_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        keys.write_key_file(tmp_path / "a", KeyPair.generate())
        (tmp_path / "b").write_text("old")
        os.chmod(tmp_path / "b", 0o666)
        keys.write_key_file(tmp_path / "b", KeyPair.generate(), overwrite=True)
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == 0o600
    assert mode(tmp_path / "b") == 0o600


def test_key_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    first, second = KeyPair.generate(), KeyPair.generate()
    keys.write_key_file(path, first)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="exists"):
        keys.write_key_file(path, second)
    assert path.read_bytes() == before
    keys.write_key_file(path, second, overwrite=True)
    assert keys.read_key_file(path) == second


def test_key_file_unwritable_place(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        keys.write_key_file(tmp_path / "no" / "such" / "dir" / "k.json", KeyPair.generate())


def test_encrypted_key_file_round_trip(tmp_path: Path, fast_kdf: None) -> None:
    k = KeyPair.generate()
    path = tmp_path / "k.json"
    keys.write_key_file(path, k, passphrase="correct horse")
    assert mode(path) == 0o600
    text = path.read_text()
    assert k.seed.hex() not in text and "seed" not in json.loads(text)
    assert keys.is_encrypted(path)
    assert keys.read_key_file_did(path) == k.did  # readable without the passphrase
    assert keys.read_key_file(path, "correct horse") == k
    # fresh salt and nonce each time
    keys.write_key_file(tmp_path / "k2.json", k, passphrase="correct horse")
    e1, e2 = (json.loads((tmp_path / n).read_text())["encrypted"] for n in ("k.json", "k2.json"))
    assert e1["salt"] != e2["salt"] and e1["nonce"] != e2["nonce"] and e1["ciphertext"] != e2["ciphertext"]


def test_encrypted_key_file_passphrase_from_environment(tmp_path: Path, fast_kdf: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    k = KeyPair.generate()
    path = tmp_path / "k.json"
    keys.write_key_file(path, k, passphrase="pässwörd")
    with pytest.raises(KeyFileError, match="encrypted"):
        keys.read_key_file(path)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "pässwörd")
    assert keys.read_key_file(path) == k
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong")
    with pytest.raises(KeyFileError):
        keys.read_key_file(path)
    assert keys.read_key_file(path, "pässwörd") == k  # an explicit passphrase wins


def test_encrypted_key_file_uses_moderate_argon2id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one test at the real cost (about a second): the file records the parameters it was sealed with.
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    k = KeyPair.generate()
    path = tmp_path / "k.json"
    keys.write_key_file(path, k, passphrase="pw")
    enc = json.loads(path.read_text())["encrypted"]
    assert enc["kdf"] == "argon2id"
    assert enc["opslimit"] == nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    assert enc["memlimit"] == nacl.pwhash.argon2id.MEMLIMIT_MODERATE
    assert len(bytes.fromhex(enc["salt"])) == nacl.pwhash.argon2id.SALTBYTES
    assert len(bytes.fromhex(enc["nonce"])) == 24
    assert keys.read_key_file(path, "pw") == k


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        keys.write_key_file(tmp_path / "k.json", KeyPair.generate(), passphrase="")
    assert not (tmp_path / "k.json").exists()


@pytest.mark.parametrize("wrong", ["Correct horse", "correct horse ", "", "x" * 1000])
def test_wrong_passphrase(tmp_path: Path, fast_kdf: None, wrong: str) -> None:
    path = tmp_path / "k.json"
    keys.write_key_file(path, KeyPair.generate(), passphrase="correct horse")
    with pytest.raises(KeyFileError, match="passphrase"):
        keys.read_key_file(path, wrong)


def rewrite(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def flip_hex(h: str, i: int) -> str:
    raw = bytearray(bytes.fromhex(h))
    raw[i % len(raw)] ^= 0x01
    return raw.hex()


@pytest.fixture
def encrypted(tmp_path: Path, fast_kdf: None) -> tuple[Path, KeyPair]:
    k = KeyPair.generate()
    path = tmp_path / "k.json"
    keys.write_key_file(path, k, passphrase="pw")
    return path, k


def test_every_tampered_ciphertext_byte_is_detected(encrypted: tuple[Path, KeyPair]) -> None:
    path, _ = encrypted
    original = json.loads(path.read_text())
    n = len(bytes.fromhex(original["encrypted"]["ciphertext"]))
    assert n == 32 + 16  # the seed and the Poly1305 tag
    for i in range(n):
        path.write_text(json.dumps(original))
        rewrite(path, lambda d, i=i: d["encrypted"].update(ciphertext=flip_hex(d["encrypted"]["ciphertext"], i)))
        with pytest.raises(KeyFileError):
            keys.read_key_file(path, "pw")


@pytest.mark.parametrize("change", [
    lambda d: d["encrypted"].update(nonce=flip_hex(d["encrypted"]["nonce"], 3)),
    lambda d: d["encrypted"].update(salt=flip_hex(d["encrypted"]["salt"], 0)),
    lambda d: d["encrypted"].update(ciphertext=d["encrypted"]["ciphertext"][:-2]),
    lambda d: d["encrypted"].update(ciphertext=""),
    lambda d: d["encrypted"].update(nonce="00"),
    lambda d: d["encrypted"].update(salt="zz"),
    lambda d: d["encrypted"].update(kdf="scrypt"),
    lambda d: d["encrypted"].update(opslimit="many"),
    lambda d: d["encrypted"].update(memlimit=None),
    lambda d: d["encrypted"].pop("nonce"),
    lambda d: d["encrypted"].pop("kdf"),
    lambda d: d.update(encrypted="secret"),
    lambda d: d.update(encrypted=None),
    lambda d: d.update(encrypted=[]),
    lambda d: d.update(did=KeyPair.generate().did),   # the did no longer matches the sealed seed
])
def test_tampered_encrypted_key_file(encrypted: tuple[Path, KeyPair], change: Any) -> None:
    path, _ = encrypted
    rewrite(path, change)
    with pytest.raises(KeyFileError):
        keys.read_key_file(path, "pw")


@pytest.mark.parametrize("change", [
    lambda d: d.update(did=KeyPair.generate().did),
    lambda d: d.update(did="did:key:zNotAKey"),
    lambda d: d.pop("did"),
    lambda d: d.update(seed=d["seed"][:-2]),
    lambda d: d.update(seed=d["seed"] + "00"),
    lambda d: d.update(seed="xyz"),
    lambda d: d.update(seed=None),
    lambda d: d.update(seed=7),
    lambda d: d.pop("seed"),
    lambda d: d.update(format="ler-key/2"),
    lambda d: d.pop("format"),
])
def test_tampered_plain_key_file(tmp_path: Path, change: Any) -> None:
    path = tmp_path / "k.json"
    keys.write_key_file(path, KeyPair.generate())
    rewrite(path, change)
    with pytest.raises(KeyFileError):
        keys.read_key_file(path)


@pytest.mark.parametrize("did", [None, "", "did:key:zNotAKey", 5, ["did:key:z6Mk"]])
def test_key_file_with_a_bad_did_cannot_be_shown(tmp_path: Path, did: Any) -> None:
    path = tmp_path / "k.json"
    keys.write_key_file(path, KeyPair.generate())
    rewrite(path, lambda d: d.update(did=did))
    with pytest.raises(KeyFileError):
        keys.read_key_file_did(path)


@pytest.mark.parametrize("content", [
    b"", b"not json", b"\xff\xfe\x00", b"[]", b"null", b"42", b'"ler-key/1"', b"{}", b'{"format": "x"}',
    b"[" * 50_000, b'{"a":' * 30_000, b"{" + b" " * (65 * 1024) + b"}",
])
def test_garbage_key_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    for read in (keys.read_key_file, keys.read_key_file_did, keys.is_encrypted):
        with pytest.raises(KeyFileError):
            read(path)


@settings(max_examples=80)
@given(st.binary(max_size=200))
def test_random_bytes_are_never_a_key_file(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    path = tmp_path_factory.mktemp("garbage") / "k.json"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        keys.read_key_file(path, "pw")


def test_missing_and_unreadable_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        keys.read_key_file(tmp_path / "absent.json")
    with pytest.raises(KeyFileError):
        keys.read_key_file(tmp_path)  # a directory
