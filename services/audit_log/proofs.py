"""Roots and proofs from stored perfect-subtree hashes: O(log n) node reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from iclaim.audit import merkle
from iclaim.audit.merkle import Node
from iclaim.audit.verifier import StoredLeaf


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


class StoredLog(NodeReader, Protocol):
    async def checkpoint_notes(self) -> list[str]: ...

    def iter_leaves(self) -> AsyncIterator[StoredLeaf]: ...


class VerifiableLog:
    """A stored log as `iclaim.audit.verifier.LogSource`: its notes and leaves,
    and consistency proofs computed from its nodes."""

    def __init__(self, store: StoredLog) -> None:
        self._store = store

    async def checkpoint_notes(self) -> list[str]:
        return await self._store.checkpoint_notes()

    def iter_leaves(self) -> AsyncIterator[StoredLeaf]:
        return self._store.iter_leaves()

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return await consistency_proof(self._store, size1, size2)
