"""The kit's durable inbox: every delivery taken, keyed by (insurer, transaction_id).

A push is answered only after its row is committed (fsync'd), so "taken"
(§10.2/§10.3) is true even if the process dies right after; the same
transaction_id again is a duplicate (pushes are at-least-once, §10.4). The
worker reads undecided rows, so a crash between taking and deciding loses
nothing. sqlite3 from the standard library, one file in the state folder, one
process per folder; calls run in the inbox's own thread so the event loop
never waits on the disk.

States: received -> (reviewing: PENDING_REVIEW posted, final decision due)
-> decided | failed (the kit gave up; logged with a reason). A decided row
keeps only its key (for deduplication) and is purged after `retention_s`.

A claim answered in the push itself (§10.6) is put decided at once, keeping
its sealed decision staged: the hub pushes a claim again only if it did not
record that answer, and then the row reopens (received, due now) so the
worker posts the same decision with PostDecision and learns the hub's reason.
That staged decision is dropped after `answer_keep_s` (well past the hub's
24 h delivery expiry).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from iclaim.errors import ResourceExhausted, Unavailable
from iclaim.v1 import insurer_service_pb2 as ipb

DB_NAME = "inbox.sqlite3"
RECEIVED = "received"
REVIEWING = "reviewing"
DECIDED = "decided"
FAILED = "failed"
OPEN_STATES = (RECEIVED, REVIEWING)
# Undecided rows above this refuse new pushes (retried by the hub) instead of
# filling the disk while decisions cannot be posted.
DEFAULT_MAX_UNDECIDED = 100_000
# How long a decided transaction_id is remembered for deduplication: well past
# the hub's 24 h delivery expiry.
DEFAULT_RETENTION_S = 30 * 24 * 3600.0
# How long a claim answered in the push keeps its staged decision, in case the
# hub pushes it again (it does so only within its delivery expiry, 24 h).
DEFAULT_ANSWER_KEEP_S = 2 * 24 * 3600.0
# Rows just put, kept in memory for the worker's first look (Inbox._fresh).
FRESH_MAX = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
  insurer_code    TEXT NOT NULL,
  transaction_id  TEXT NOT NULL,
  delivery        BLOB NOT NULL,
  state           TEXT NOT NULL CHECK (state IN ('received', 'reviewing', 'decided', 'failed')),
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at REAL NOT NULL DEFAULT 0,
  last_error      TEXT NOT NULL DEFAULT '',
  received_at     REAL NOT NULL,
  updated_at      REAL NOT NULL,
  PRIMARY KEY (insurer_code, transaction_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_done ON deliveries (state, updated_at);
-- The decision of an open row, each step sealed, kept before the first post:
-- a post whose answer was lost is repeated byte for byte (the hub answers it
-- as the same decision), and the handler is not asked twice.
CREATE TABLE IF NOT EXISTS staged_posts (
  insurer_code    TEXT NOT NULL,
  transaction_id  TEXT NOT NULL,
  step            INTEGER NOT NULL,
  state           INTEGER NOT NULL,
  approved_satang INTEGER NOT NULL,
  reason_code     TEXT NOT NULL,
  delay_s         REAL NOT NULL,
  envelope        TEXT NOT NULL,  -- '' = to be sealed (again)
  PRIMARY KEY (insurer_code, transaction_id, step)
);
"""

T = TypeVar("T")
_HAS_STAGED = "SELECT 1 FROM staged_posts WHERE insurer_code = ? AND transaction_id = ? LIMIT 1"
_STATE_OF = "SELECT state FROM deliveries WHERE insurer_code = ? AND transaction_id = ?"
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (insurer_code, transaction_id, delivery, state, received_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


class PutResult(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    # A claim answered in its push, pushed again: the hub did not record the
    # answer, so the row is open again and the worker posts the decision.
    REOPENED = "reopened"


@dataclass(frozen=True)
class InboxItem:
    insurer_code: str
    transaction_id: str
    delivery: ipb.ClaimDelivery
    state: str
    attempts: int
    last_error: str


@dataclass(frozen=True)
class StagedPost:
    """One step of a decision as it will be posted; `envelope` '' until sealed."""

    step: int
    state: int
    approved_satang: int
    reason_code: str
    delay_s: float
    envelope: str = ""


class Inbox:
    def __init__(
        self,
        path: Path,
        *,
        max_undecided: int = DEFAULT_MAX_UNDECIDED,
        retention_s: float = DEFAULT_RETENTION_S,
        answer_keep_s: float = DEFAULT_ANSWER_KEEP_S,
        clock: Callable[[], float] = time.time,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous is FULL (survives power loss) or NORMAL (survives a process crash)")
        self.synchronous = synchronous
        self.path = Path(path)
        self.max_undecided = max_undecided
        self.retention_s = retention_s
        self.answer_keep_s = min(answer_keep_s, retention_s)
        self._clock = clock
        self._lock = threading.Lock()
        # One thread of its own: calls are serialised by the lock anyway, and a
        # kept, warm thread hands off for less CPU than asyncio.to_thread's pool.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="iclaim-inbox"
        )
        self._db: sqlite3.Connection | None = None
        self._undecided = 0
        # Rows this process has just put and nothing has touched since: as a
        # NEW row they are `received`, 0 attempts, nothing staged, so the
        # worker's first load needs no trip to the thread. Any write to the
        # row drops its entry (one process per folder: no other writer).
        self._fresh: dict[tuple[str, str], bytes] = {}
        self._fresh_lock = threading.Lock()  # touched from the loop and the inbox's thread

    @classmethod
    async def open(cls, state_dir: Path, **kwargs: Any) -> Inbox:
        inbox = cls(Path(state_dir) / DB_NAME, **kwargs)
        await inbox._hop(inbox._open)
        return inbox

    async def _hop(self, fn: Callable[[], T]) -> T:
        """fn in the inbox's thread (the default pool once closed: what runs
        then only finds the inbox closed)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not self.path.exists()
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        if fresh:
            os.chmod(self.path, 0o600)  # envelopes are sealed, but nobody else needs them
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: committed = fsync'd, so "taken" survives even power loss (§10.2).
        # NORMAL (WAL): survives a process crash, not an OS crash; about 1-4 ms
        # less per push where fsync is slow. A choice for test sandboxes.
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.executescript(_SCHEMA)
        self._db = db
        self._undecided = self._count_open()

    def _count_open(self) -> int:
        row = (
            self._conn()
            .execute("SELECT count(*) FROM deliveries WHERE state IN (?, ?)", OPEN_STATES)
            .fetchone()
        )
        return int(row[0])

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise Unavailable("inbox is closed", reason="INBOX_UNAVAILABLE")
        return self._db

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn()
                except sqlite3.Error as exc:
                    # Disk full, locked too long, I/O error: the push is not
                    # taken and will be sent again.
                    raise Unavailable("inbox cannot be written", reason="INBOX_UNAVAILABLE") from exc

        return await self._hop(locked)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                with self._fresh_lock:
                    self._fresh.clear()

        await self._hop(close)
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    @property
    def undecided(self) -> int:
        return self._undecided

    async def put(self, insurer_code: str, delivery: ipb.ClaimDelivery) -> PutResult:
        """Durably records a delivery once; the same transaction_id again is a
        DUPLICATE. Refuses (RESOURCE_EXHAUSTED INBOX_FULL) past max_undecided."""
        (result,) = await self.put_many(insurer_code, [delivery])
        if result is None:
            raise ResourceExhausted("inbox is full", reason="INBOX_FULL")
        return result

    async def put_many(
        self, insurer_code: str, deliveries: Sequence[ipb.ClaimDelivery]
    ) -> list[PutResult | None]:
        """`put` for a batch in one transaction, so one fsync for all of it (a
        pull returns up to ten). Per delivery: NEW, DUPLICATE, or None where
        the inbox was full (nothing after that is stored new either). All or
        none are written: an error leaves the inbox as it was."""
        rows = [(d.transaction_id, d.SerializeToString()) for d in deliveries]

        def put_many() -> list[PutResult | None]:
            db = self._conn()
            results: list[PutResult | None] = []
            added: list[tuple[str, bytes]] = []
            reopened = 0
            now = self._clock()
            db.execute("BEGIN IMMEDIATE")
            try:
                for transaction_id, blob in rows:
                    exists = db.execute(_STATE_OF, (insurer_code, transaction_id)).fetchone()
                    if exists:
                        if self._reopen_answered(db, insurer_code, transaction_id, exists[0], blob, now):
                            reopened += 1
                            results.append(PutResult.REOPENED)
                        else:
                            results.append(PutResult.DUPLICATE)
                    elif self._undecided + len(added) + reopened >= self.max_undecided:
                        results.append(None)
                    else:
                        db.execute(
                            _INSERT_DELIVERY,
                            (insurer_code, transaction_id, blob, RECEIVED, now, now),
                        )
                        added.append((transaction_id, blob))
                        results.append(PutResult.NEW)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._undecided += len(added) + reopened
            with self._fresh_lock:
                for transaction_id, blob in added:
                    if len(self._fresh) >= FRESH_MAX:
                        self._fresh.pop(next(iter(self._fresh)))
                    self._fresh[(insurer_code, transaction_id)] = blob
            return results

        return await self._run(put_many)

    @staticmethod
    def _reopen_answered(
        db: sqlite3.Connection, insurer_code: str, transaction_id: str, state: str, blob: bytes, now: float
    ) -> bool:
        """A decided row that still has a staged decision was answered in its
        push: pushed again, it is due now with the delivery as pushed."""
        key = (insurer_code, transaction_id)
        if state != DECIDED or not db.execute(_HAS_STAGED, key).fetchone():
            return False
        db.execute(
            "UPDATE deliveries SET state = ?, delivery = ?, next_attempt_at = 0, last_error = '',"
            " updated_at = ? WHERE insurer_code = ? AND transaction_id = ?",
            (RECEIVED, blob, now, *key),
        )
        return True

    async def put_with_posts(
        self, insurer_code: str, delivery: ipb.ClaimDelivery, posts: Sequence[StagedPost], *, answered: bool
    ) -> PutResult:
        """Records a new delivery and its decision, already asked of the
        handler and sealed, in one commit: decided if the push answers with it
        (§10.6), else received for the worker to post. A delivery stored
        already is left as it is (DUPLICATE; REOPENED as `put` would)."""
        blob = delivery.SerializeToString()
        key = (insurer_code, delivery.transaction_id)

        def put_with_posts() -> PutResult:
            db = self._conn()
            now = self._clock()
            db.execute("BEGIN IMMEDIATE")
            try:
                exists = db.execute(_STATE_OF, key).fetchone()
                if exists:
                    result = (
                        PutResult.REOPENED
                        if self._reopen_answered(db, *key, exists[0], blob, now)
                        else PutResult.DUPLICATE
                    )
                elif not answered and self._undecided >= self.max_undecided:
                    db.execute("ROLLBACK")
                    raise ResourceExhausted("inbox is full", reason="INBOX_FULL")
                else:
                    db.execute(
                        _INSERT_DELIVERY,
                        (*key, b"" if answered else blob, DECIDED if answered else RECEIVED, now, now),
                    )
                    self._insert_posts(db, insurer_code, delivery.transaction_id, posts)
                    result = PutResult.NEW
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if result is PutResult.REOPENED or (result is PutResult.NEW and not answered):
                self._undecided += 1
            return result

        return await self._run(put_with_posts)

    async def _read(self, sql: str, params: Sequence[object]) -> list[Any]:
        """The rows of one query, read in the inbox's thread."""
        return await self._run(lambda: self._conn().execute(sql, params).fetchall())

    _GET = (
        "SELECT delivery, state, attempts, last_error FROM deliveries"
        " WHERE insurer_code = ? AND transaction_id = ?"
    )
    _STAGED = (
        "SELECT step, state, approved_satang, reason_code, delay_s, envelope FROM staged_posts"
        " WHERE insurer_code = ? AND transaction_id = ? ORDER BY step"
    )

    async def get(self, insurer_code: str, transaction_id: str) -> InboxItem | None:
        rows = await self._read(self._GET, (insurer_code, transaction_id))
        return self._item(insurer_code, transaction_id, rows)

    async def load(self, insurer_code: str, transaction_id: str) -> tuple[InboxItem | None, list[StagedPost]]:
        """get and staged together, in one hop to the inbox's thread (the
        worker needs both for every attempt); none for a row just put."""
        fresh = self._forget(insurer_code, transaction_id)
        if fresh is not None and self._db is not None:
            return self._item(insurer_code, transaction_id, [(fresh, RECEIVED, 0, "")]), []

        def load() -> tuple[list[Any], list[Any]]:
            db = self._conn()
            key = (insurer_code, transaction_id)
            rows = db.execute(self._GET, key).fetchall()
            return rows, (db.execute(self._STAGED, key).fetchall() if rows else [])

        rows, staged = await self._run(load)
        return self._item(insurer_code, transaction_id, rows), self._posts(staged)

    def _forget(self, insurer_code: str, transaction_id: str) -> bytes | None:
        """Drops a row from the just-put ones; its delivery if it was one."""
        with self._fresh_lock:
            return self._fresh.pop((insurer_code, transaction_id), None)

    @staticmethod
    def _item(insurer_code: str, transaction_id: str, rows: list[Any]) -> InboxItem | None:
        if not rows:
            return None
        delivery, state, attempts, last_error = rows[0]
        return InboxItem(
            insurer_code=insurer_code,
            transaction_id=transaction_id,
            delivery=ipb.ClaimDelivery.FromString(delivery),
            state=state,
            attempts=attempts,
            last_error=last_error,
        )

    async def state_of(self, insurer_code: str, transaction_id: str) -> str | None:
        rows = await self._read(_STATE_OF, (insurer_code, transaction_id))
        return str(rows[0][0]) if rows else None

    async def due(self, codes: Sequence[str], limit: int) -> list[tuple[str, str]]:
        """Keys (insurer, transaction_id) of undecided rows whose next attempt
        is due, oldest first; keys only, so a scan never loads envelopes."""
        if not codes or limit <= 0:
            return []
        marks = ",".join("?" * len(codes))
        rows = await self._read(
            "SELECT insurer_code, transaction_id FROM deliveries"
            f" WHERE state IN (?, ?) AND next_attempt_at <= ? AND insurer_code IN ({marks})"
            " ORDER BY next_attempt_at, received_at LIMIT ?",
            (*OPEN_STATES, self._clock(), *codes, limit),
        )
        return [(str(a), str(b)) for a, b in rows]

    async def reset_schedule(self, codes: Sequence[str]) -> None:
        """At start-up: retry everything undecided now rather than after a
        backoff chosen by a previous run."""
        if not codes:
            return
        marks = ",".join("?" * len(codes))
        await self._run(
            lambda: self._conn().execute(
                "UPDATE deliveries SET next_attempt_at = 0"
                f" WHERE state IN (?, ?) AND insurer_code IN ({marks})",
                (*OPEN_STATES, *codes),
            )
        )

    async def reschedule(self, insurer_code: str, transaction_id: str, delay_s: float, error: str) -> int:
        """Counts a failed attempt; the row is due again in `delay_s`. Returns
        the number of attempts so far."""

        def reschedule() -> int:
            self._forget(insurer_code, transaction_id)
            db = self._conn()
            now = self._clock()
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
                " updated_at = ? WHERE insurer_code = ? AND transaction_id = ?",
                (now + delay_s, error, now, insurer_code, transaction_id),
            )
            row = db.execute(
                "SELECT attempts FROM deliveries WHERE insurer_code = ? AND transaction_id = ?",
                (insurer_code, transaction_id),
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(reschedule)

    async def stage(self, insurer_code: str, transaction_id: str, posts: Sequence[StagedPost]) -> None:
        """Keeps a decision's steps (replacing what was staged) in one commit."""

        def stage() -> None:
            self._forget(insurer_code, transaction_id)
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.execute(
                    "DELETE FROM staged_posts WHERE insurer_code = ? AND transaction_id = ?",
                    (insurer_code, transaction_id),
                )
                self._insert_posts(db, insurer_code, transaction_id, posts)

        await self._run(stage)

    @staticmethod
    def _insert_posts(
        db: sqlite3.Connection, insurer_code: str, transaction_id: str, posts: Sequence[StagedPost]
    ) -> None:
        db.executemany(
            "INSERT INTO staged_posts (insurer_code, transaction_id, step, state,"
            " approved_satang, reason_code, delay_s, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    insurer_code,
                    transaction_id,
                    p.step,
                    p.state,
                    p.approved_satang,
                    p.reason_code,
                    p.delay_s,
                    p.envelope,
                )
                for p in posts
            ],
        )

    async def staged(self, insurer_code: str, transaction_id: str) -> list[StagedPost]:
        return self._posts(await self._read(self._STAGED, (insurer_code, transaction_id)))

    @staticmethod
    def _posts(rows: list[Any]) -> list[StagedPost]:
        return [StagedPost(int(r[0]), int(r[1]), int(r[2]), str(r[3]), float(r[4]), str(r[5])) for r in rows]

    async def mark(self, insurer_code: str, transaction_id: str, state: str, error: str = "") -> None:
        """Moves a row on. A closed row (decided/failed) drops its envelope and
        staged decision: only the key is needed from now on, for deduplication."""

        def mark() -> None:
            self._forget(insurer_code, transaction_id)
            db = self._conn()
            now = self._clock()
            before = db.execute(_STATE_OF, (insurer_code, transaction_id)).fetchone()
            if before is None:
                return
            closing = state not in OPEN_STATES
            with db:  # one commit
                db.execute("BEGIN")
                db.execute(
                    "UPDATE deliveries SET state = ?, last_error = ?, updated_at = ?"
                    + (", delivery = x''" if closing else "")
                    + " WHERE insurer_code = ? AND transaction_id = ?",
                    (state, error, now, insurer_code, transaction_id),
                )
                if closing:
                    db.execute(
                        "DELETE FROM staged_posts WHERE insurer_code = ? AND transaction_id = ?",
                        (insurer_code, transaction_id),
                    )
            if closing and before[0] in OPEN_STATES:
                self._undecided -= 1

        await self._run(mark)

    async def purge(self) -> int:
        """Forgets closed rows older than the retention; returns how many."""

        def purge() -> int:
            db = self._conn()
            now = self._clock()
            with db:
                db.execute("BEGIN")
                # Decisions answered in their push, kept in case of a second push.
                db.execute(
                    "DELETE FROM staged_posts WHERE (insurer_code, transaction_id) IN (SELECT"
                    " insurer_code, transaction_id FROM deliveries WHERE state = ? AND updated_at < ?)",
                    (DECIDED, now - self.answer_keep_s),
                )
                cur = db.execute(
                    "DELETE FROM deliveries WHERE state IN (?, ?) AND updated_at < ?",
                    (DECIDED, FAILED, now - self.retention_s),
                )
            return int(cur.rowcount)

        return await self._run(purge)

    async def counts(self) -> dict[str, int]:
        rows = await self._read("SELECT state, count(*) FROM deliveries GROUP BY state", ())
        return {str(s): int(n) for s, n in rows}
