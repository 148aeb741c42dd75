"""RFC 6962/9162 Merkle code against transparency-dev/merkle's golden vectors
(tests/vectors/rfc6962, see tests/vectors/README.md), plus properties checked
with Hypothesis."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iclaim.audit import merkle
from iclaim.audit.merkle import MemoryTree, MerkleError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc6962"


def _cases(kind: str) -> list[Path]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert files, f"no {kind} vectors under {VECTORS}"
    return files


def _b(x: str) -> bytes:
    return base64.b64decode(x)


def test_vector_counts_are_complete() -> None:
    # Guards against a silently moved folder turning every case into a no-op.
    assert len(_cases("inclusion")) >= 80
    assert len(_cases("consistency")) >= 90


@pytest.mark.parametrize("path", _cases("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vectors(path: Path) -> None:
    c = json.loads(path.read_text())
    proof = [_b(p) for p in c["proof"] or []]
    args = (c["leafIdx"], c["treeSize"], _b(c["leafHash"]), proof, _b(c["root"]))
    if c["wantErr"]:
        with pytest.raises(MerkleError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vectors(path: Path) -> None:
    c = json.loads(path.read_text())
    proof = [_b(p) for p in c["proof"] or []]
    args = (c["size1"], c["size2"], proof, _b(c["root1"]), _b(c["root2"]))
    if c["wantErr"]:
        with pytest.raises(MerkleError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def _reference() -> tuple[list[bytes], list[bytes]]:
    doc = json.loads((VECTORS / "roots.json").read_text())
    leaves = [merkle.leaf_hash(bytes.fromhex(h)) for h in doc["leaf_inputs_hex"]]
    return leaves, [bytes.fromhex(r) for r in doc["root_hex_by_tree_size"]]


def test_roots_for_sizes_0_to_8() -> None:
    leaves, roots = _reference()
    assert len(roots) == 9
    tree = MemoryTree()
    for size in range(9):
        assert merkle.root_of(leaves[:size]) == roots[size]
        assert tree.root() == roots[size]
        assert tree.range.root() == roots[size]
        if size < 8:
            tree.append(leaves[size])


def test_generated_proofs_match_reference_roots() -> None:
    leaves, roots = _reference()
    tree = MemoryTree()
    for h in leaves:
        tree.append(h)
    for size in range(1, 9):
        for i in range(size):
            merkle.verify_inclusion(i, size, leaves[i], tree.inclusion_proof(i, size), roots[size])
        for m in range(1, size + 1):
            merkle.verify_consistency(m, size, tree.consistency_proof(m, size), roots[m], roots[size])


def test_proof_lengths_are_logarithmic() -> None:
    n = 1_000_000
    assert len(merkle.inclusion_ranges(123_456, n)) <= 20
    assert len(merkle.consistency_ranges(777_777, n)) <= 21
    nodes = merkle.nodes_for(merkle.inclusion_ranges(999_999, n))
    assert len(nodes) <= 2 * 20


def _leaf(i: int) -> bytes:
    return merkle.leaf_hash(i.to_bytes(8, "big"))


_BIG = MemoryTree()
for _i in range(10_000):
    _BIG.append(_leaf(_i))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_random_pairs_up_to_10000(pair: tuple[int, int]) -> None:
    m, n = pair
    proof = _BIG.consistency_proof(m, n)
    r1, r2 = _BIG.root(m), _BIG.root(n)
    merkle.verify_consistency(m, n, proof, r1, r2)
    # The same proof must not vouch for a different old root or a longer/shorter log.
    with pytest.raises(MerkleError):
        merkle.verify_consistency(m, n, proof, merkle.node_hash(r1, r1), r2)
    if m < n:
        with pytest.raises(MerkleError):
            merkle.verify_consistency(m, n, proof, r1, merkle.node_hash(r2, r2))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))))
def test_inclusion_random_leaves_up_to_10000(pair: tuple[int, int]) -> None:
    i, n = pair
    proof = _BIG.inclusion_proof(i, n)
    merkle.verify_inclusion(i, n, _leaf(i), proof, _BIG.root(n))
    with pytest.raises(MerkleError):
        merkle.verify_inclusion(i, n, _leaf(i + 1), proof, _BIG.root(n))


def test_root_of_matches_compact_range_for_many_sizes() -> None:
    hashes = [_leaf(i) for i in range(300)]
    for n in range(300):
        assert merkle.root_of(hashes[:n]) == _BIG.root(n)
