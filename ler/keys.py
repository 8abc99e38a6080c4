"""Ed25519 identities as did:key, domain-separated signatures, and key files.

A did:key here is "did:key:z" + base58btc(0xed 0x01 || 32-byte Ed25519 public key): multicodec
ed25519-pub, so every such did starts "did:key:z6Mk".

Every signature in the protocol is over `signing_bytes(domain, chain_id, payload)`: the canonical
encoding of [domain, chain_id, payload]. The domain says what the signature is for ("tx", "vote",
"presentation", ...), so a signature made for one purpose, or for one network, is never valid for
another.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import base58
import nacl._sodium  # libsodium itself, initialised by nacl.bindings on import
import nacl.bindings
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

from ler import codec
from ler.errors import DecodeError, KeyFileError
from ler.files import read_capped
from ler.native import load
from ler.wire import packb

ED25519_MULTICODEC = b"\xed\x01"
DID_KEY_PREFIX = "did:key:z"
PROTOCOL_TAG = "ler/1"
_sodium, _ffi = nacl._sodium.lib, nacl._sodium.ffi  # what nacl.bindings.crypto_sign_open calls
_tls = threading.local()
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# SHA-256 in one C call where ler/_tx_native.c is built: a fifth of hashlib's time for the short inputs a
# node hashes most (transaction ids, state keys).
sha256 = getattr(load("ler._tx_native", "LER_TX_IN_PYTHON"), "sha256", None) or sha256


def did_from_public_key(public_key: bytes) -> str:
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise DecodeError("an Ed25519 public key is 32 bytes")
    return _did_of(public_key)


@functools.lru_cache(maxsize=8192)  # base58 is slow in Python; the same few keys recur everywhere
def _did_of(public_key: bytes) -> str:
    return DID_KEY_PREFIX + base58.b58encode(ED25519_MULTICODEC + public_key).decode("ascii")


def public_key_from_did(did: str) -> bytes:
    """The 32-byte Ed25519 key inside a did:key; DecodeError for any other did."""
    if not isinstance(did, str):
        raise DecodeError(f"not a did:key identifier: {str(did)[:80]!r}")
    return _key_of(did)


_B58_TABLE = bytearray(b"\xff" * 256)  # ASCII byte -> base-58 digit, 0xff for any other byte
for _i, _c in enumerate(b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"):
    _B58_TABLE[_c] = _i
_ED25519_DID_LEN = len(DID_KEY_PREFIX) + 47  # 0xed01 || key is below 58**47 and above 58**46
_MULTICODEC_VALUE = int.from_bytes(ED25519_MULTICODEC, "big")


def _usual_digits(did: str) -> bytes | None:
    """The 47 base-58 digit values of a did:key in its usual (Ed25519) form, or None for any other text."""
    if type(did) is str and len(did) == _ED25519_DID_LEN and did.startswith(DID_KEY_PREFIX) and did.isascii():
        digits = did[len(DID_KEY_PREFIX):].encode("ascii").translate(_B58_TABLE)
        if 0xFF not in digits:
            return digits
    return None


_HEAD_DIGITS = 12  # digits read exactly by `check_did_key`; the other 35 only bound the value
_TAIL_SCALE = 58 ** (47 - _HEAD_DIGITS)
_DID_VALUE_MIN = _MULTICODEC_VALUE << 256  # a did's number is 0xed01 || key: at least this ...
_DID_VALUE_END = (_MULTICODEC_VALUE + 1) << 256  # ... and below this


def check_did_key(did: str) -> None:
    """That `did` is a did:key of an Ed25519 key (as `public_key_from_did` would accept), without
    computing the key: for dids that are only named, such as a record's holder (nearly every one new).

    The usual form's 47 digits are a number whose top bits must be the multicodec 0xed01. The first
    twelve digits fix that number to within 58**35, far less than the 2**256 the key spans, so they decide
    unless the number lies that close to an end of the range (then, and for any other form, the key is
    computed, which also names what is wrong). Twelve digits of equal length compare as their numbers
    do, so the test is two comparisons of byte strings."""
    digits = _usual_digits(did)
    if digits is not None and _HEAD_LOW <= digits[:_HEAD_DIGITS] <= _HEAD_HIGH:
        return
    public_key_from_did(did)


def _twelve_digits(n: int) -> bytes:
    out = bytearray(_HEAD_DIGITS)
    for i in range(_HEAD_DIGITS - 1, -1, -1):
        n, out[i] = divmod(n, 58)
    assert n == 0
    return bytes(out)


# The heads h whose numbers [h * 58**35, (h + 1) * 58**35) lie wholly inside [_DID_VALUE_MIN, _DID_VALUE_END).
_HEAD_LOW = _twelve_digits(-(-_DID_VALUE_MIN // _TAIL_SCALE))
_HEAD_HIGH = _twelve_digits(_DID_VALUE_END // _TAIL_SCALE - 1)


@functools.lru_cache(maxsize=8192)
def _key_of(did: str) -> bytes:
    # Every record names its holder by did, so most are new to this cache. The usual form is read as one
    # base-58 number; it is canonical by construction (47 digits whose value starts with the multicodec
    # bytes, so no leading zero digit: no other spelling of the same 34 bytes exists). Anything else takes
    # the general path, which says what is wrong.
    digits = _usual_digits(did)
    if digits is not None:
        n = 0
        for d in digits:
            n = n * 58 + d
        if n >> 256 == _MULTICODEC_VALUE:
            return (n & ((1 << 256) - 1)).to_bytes(32, "big")
    if not did.startswith(DID_KEY_PREFIX):
        raise DecodeError(f"not a did:key identifier: {str(did)[:80]!r}")
    if len(did) > 64:
        raise DecodeError("did:key identifier too long")
    try:
        raw = base58.b58decode(did[len(DID_KEY_PREFIX):])
    except ValueError:
        raise DecodeError("did:key is not valid base58btc") from None
    if len(raw) != 34 or raw[:2] != ED25519_MULTICODEC:
        raise DecodeError("did:key does not hold an Ed25519 public key (multicodec 0xed01)")
    key = raw[2:]
    if did_from_public_key(key) != did:
        raise DecodeError("did:key is not in canonical form")
    return key


def signing_bytes(domain: str, chain_id: str, payload: Any) -> bytes:
    """The exact bytes every protocol signature covers."""
    if type(payload) is dict and type(domain) is str and type(chain_id) is str:
        # A flat payload (votes, presentations): ASCII keys, scalar values. Its canonical encoding is
        # msgpack's own once the keys are sorted, so the generic walk is skipped.
        for k, v in payload.items():
            t = type(v)
            if not (type(k) is str and k.isascii() and (t is bytes or t is str or v is None or t is bool
                                                        or (t is int and _INT_MIN <= v <= _INT_MAX))):
                break
        else:
            try:
                return packb([PROTOCOL_TAG + "/" + domain, chain_id, {k: payload[k] for k in sorted(payload)}])
            except UnicodeEncodeError:
                pass  # a lone surrogate: codec.encode below says so
    return codec.encode([PROTOCOL_TAG + "/" + domain, chain_id, payload])


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    if type(public_key) is bytes and type(signature) is bytes and type(message) is bytes:
        # What VerifyKey(public_key).verify(message, signature) does once its argument checks pass
        # (libsodium's crypto_sign_open on signature || message), without building the key object or a
        # fresh output buffer per call: the opened message is not needed, only the verdict.
        signed = signature + message
        try:
            buf, out_len = _tls.open_buffer
        except AttributeError:
            buf, out_len = _tls.open_buffer = (_ffi.new("unsigned char[]", 4096), _ffi.new("unsigned long long *"))
        if len(signed) > len(buf):
            buf, out_len = _tls.open_buffer = (_ffi.new("unsigned char[]", len(signed)), out_len)
        return bool(_sodium.crypto_sign_open(buf, out_len, signed, len(signed), public_key) == 0)
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False


def verify_signed(public_key: bytes, domain: str, chain_id: str, payload: Any, signature: bytes) -> bool:
    return verify(public_key, signing_bytes(domain, chain_id, payload), signature)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An Ed25519 signing key with its public half and did."""

    seed: bytes
    # Derived once: expanding the seed is an elliptic-curve multiplication (a node asks for its public
    # key and signs many times a second).
    _signing_key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)
    public_key: bytes = field(init=False, repr=False, compare=False)
    did: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.seed) is not bytes or len(self.seed) != 32:
            raise KeyFileError("an Ed25519 seed is 32 bytes")
        signing_key = nacl.signing.SigningKey(self.seed)
        public_key = bytes(signing_key.verify_key)
        object.__setattr__(self, "_signing_key", signing_key)
        object.__setattr__(self, "public_key", public_key)
        object.__setattr__(self, "did", did_from_public_key(public_key))

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.utils.random(32))

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature

    def sign_payload(self, domain: str, chain_id: str, payload: Any) -> bytes:
        return self.sign(signing_bytes(domain, chain_id, payload))

    def __repr__(self) -> str:  # never print the seed
        return f"KeyPair({self.did})"


# --- key files -------------------------------------------------------------------------------------
#
# Plain:      {"format": "ler-key/1", "did": ..., "seed": hex}
# Encrypted:  {"format": "ler-key/1", "did": ..., "encrypted": {"kdf": "argon2id", "salt": hex,
#              "opslimit": int, "memlimit": int, "nonce": hex, "ciphertext": hex}}
# The ciphertext is libsodium secretbox (XSalsa20-Poly1305) of the seed under a key derived from the
# passphrase with Argon2id. The did is stored in clear so a key can be shown without its passphrase.

KEY_FORMAT = "ler-key/1"
PASSPHRASE_ENV = "LER_KEY_PASSPHRASE"


def write_key_file(path: str | os.PathLike[str], key: KeyPair, passphrase: str | None = None,
                   *, overwrite: bool = False) -> None:
    """Write `key` to `path` with mode 0600 (created that way, never world-readable for an instant)."""
    doc: dict[str, Any] = {"format": KEY_FORMAT, "did": key.did}
    if passphrase is not None:
        if not passphrase:
            raise KeyFileError("the passphrase is empty")
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        ops = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
        mem = nacl.pwhash.argon2id.MEMLIMIT_MODERATE
        box_key = nacl.pwhash.argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"),
                                           salt, opslimit=ops, memlimit=mem)
        nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
        ct = nacl.secret.SecretBox(box_key).encrypt(key.seed, nonce).ciphertext
        doc["encrypted"] = {"kdf": "argon2id", "salt": salt.hex(), "opslimit": ops, "memlimit": mem,
                            "nonce": nonce.hex(), "ciphertext": ct.hex()}
    else:
        doc["seed"] = key.seed.hex()
    data = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


def read_key_file_did(path: str | os.PathLike[str]) -> str:
    """The did a key file declares, without decrypting it."""
    doc = _load_key_doc(path)
    did = doc.get("did")
    try:
        public_key_from_did(did)  # type: ignore[arg-type]
    except DecodeError as exc:
        raise KeyFileError(f"{path}: the key file's did is not valid: {exc}") from None
    return str(did)


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    return "encrypted" in _load_key_doc(path)


def read_key_file(path: str | os.PathLike[str], passphrase: str | None = None) -> KeyPair:
    """Load a key file. An encrypted one needs `passphrase` (or $LER_KEY_PASSPHRASE)."""
    doc = _load_key_doc(path)
    if "encrypted" in doc:
        if passphrase is None:
            passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase is None:
            raise KeyFileError(f"{path} is encrypted: give its passphrase (prompt or ${PASSPHRASE_ENV})")
        enc = doc["encrypted"]
        try:
            if enc.get("kdf") != "argon2id":
                raise KeyFileError(f"{path}: unknown key derivation {enc.get('kdf')!r}")
            box_key = nacl.pwhash.argon2id.kdf(
                nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), bytes.fromhex(enc["salt"]),
                opslimit=int(enc["opslimit"]), memlimit=int(enc["memlimit"]))
            seed = nacl.secret.SecretBox(box_key).decrypt(bytes.fromhex(enc["ciphertext"]),
                                                          bytes.fromhex(enc["nonce"]))
        except nacl.exceptions.CryptoError:
            raise KeyFileError(f"{path}: wrong passphrase (or the file was altered)") from None
        except (KeyError, ValueError, TypeError, AttributeError):
            raise KeyFileError(f"{path}: malformed encrypted key") from None
    else:
        try:
            seed = bytes.fromhex(doc["seed"])
        except (KeyError, ValueError, TypeError):
            raise KeyFileError(f"{path}: no valid seed in key file") from None
    key = KeyPair(seed)
    if key.did != doc.get("did"):
        raise KeyFileError(f"{path}: the seed does not match the did the file declares")
    return key


def _load_key_doc(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        raw = read_capped(path, 64 * 1024)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} not found") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(raw) > 64 * 1024:
        raise KeyFileError(f"{path} is too large to be a key file")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, a number too long, too deep
        raise KeyFileError(f"{path} is not a key file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise KeyFileError(f"{path} is not a {KEY_FORMAT} key file")
    return doc
