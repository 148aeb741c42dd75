"""Verifies a stored audit log against its signed checkpoints.

Every entry's data is re-hashed (its canonical form includes its position),
the tree is rebuilt from those hashes and its root compared with every signed
checkpoint; consecutive checkpoints are also proved consistent with proofs
built from the stored tree nodes (what the service serves to others).
The first bad entry is named.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from iclaim.audit.entry import AuditEntry, entry_leaf_hash
from iclaim.audit.merkle import CompactRange, MerkleError, verify_consistency
from iclaim.audit.note import Checkpoint, NoteError, NoteVerifier, open_checkpoint
from iclaim.progress import NoProgress, ProgressSink


@dataclass(frozen=True)
class StoredLeaf:
    leaf_index: int
    event_id: str
    leaf_hash: bytes
    entry: AuditEntry | None  # None once expired (or deleted)
    expired: bool


class LogSource(Protocol):
    async def checkpoint_notes(self) -> list[str]: ...

    def iter_leaves(self) -> AsyncIterator[StoredLeaf]: ...

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]: ...


@dataclass(frozen=True)
class Finding:
    message: str
    leaf_index: int | None = None
    event_id: str = ""

    def __str__(self) -> str:
        where = "" if self.leaf_index is None else f"entry {self.leaf_index}"
        if self.event_id:
            where += f" (event {self.event_id})"
        return f"{where}: {self.message}" if where else self.message


@dataclass
class VerifyReport:
    entries: int = 0
    expired: int = 0
    checkpoints: int = 0
    latest_checkpoint_size: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_bad(self) -> Finding | None:
        """The finding that names the lowest entry (else the first one found)."""
        named = [f for f in self.findings if f.leaf_index is not None]
        if named:
            return min(named, key=lambda f: f.leaf_index or 0)
        return self.findings[0] if self.findings else None

    def summary(self) -> str:
        if self.ok:
            return (
                f"OK: {self.entries} entries ({self.expired} expired), "
                f"{self.checkpoints} checkpoints verified, latest at size "
                f"{self.latest_checkpoint_size}"
            )
        return f"FAIL: first bad {self.first_bad}"


_MAX_FINDINGS = 50
# Entries per progress report: a report per entry would cost more than the check.
PROGRESS_STEP = 1000


async def verify_log(
    source: LogSource,
    verifier: NoteVerifier,
    origin: str,
    witnessed: Sequence[str] = (),
    progress: ProgressSink | None = None,
) -> VerifyReport:
    """`witnessed`: checkpoint notes seen earlier and kept outside the database
    (e.g. by the last run of this verifier); the log must still contain them,
    which catches a history rewritten together with its stored checkpoints.
    `progress` is told of every entry checked (in steps of PROGRESS_STEP)."""
    report = VerifyReport()
    shown = progress or NoProgress()

    def add(f: Finding) -> None:
        if len(report.findings) < _MAX_FINDINGS:
            report.findings.append(f)

    checkpoints: list[Checkpoint] = []
    for note in await source.checkpoint_notes():
        try:
            checkpoints.append(open_checkpoint(note, verifier, origin))
        except NoteError as exc:
            add(Finding(f"a stored checkpoint does not verify: {exc}"))
    stored = {(c.tree_size, c.root_hash) for c in checkpoints}
    for note in witnessed:
        try:
            cp = open_checkpoint(note, verifier, origin)
        except NoteError as exc:
            add(Finding(f"a witnessed checkpoint does not verify: {exc}"))
            continue
        if (cp.tree_size, cp.root_hash) not in stored:
            checkpoints.append(cp)  # checked against the entries like any other
    checkpoints.sort(key=lambda c: (c.tree_size, c.time))
    report.checkpoints = len(checkpoints)
    report.latest_checkpoint_size = checkpoints[-1].tree_size if checkpoints else 0
    pending = [c for c in checkpoints if c.tree_size > 0]
    previous_size = 0

    rng = CompactRange()
    broken_at: int | None = None  # position where the stored sequence has a hole
    async for leaf in source.iter_leaves():
        expected = rng.size
        if leaf.leaf_index != expected:
            if broken_at is None:
                broken_at = expected
                add(Finding("entry missing (deleted or renumbered)", expected))
            continue
        report.entries += 1
        if report.entries % PROGRESS_STEP == 0:
            shown.advance(PROGRESS_STEP)
        if leaf.entry is not None:
            h = entry_leaf_hash(leaf.entry, leaf.leaf_index)
            if leaf.entry.event_id != leaf.event_id or h != leaf.leaf_hash:
                add(
                    Finding(
                        "data does not match its leaf hash (changed or moved)", leaf.leaf_index, leaf.event_id
                    )
                )
        elif leaf.expired:
            report.expired += 1
            h = leaf.leaf_hash  # data removed by retention; the hash stays committed
        else:
            add(Finding("data deleted outside retention", leaf.leaf_index, leaf.event_id))
            h = leaf.leaf_hash
        rng.append(h)
        while pending and pending[0].tree_size == rng.size:
            cp = pending.pop(0)
            if rng.root() != cp.root_hash:
                add(
                    Finding(
                        f"log does not match the signed checkpoint at size {cp.tree_size}: "
                        f"an entry in [{previous_size}, {cp.tree_size}) was changed, moved "
                        "or replaced"
                    )
                )
            previous_size = cp.tree_size
    shown.advance(report.entries % PROGRESS_STEP)
    if pending and broken_at is None:
        add(
            Finding(
                f"signed checkpoint covers {pending[-1].tree_size} entries but the log has "
                f"only {rng.size}: entry missing",
                rng.size,
            )
        )

    # Consistency of each checkpoint with the previous one, from stored nodes.
    for older, newer in zip(checkpoints, checkpoints[1:], strict=False):
        if older.tree_size == 0:
            continue
        try:
            proof = await source.consistency_proof(older.tree_size, newer.tree_size)
            verify_consistency(older.tree_size, newer.tree_size, proof, older.root_hash, newer.root_hash)
        except (MerkleError, LookupError) as exc:
            add(
                Finding(
                    f"checkpoint at size {newer.tree_size} not proved consistent with size "
                    f"{older.tree_size}: {exc}"
                )
            )
    return report
