"""The authenticated state's sparse Merkle tree: its hashing, its proof format, and proof verification.

The ledger's state is a map from 32-byte keys to byte values, committed to by one 32-byte root. This
module is everything a verifier needs, with no storage: `storage/smt.py` holds the tree itself.

The tree (the project's final format):
- Key bits are read from the most significant bit of key[0]: `bit(key, 0)` is (key[0] >> 7) & 1. At
  depth i a key with bit i = 0 goes left, 1 goes right; the root is depth 0.
- A subtree with no leaves hashes to EMPTY (32 zero bytes). A subtree with exactly one leaf hashes to
  that leaf's hash, SHA-256(0x00 || key || SHA-256(value)), so a leaf sits at the shallowest depth where
  it is alone. Any other subtree hashes to SHA-256(0x01 || left || right), a child possibly EMPTY.
- A proof for key k is the list of sibling hashes along k's path down to depth d and a terminal there:
  k's own leaf (membership); EMPTY (non-membership); or the leaf of another key k' that shares k's first
  d bits (non-membership: that subtree holds only k', so it cannot hold k).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ler.errors import DecodeError
from ler.keys import sha256
from ler.wire import Wire, b32, limit

KEY_SIZE = 32
HASH_SIZE = 32
MAX_DEPTH = 256
#: The largest value the tree holds: a proof must be able to carry it.
MAX_VALUE_BYTES = 65536

#: The hash of a subtree with no leaves, and so the root of the empty state.
EMPTY = bytes(HASH_SIZE)
_NODE = b"\x01"
_BYTES, _HASH_LEN = {bytes}, {HASH_SIZE}


_sha256 = sha256  # in one C call where ler/_tx_native.c is built (see ler/keys.py)


def bit(key: bytes, i: int) -> int:
    """Bit i of `key`, counted from the most significant bit of key[0]."""
    return (key[i >> 3] >> (7 - (i & 7))) & 1


def value_hash(value: bytes) -> bytes:
    return _sha256(value)


def leaf_hash_from_value_hash(key: bytes, value_digest: bytes) -> bytes:
    """SHA-256(0x00 || key || value_digest): a leaf's hash when only its value's hash is known."""
    return _sha256(b"\x00" + key + value_digest)


def leaf_hash(key: bytes, value: bytes) -> bytes:
    """SHA-256(0x00 || key || SHA-256(value)). Hashing the value first lets a non-membership proof
    stand on another leaf without carrying that leaf's whole value."""
    return leaf_hash_from_value_hash(key, value_hash(value))


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right). The 0x01 prefix keeps a node from posing as a leaf."""
    return _sha256(b"\x01" + left + right)


def key_for(namespace: str, ident: bytes) -> bytes:
    """The state key of `ident` in `namespace`: SHA-256(namespace || 0x00 || ident).

    The zero byte ends the namespace, so no (namespace, ident) pair can spell another's key.
    """
    return _sha256(namespace.encode("utf-8") + b"\x00" + ident)


def shares_prefix(a: bytes, b: bytes, bits: int) -> bool:
    """True iff the first `bits` bits of the 32-byte keys `a` and `b` are equal."""
    if bits <= 0:
        return True
    diff = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return diff >> (KEY_SIZE * 8 - bits) == 0


def _is_hash(x: object) -> bool:
    return isinstance(x, bytes) and len(x) == HASH_SIZE


@dataclass(frozen=True, slots=True)
class StateProof(Wire):
    """What the state holds at `key` under some root: a value (membership) or nothing.

    `siblings[i]` is the hash of the depth-i node's child that is off the key's path; the terminal sits at
    depth len(siblings). For membership `value` is set. For non-membership `value` is None and either
    `other_key` is None (the terminal is EMPTY) or `other_key`/`other_value_hash` name the one leaf of
    the terminal subtree.
    """

    key: bytes = b32()
    value: bytes | None = limit(max=MAX_VALUE_BYTES)
    siblings: tuple[bytes, ...] = limit(max=MAX_DEPTH)
    other_key: bytes | None = b32()
    other_value_hash: bytes | None = b32()

    def __post_init__(self) -> None:
        # Decoding has already checked types and sizes; these checks also cover direct construction and
        # the rules that tie fields together.
        if not isinstance(self.key, bytes) or len(self.key) != KEY_SIZE:
            raise DecodeError("StateProof.key: expected 32 bytes")
        if self.value is not None:
            if not isinstance(self.value, bytes):
                raise DecodeError("StateProof.value: expected bytes or nil")
            if len(self.value) > MAX_VALUE_BYTES:
                raise DecodeError(f"StateProof.value: longer than {MAX_VALUE_BYTES} bytes")
        if not isinstance(self.siblings, tuple):
            raise DecodeError("StateProof.siblings: expected a tuple of hashes")
        if len(self.siblings) > MAX_DEPTH:
            raise DecodeError(f"StateProof.siblings: more than {MAX_DEPTH} hashes")
        # One pass for the usual case (exact bytes of 32); otherwise item by item, naming the first bad one.
        if not (set(map(type, self.siblings)) <= _BYTES and set(map(len, self.siblings)) <= _HASH_LEN):
            for i, s in enumerate(self.siblings):
                if not _is_hash(s):
                    raise DecodeError(f"StateProof.siblings[{i}]: expected a 32-byte hash")
        if (self.other_key is None) != (self.other_value_hash is None):
            raise DecodeError("StateProof: other_key and other_value_hash come together or not at all")
        if self.other_key is not None:
            if self.value is not None:
                raise DecodeError("StateProof: a proof with a value cannot also name another leaf")
            if not isinstance(self.other_key, bytes) or len(self.other_key) != KEY_SIZE:
                raise DecodeError("StateProof.other_key: expected 32 bytes")
            if not _is_hash(self.other_value_hash):
                raise DecodeError("StateProof.other_value_hash: expected a 32-byte hash")

    @property
    def is_membership(self) -> bool:
        return self.value is not None

    @property
    def depth(self) -> int:
        return len(self.siblings)


def state_root_from_proof(proof: StateProof) -> bytes | None:
    """The root `proof` leads to, or None when it cannot belong to any tree.

    None for anything but a StateProof, and for an other-leaf terminal whose key equals `proof.key` or
    does not share its first d bits: such a leaf could not be the one leaf on the key's path at depth d.
    """
    if not isinstance(proof, StateProof):
        return None
    key, d = proof.key, len(proof.siblings)
    if proof.value is not None:
        h = leaf_hash(key, proof.value)
    elif proof.other_key is not None and proof.other_value_hash is not None:
        if proof.other_key == key or not shares_prefix(proof.other_key, key, d):
            return None
        h = leaf_hash_from_value_hash(proof.other_key, proof.other_value_hash)
    else:
        h = EMPTY
    if d:
        # Bits 0..d-1 of the key as one integer: bit i is (path >> (d - 1 - i)) & 1, so walking up from
        # depth d-1 to 0 reads them from the lowest bit. Same hashes as node_hash, without the calls.
        path = int.from_bytes(key, "big") >> (KEY_SIZE * 8 - d)
        sha256 = hashlib.sha256
        for sibling in reversed(proof.siblings):
            h = sha256(_NODE + sibling + h).digest() if path & 1 else sha256(_NODE + h + sibling).digest()
            path >>= 1
    return h


def verify_state_proof(root: bytes, proof: StateProof) -> bool:
    """True iff `proof` is a valid proof of its claim (value or absence at proof.key) under `root`."""
    if not _is_hash(root):
        return False
    got = state_root_from_proof(proof)
    return got is not None and got == root
