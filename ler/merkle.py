"""Merkle Tree Hash, inclusion proofs and consistency proofs exactly as RFC 9162 section 2.1 (RFC 6962).

Pure functions over SHA-256, no I/O. A log commits to an ordered list of entries with `root`; a holder of
one entry checks that it is in the log with `verify_inclusion`, and a client that saw an older root checks
that the log only grew (nothing rewritten or dropped) with `verify_consistency`.

Names follow the RFC: MTH is `root`, PATH is `inclusion_proof`, PROOF/SUBPROOF is `consistency_proof`.
Generation works on the list of leaf hashes, iteratively and in O(n) hashes per call, so a million-leaf
tree costs no recursion depth and no repeated re-hashing. Verification follows the RFC's bit-shifting
algorithms (2.1.3.2 and 2.1.4.2) and answers False, never raises, for malformed input of any kind: the
inputs usually come straight from the network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

HASH_SIZE = 32

#: MTH({}): the hash of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()
_NODE = b"\x01"
_BYTES, _HASH_LEN = {bytes}, {HASH_SIZE}


def leaf_hash(data: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0)). The 0x00 prefix keeps a leaf from posing as an inner node."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an inner node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k, the largest power of two smaller than n (n >= 2): where RFC 9162 splits D[n]."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) from leaf hashes, without recursion.

    Leaves are pushed left to right; after the c-th push the stack is merged once per trailing zero bit
    of c, so it always holds the perfect subtrees of the prefix, largest first. Folding that stack from
    the right then gives the RFC's result, because the RFC's split k is exactly the largest of them.
    """
    if hi <= lo:
        return EMPTY_ROOT
    stack: list[bytes] = []
    for count, i in enumerate(range(lo, hi), start=1):
        h = hashes[i]
        while not count & 1:
            h = node_hash(stack.pop(), h)
            count >>= 1
        stack.append(h)
    h = stack.pop()
    while stack:
        h = node_hash(stack.pop(), h)
    return h


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over the raw leaf data."""
    return root_from_leaf_hashes([leaf_hash(d) for d in leaves])


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) when the leaf hashes are already known. O(n) hashes, iterative."""
    return _mth(hashes, 0, len(hashes))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) over the raw leaf data (RFC 9162 2.1.3.1)."""
    return inclusion_proof_from_hashes([leaf_hash(d) for d in leaves], index)


def inclusion_proof_from_hashes(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) from leaf hashes. Fewer than n hashes (the siblings are disjoint subtrees).
    Raises ValueError for an index outside the tree."""
    return inclusion_path(index, len(hashes), lambda lo, hi: _mth(hashes, lo, hi))


def inclusion_path(index: int, size: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    """PATH(index, D[size]) given `subtree(lo, hi)` = MTH(D[lo:hi]), whatever stores the tree.

    The RFC's recursion is walked top-down as a loop, asking only for the sibling subtrees. Raises
    ValueError for an index outside the tree.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of {size} leaves")
    lo, hi = 0, size
    top_down: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            top_down.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            top_down.append(subtree(lo, lo + k))
            lo += k
    # PATH lists the deepest sibling first: PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]).
    top_down.reverse()
    return top_down


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) over the raw leaf data (RFC 9162 2.1.4.1)."""
    return consistency_proof_from_hashes([leaf_hash(d) for d in leaves], old_size)


def consistency_proof_from_hashes(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) = SUBPROOF(old_size, D[n], true) from leaf hashes; fewer than n hashes.
    Empty when old_size is 0 or n (see `verify_consistency`); ValueError when it is not in [0, n]."""
    return consistency_path(old_size, len(hashes), lambda lo, hi: _mth(hashes, lo, hi))


def consistency_path(old_size: int, size: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    """PROOF(old_size, D[size]) given `subtree(lo, hi)` = MTH(D[lo:hi]), iteratively."""
    if not 0 <= old_size <= size:
        raise ValueError(f"old size {old_size} is outside [0, {size}]")
    if old_size in (0, size):
        return []
    m, lo, hi = old_size, 0, size
    whole_old_root_known = True  # SUBPROOF's flag b
    top_down: list[bytes] = []
    while True:
        n = hi - lo
        if m == n:
            # The old tree's subtree sits whole inside the new tree. The verifier already holds it
            # when it is the old root itself (b true); otherwise it must be sent.
            if not whole_old_root_known:
                top_down.append(subtree(lo, hi))
            break
        k = _split(n)
        if m <= k:
            top_down.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            top_down.append(subtree(lo, lo + k))
            lo += k
            m -= k
            whole_old_root_known = False
    # SUBPROOF appends the outer hash after the inner proof, so the innermost comes first.
    top_down.reverse()
    return top_down


def _is_hash(x: Any) -> bool:
    return isinstance(x, bytes) and len(x) == HASH_SIZE


def _is_size(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_proof(proof: Any, size: int) -> bool:
    # No valid proof is longer than the tree is tall (plus one for a consistency proof's first
    # element); refusing longer input before looking at the elements bounds the work a hostile proof costs.
    if not (isinstance(proof, list | tuple) and len(proof) <= size.bit_length() + 1):
        return False
    # One C-speed pass for the usual case (exact bytes, all 32 long); item by item otherwise.
    return (set(map(type, proof)) <= _BYTES and set(map(len, proof)) <= _HASH_LEN) or all(
        isinstance(p, bytes) and len(p) == HASH_SIZE for p in proof)


def root_from_inclusion_proof(leaf_hash: bytes, index: int, size: int,
                              proof: Sequence[bytes]) -> bytes | None:
    """The root an inclusion proof leads to (RFC 9162 2.1.3.2 steps 1-5), or None if it is malformed.

    Precondition checked here: 0 <= index < size, every element a 32-byte hash, and the proof exactly
    as long as the path from the leaf to the root of a tree of `size` leaves.
    """
    if not (_is_hash(leaf_hash) and _is_size(index) and _is_size(size) and index < size
            and _is_proof(proof, size)):
        return None
    fn, sn = index, size - 1
    r = leaf_hash
    sha256 = hashlib.sha256
    for p in proof:
        if sn == 0:
            return None  # more elements than levels
        if fn & 1 or fn == sn:
            r = sha256(_NODE + p + r).digest()  # node_hash(p, r)
            if not fn & 1:
                # fn is the last node of its level and has no right sibling: climb until it is a right
                # child (or the left edge), skipping the levels where it was carried up unchanged.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(_NODE + r + p).digest()  # node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None  # fewer elements than levels
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True iff `proof` shows the leaf with hash `leaf_hash` at `index` in the tree of `size` with `root`.

    A root does not pin down its tree's size (the proof for leaf 1 of 5 also fits "leaf 1 of 6" under
    the same root), so `size` must come from the same signed head as `root`, never from the prover.
    """
    if not _is_hash(root):
        return False
    got = root_from_inclusion_proof(leaf_hash, index, size, proof)
    return got is not None and got == root


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes],
                       old_root: bytes, new_root: bytes) -> bool:
    """True iff `proof` shows the tree (old_size, old_root) is a prefix of (new_size, new_root).

    RFC 9162 2.1.4.2 for 0 < old_size < new_size. The cases the RFC leaves to the caller:
    - old_size == new_size: consistent iff the proof is empty and the roots are equal;
    - old_size == 0: the empty tree is a prefix of every tree, so consistent iff the proof is empty and
      old_root is EMPTY_ROOT (the only root an empty tree has; any other claimed root is a lie);
    - old_size > new_size, negative or non-int sizes, non-hash roots or elements: False.
    """
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size
            and _is_hash(old_root) and _is_hash(new_root) and _is_proof(proof, new_size)):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root and (old_size > 0 or old_root == EMPTY_ROOT)
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    # Step 1: a non-trivial proof is never empty.
    if not proof:
        return False
    path = list(proof)
    # Step 2: when the old tree is a perfect subtree, its root is the proof's implied first element.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # Steps 3-4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    return sn == 0 and fr == old_root and sr == new_root
