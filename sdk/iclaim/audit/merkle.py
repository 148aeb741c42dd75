"""RFC 6962 / RFC 9162 Merkle tree hashing, proof generation and verification.

Proofs are generated from *perfect subtree* hashes (node (level, idx) covers
leaves [idx*2^level, (idx+1)*2^level)), which a store keeps as they complete;
any proof then needs O(log n) of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]  # (level, index at that level)
Range = tuple[int, int]  # leaves [start, end)


class MerkleError(ValueError):
    """A proof or tree argument that does not verify."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (reference implementation, O(n))."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    # Fold pairwise; an odd last node is promoted unchanged, which matches the
    # RFC's left-balanced split.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# --- proof shapes (which subtrees a proof consists of) ---------------------------


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """RFC 9162 PATH(index, D[0:size]) as leaf ranges, bottom-up."""
    if not 0 <= index < size:
        raise MerkleError(f"leaf index {index} outside tree of size {size}")
    out: list[Range] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start, m = start + k, m - k
    out.reverse()
    return out


def consistency_ranges(size1: int, size2: int) -> list[Range]:
    """RFC 9162 PROOF(size1, D[0:size2]) as leaf ranges, bottom-up."""
    if not 0 < size1 <= size2:
        raise MerkleError(f"no consistency proof from size {size1} to {size2}")
    out: list[Range] = []
    start, end, m, complete = 0, size2, size1, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                out.append((start, end))
            break
        k = _split(n)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start, m, complete = start + k, m - k, False
    out.reverse()
    return out


def perfect_nodes(start: int, end: int) -> list[Node]:
    """The perfect subtrees that make up a proof range, left to right.

    Proof ranges start at a multiple of a power of two at least as large as
    themselves, so greedy largest-first decomposition is exact."""
    nodes: list[Node] = []
    pos = start
    while pos < end:
        level = (end - pos).bit_length() - 1
        while pos % (1 << level):
            level -= 1
        nodes.append((level, pos >> level))
        pos += 1 << level
    return nodes


def range_hash(start: int, end: int, nodes: Mapping[Node, bytes]) -> bytes:
    parts = [nodes[n] for n in perfect_nodes(start, end)]
    acc = parts[-1]
    for left in reversed(parts[:-1]):
        acc = node_hash(left, acc)
    return acc


def nodes_for(ranges: Sequence[Range]) -> list[Node]:
    seen: dict[Node, None] = {}
    for start, end in ranges:
        for n in perfect_nodes(start, end):
            seen[n] = None
    return list(seen)


def root_nodes(size: int) -> list[Node]:
    """Perfect subtrees of a tree of `size` leaves, left to right (its compact range)."""
    return perfect_nodes(0, size) if size else []


# --- compact range: the writer's O(log n) tree state -----------------------------


@dataclass
class CompactRange:
    """Right border of the tree: the perfect subtrees covering [0, size)."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)  # one per set bit of size, high to low

    @classmethod
    def from_nodes(cls, size: int, nodes: Mapping[Node, bytes]) -> CompactRange:
        return cls(size, [nodes[n] for n in root_nodes(size)])

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.hashes))

    def append(self, h: bytes) -> list[tuple[int, int, bytes]]:
        """Adds a leaf hash; returns the perfect nodes (level >= 1) it completes."""
        index = self.size
        self.hashes.append(h)
        self.size += 1
        created: list[tuple[int, int, bytes]] = []
        level = 0
        while (index >> level) & 1:
            right = self.hashes.pop()
            left = self.hashes.pop()
            level += 1
            merged = node_hash(left, right)
            self.hashes.append(merged)
            created.append((level, index >> level, merged))
        return created

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        acc = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            acc = node_hash(left, acc)
        return acc


# --- verification (RFC 9162 §2.1.3.2, §2.1.4.2) --------------------------------


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    if not 0 <= index < size:
        raise MerkleError(f"leaf index {index} outside tree of size {size}")
    if len(leaf) != HASH_SIZE:
        raise MerkleError("leaf hash has the wrong size")
    if len(proof) != len(inclusion_ranges(index, size)):
        raise MerkleError("inclusion proof has the wrong length")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise MerkleError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleError("inclusion proof too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise MerkleError("inclusion proof does not lead to the root")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    if size2 < size1:
        raise MerkleError("second tree is smaller than the first")
    if size1 == 0:
        raise MerkleError("consistency with an empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise MerkleError("equal sizes need an empty proof")
        if root1 != root2:
            raise MerkleError("equal sizes but different roots")
        return
    if not proof:
        raise MerkleError("empty consistency proof")
    if len(proof) != len(consistency_ranges(size1, size2)):
        raise MerkleError("consistency proof has the wrong length")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is a proof node
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise MerkleError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleError("consistency proof too short")
    if fr != root1:
        raise MerkleError("consistency proof does not match the first root")
    if sr != root2:
        raise MerkleError("consistency proof does not match the second root")


# --- in-memory tree (tests, verifier) ---------------------------------------------


class MemoryTree:
    """All perfect nodes in memory; proofs exactly as a store would serve them."""

    def __init__(self) -> None:
        self.nodes: dict[Node, bytes] = {}
        self.range = CompactRange()

    @property
    def size(self) -> int:
        return self.range.size

    def append(self, h: bytes) -> None:
        self.nodes[(0, self.range.size)] = h
        for level, idx, value in self.range.append(h):
            self.nodes[(level, idx)] = value

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if size == 0:
            return EMPTY_ROOT
        return range_hash(0, size, self.nodes)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return [range_hash(s, e, self.nodes) for s, e in inclusion_ranges(index, size)]

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        if size1 == size2:
            return []
        return [range_hash(s, e, self.nodes) for s, e in consistency_ranges(size1, size2)]
