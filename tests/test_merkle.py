"""RFC 9162 Merkle trees: the published reference vectors, tampered proofs, and properties against a
direct transcription of the RFC's recursive definitions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ler.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    consistency_proof_from_hashes,
    inclusion_proof,
    inclusion_proof_from_hashes,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

H = bytes.fromhex

# --- reference vectors --------------------------------------------------------------------------------
# The test tree used by Certificate Transparency implementations, as published in transparency-dev/merkle
# (testonly/constants.go, testonly/reference_test.go, proof/verify_test.go, proof/proof_test.go).

LEAVES = [H(""), H("00"), H("10"), H("2021"), H("3031"), H("40414243"), H("5051525354555657"),
          H("606162636465666768696a6b6c6d6e6f")]

# ROOTS[n] is the root of the tree over LEAVES[:n].
ROOTS = [
    H("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    H("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    H("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    H("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    H("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    H("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# Hashes of the perfect subtrees of the 8-leaf tree, by level. Named as in proof_test.go's picture:
# leaves a..h (level 0, "j" is the 7th leaf), g h i on level 1, k l on level 2.
LEVEL0 = [
    H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
    H("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
    H("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
    H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    H("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
    H("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
    H("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
]
LEVEL1 = [
    H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
    H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
    H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
]
LEVEL2 = [
    H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
]
a, b, c, d, e, f, j, leaf7 = LEVEL0
g, h, i, level1_3 = LEVEL1
k, l8 = LEVEL2  # l8: the right half of the full 8-leaf tree

# (index, size, PATH). The first group is published as hashes; the second as node ids in proof_test.go,
# re-expressed here with the subtree hashes above.
INCLUSION_VECTORS = [
    (0, 1, []),
    (0, 2, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7")]),
    (1, 2, [H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")]),
    (2, 3, [H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (1, 5, [H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (0, 8, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (5, 8, [H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (1, 3, [a, c]),
    (4, 7, [f, j, k]),
    (5, 7, [e, j, k]),
    (6, 7, [i, k]),
    (2, 4, [d, g]),
    (3, 5, [c, g, e]),
    (3, 6, [c, g, i]),
    (4, 6, [f, k]),
]

# (old_size, new_size, PROOF), grouped as above.
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (1, 8, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (6, 7, [H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            H("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (1, 2, [b]),
    (1, 4, [b, h]),
    (1, 6, [b, h, i]),
    (2, 3, [c]),
    (2, 8, [h, l8]),
    (2, 4, [h]),
    (3, 5, [c, d, g, e]),
    (3, 6, [c, d, g, i]),
    (4, 6, [i]),
    (5, 7, [e, f, j, k]),
    (7, 8, [j, leaf7, i, k]),
]

SOME_HASH = H("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_hasher_vectors() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == ROOTS[0]
    assert leaf_hash(b"") == H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert leaf_hash(b"L123456") == H("395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56")
    assert node_hash(b"N123", b"N456") == H(
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb")
    assert [leaf_hash(x) for x in LEAVES] == LEVEL0


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    assert root(LEAVES[:size]) == ROOTS[size]
    assert root_from_leaf_hashes(LEVEL0[:size]) == ROOTS[size]


def test_perfect_subtree_hashes() -> None:
    assert LEVEL1 == [node_hash(LEVEL0[2 * x], LEVEL0[2 * x + 1]) for x in range(4)]
    assert LEVEL2 == [node_hash(LEVEL1[2 * x], LEVEL1[2 * x + 1]) for x in range(2)]
    assert node_hash(*LEVEL2) == ROOTS[8]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_VECTORS)
def test_reference_inclusion(index: int, size: int, path: list[bytes]) -> None:
    assert inclusion_proof(LEAVES[:size], index) == path
    assert inclusion_proof_from_hashes(LEVEL0[:size], index) == path
    assert root_from_inclusion_proof(LEVEL0[index], index, size, path) == ROOTS[size]
    assert verify_inclusion(LEVEL0[index], index, size, path, ROOTS[size])
    assert verify_inclusion(LEVEL0[index], index, size, tuple(path), ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_reference_consistency(old: int, new: int, proof: list[bytes]) -> None:
    assert consistency_proof(LEAVES[:new], old) == proof
    assert consistency_proof_from_hashes(LEVEL0[:new], old) == proof
    assert verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])


# --- tampering ----------------------------------------------------------------------------------------

def _flip(proof: list[bytes], pos: int, bit: int) -> list[bytes]:
    out = list(proof)
    out[pos] = bytes([out[pos][0] ^ (1 << bit)]) + out[pos][1:]
    return out


def _inclusion_probes(index: int, size: int, path: list[bytes], rt: bytes, lh: bytes) -> list:
    """Every way of damaging a good inclusion proof; none may verify."""
    probes = [
        (index - 1, size, path, rt, lh), (index + 1, size, path, rt, lh), (index ^ 2, size, path, rt, lh),
        (index, size * 2, path, rt, lh), (index, size // 2, path, rt, lh),
        (index, size, path, rt, leaf_hash(b"wrong leaf")), (index, size, path, rt, b"WrongLeaf"),
        (index, size, path, EMPTY_ROOT, lh), (index, size, path, SOME_HASH, lh),
        (index, size, [*path, b""], rt, lh), (index, size, [*path, rt], rt, lh),
        (index, size, [b"", *path], rt, lh), (index, size, [rt, *path], rt, lh),
        (index, size, [*path, SOME_HASH], rt, lh),
    ]
    for pos in range(len(path)):
        for bit in (0, 3, 7):
            probes.append((index, size, _flip(path, pos, bit), rt, lh))
    if path:
        probes.append((index, size, path[:-1], rt, lh))
        probes.append((index, size, path[1:], rt, lh))
    if len(path) > 1:
        probes.append((index, size, [path[0], SOME_HASH, *path[1:]], rt, lh))
        probes.append((index, size, list(reversed(path)), rt, lh))
    return probes


@pytest.mark.parametrize(("index", "size", "path"), [v for v in INCLUSION_VECTORS if v[2]])
def test_tampered_inclusion_proofs_rejected(index: int, size: int, path: list[bytes]) -> None:
    for p_index, p_size, p_path, p_root, p_leaf in _inclusion_probes(index, size, path, ROOTS[size],
                                                                      LEVEL0[index]):
        assert not verify_inclusion(p_leaf, p_index, p_size, p_path, p_root), (p_index, p_size, p_path)


def _consistency_probes(old: int, new: int, proof: list[bytes], r1: bytes, r2: bytes) -> list:
    probes = [
        (old - 1, new, proof, r1, r2), (old + 1, new, proof, r1, r2), (old ^ 2, new, proof, r1, r2),
        (old, new * 2, proof, r1, r2), (old, new // 2, proof, r1, r2),
        (old, new, proof, b"WrongRoot", r2), (old, new, proof, r1, b"WrongRoot"),
        (old, new, proof, SOME_HASH, r2), (old, new, proof, r1, SOME_HASH), (old, new, proof, r2, r1),
        (old, new, [], r1, r2),
        (old, new, [*proof, b""], r1, r2), (old, new, [*proof, r1], r1, r2), (old, new, [*proof, r2], r1, r2),
        (old, new, [b"", *proof], r1, r2), (old, new, [r1, *proof], r1, r2), (old, new, [r2, *proof], r1, r2),
        (old, new, [proof[0], *proof], r1, r2), (old, new, proof[:-1], r1, r2), (old, new, proof[1:], r1, r2),
    ]
    for pos in range(len(proof)):
        for bit in (0, 4, 7):
            probes.append((old, new, _flip(proof, pos, bit), r1, r2))
    return probes


@pytest.mark.parametrize(("old", "new", "proof"), [v for v in CONSISTENCY_VECTORS if v[2]])
def test_tampered_consistency_proofs_rejected(old: int, new: int, proof: list[bytes]) -> None:
    for p in _consistency_probes(old, new, proof, ROOTS[old], ROOTS[new]):
        assert not verify_consistency(*p), p[:3]


BAD_SIZES = [-1, 1.0, "3", None, True, 2**70]
BAD_PROOFS = [None, b"x" * 32, "abc", 5, iter([]), [None], ["00" * 32], [bytearray(32)], [b"\x00" * 31],
              [b"\x00" * 33], [[b"\x00" * 32]], {b"\x00" * 32}]


def test_malformed_inclusion_input_is_false_not_an_error() -> None:
    index, size, path = 5, 8, INCLUSION_VECTORS[6][2]
    rt, lh = ROOTS[8], LEVEL0[5]
    for bad in BAD_SIZES:
        assert not verify_inclusion(lh, bad, size, path, rt)
        assert not verify_inclusion(lh, index, bad, path, rt)
        assert root_from_inclusion_proof(lh, bad, size, path) is None
    for bad_proof in BAD_PROOFS:
        assert not verify_inclusion(lh, index, size, bad_proof, rt)
        assert root_from_inclusion_proof(lh, index, size, bad_proof) is None
    for bad_hash in (None, "", b"", lh[:31], lh + b"\x00", bytearray(lh), lh.hex()):
        assert not verify_inclusion(bad_hash, index, size, path, rt)
        assert not verify_inclusion(lh, index, size, path, bad_hash)
    # index out of range, and the degenerate sizes transparency-dev probes
    for p_index, p_size in [(8, 8), (9, 8), (0, 0), (1, 0), (2, 1)]:
        assert not verify_inclusion(SOME_HASH, p_index, p_size, [], EMPTY_ROOT)
        assert not verify_inclusion(SOME_HASH, p_index, p_size, [], SOME_HASH)
    # a huge proof costs nothing: it is refused by its length before its elements are looked at
    assert not verify_inclusion(lh, index, size, [SOME_HASH] * 10_000, rt)


def test_single_leaf_tree() -> None:
    lh = leaf_hash(b"data")
    assert root([b"data"]) == lh
    assert inclusion_proof([b"data"], 0) == []
    assert verify_inclusion(lh, 0, 1, [], lh)
    assert not verify_inclusion(lh, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], lh)
    assert not verify_inclusion(lh, 0, 1, [lh], node_hash(lh, lh))


def test_consistency_special_cases() -> None:
    r1, r2 = ROOTS[1], ROOTS[5]
    # the empty tree is a prefix of every tree, with an empty proof and its one true root
    assert verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    assert verify_consistency(0, 5, [], EMPTY_ROOT, r2)
    assert consistency_proof(LEAVES[:5], 0) == []
    assert not verify_consistency(0, 5, [], r1, r2)
    assert not verify_consistency(0, 5, [EMPTY_ROOT], EMPTY_ROOT, r2)
    assert not verify_consistency(0, 0, [], r1, r1)
    assert not verify_consistency(0, 0, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT)
    # equal sizes: equal roots and nothing else
    assert verify_consistency(5, 5, [], r2, r2)
    assert consistency_proof(LEAVES[:5], 5) == []
    assert not verify_consistency(5, 5, [], r1, r2)
    assert not verify_consistency(5, 5, [r2], r2, r2)
    # time travel and missing proofs
    assert not verify_consistency(1, 0, [], r1, EMPTY_ROOT)
    assert not verify_consistency(2, 1, [], ROOTS[2], r1)
    assert not verify_consistency(1, 2, [], r1, ROOTS[2])


def test_malformed_consistency_input_is_false_not_an_error() -> None:
    old, new, proof = CONSISTENCY_VECTORS[2]
    r1, r2 = ROOTS[old], ROOTS[new]
    for bad in BAD_SIZES:
        assert not verify_consistency(bad, new, proof, r1, r2)
        assert not verify_consistency(old, bad, proof, r1, r2)
    for bad_proof in BAD_PROOFS:
        assert not verify_consistency(old, new, bad_proof, r1, r2)
    for bad_hash in (None, b"", r1[:31], bytearray(r1), r1.hex()):
        assert not verify_consistency(old, new, proof, bad_hash, r2)
        assert not verify_consistency(old, new, proof, r1, bad_hash)
    assert not verify_consistency(old, new, [SOME_HASH] * 10_000, r1, r2)


def test_generation_refuses_impossible_requests() -> None:
    for index in (-1, 8, 100):
        with pytest.raises(ValueError):
            inclusion_proof(LEAVES, index)
    with pytest.raises(ValueError):
        inclusion_proof([], 0)
    for old in (-1, 9):
        with pytest.raises(ValueError):
            consistency_proof(LEAVES, old)


# --- properties against the RFC's recursive definitions ------------------------------------------------

def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = _k(len(hashes))
    return node_hash(ref_mth(hashes[:k]), ref_mth(hashes[k:]))


def ref_path(m: int, hashes: list[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = _k(len(hashes))
    if m < k:
        return [*ref_path(m, hashes[:k]), ref_mth(hashes[k:])]
    return [*ref_path(m - k, hashes[k:]), ref_mth(hashes[:k])]


def ref_subproof(m: int, hashes: list[bytes], whole: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if whole else [ref_mth(hashes)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, hashes[:k], whole), ref_mth(hashes[k:])]
    return [*ref_subproof(m - k, hashes[k:], False), ref_mth(hashes[:k])]


leaf_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_inclusion_proofs_match_the_rfc_and_verify(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [leaf_hash(x) for x in leaves]
    n = len(hashes)
    rt = root(leaves)
    assert rt == ref_mth(hashes) == root_from_leaf_hashes(hashes)
    index = data.draw(st.integers(0, n - 1))
    path = inclusion_proof(leaves, index)
    assert path == ref_path(index, hashes)
    assert verify_inclusion(hashes[index], index, n, path, rt)
    if path:
        pos = data.draw(st.integers(0, len(path) - 1))
        bit = data.draw(st.integers(0, 255))
        damaged = list(path)
        damaged[pos] = (int.from_bytes(damaged[pos], "big") ^ (1 << bit)).to_bytes(32, "big")
        assert not verify_inclusion(hashes[index], index, n, damaged, rt)
        assert not verify_inclusion(hashes[index], index, n, path[:-1], rt)
        assert not verify_inclusion(hashes[index], index, n, [*path, rt], rt)


@settings(max_examples=150, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_consistency_proofs_match_the_rfc_and_verify(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [leaf_hash(x) for x in leaves]
    n = len(hashes)
    old = data.draw(st.integers(0, n))
    proof = consistency_proof(leaves, old)
    if 0 < old < n:
        assert proof == ref_subproof(old, hashes, True)
    else:
        assert proof == []
    old_root, new_root = root(leaves[:old]), root(leaves)
    assert verify_consistency(old, n, proof, old_root, new_root)
    if proof:
        assert not verify_consistency(old, n, proof[:-1], old_root, new_root)
        assert not verify_consistency(old, n, proof, new_root, old_root)
        assert not verify_consistency(old, n, [*proof, new_root], old_root, new_root)


@settings(max_examples=200, deadline=None)
@given(hashes=st.lists(st.binary(min_size=32, max_size=32), max_size=300))
def test_iterative_root_equals_the_recursive_definition(hashes: list[bytes]) -> None:
    assert root_from_leaf_hashes(hashes) == ref_mth(hashes)


def test_every_proof_in_small_trees() -> None:
    """Exhaustive over all small trees: generation equals the RFC recursion, and everything verifies."""
    for n in range(1, 40):
        hashes = [leaf_hash(x.to_bytes(2, "big")) for x in range(n)]
        rt = root_from_leaf_hashes(hashes)
        for index in range(n):
            path = inclusion_proof_from_hashes(hashes, index)
            assert path == ref_path(index, hashes)
            assert verify_inclusion(hashes[index], index, n, path, rt)
        for old in range(1, n):
            proof = consistency_proof_from_hashes(hashes, old)
            assert proof == ref_subproof(old, hashes, True)
            assert verify_consistency(old, n, proof, root_from_leaf_hashes(hashes[:old]), rt)


def test_million_leaf_tree() -> None:
    """No recursion limit and no quadratic work: a tree of a million leaves is proved in about a second."""
    n = 1_000_000
    hashes = [x.to_bytes(32, "big") for x in range(n)]
    rt = root_from_leaf_hashes(hashes)
    index = 765_432
    path = inclusion_proof_from_hashes(hashes, index)
    assert len(path) == 20
    assert verify_inclusion(hashes[index], index, n, path, rt)
    old = 524_289
    proof = consistency_proof_from_hashes(hashes, old)
    assert verify_consistency(old, n, proof, root_from_leaf_hashes(hashes[:old]), rt)
