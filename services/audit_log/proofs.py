"""Roots and proofs from stored perfect-subtree hashes: O(log n) node reads."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from iclaim.audit import merkle
from iclaim.audit.merkle import Node


class NodeReader(Protocol):
    async def get_nodes(self, nodes: Sequence[Node]) -> dict[Node, bytes]: ...


async def root_at(reader: NodeReader, size: int) -> bytes:
    if size == 0:
        return merkle.EMPTY_ROOT
    nodes = await reader.get_nodes(merkle.perfect_nodes(0, size))
    return merkle.range_hash(0, size, nodes)


async def inclusion_proof(reader: NodeReader, index: int, size: int) -> list[bytes]:
    ranges = merkle.inclusion_ranges(index, size)
    nodes = await reader.get_nodes(merkle.nodes_for(ranges))
    return [merkle.range_hash(s, e, nodes) for s, e in ranges]


async def consistency_proof(reader: NodeReader, size1: int, size2: int) -> list[bytes]:
    if size1 == size2:
        return []
    ranges = merkle.consistency_ranges(size1, size2)
    nodes = await reader.get_nodes(merkle.nodes_for(ranges))
    return [merkle.range_hash(s, e, nodes) for s, e in ranges]
