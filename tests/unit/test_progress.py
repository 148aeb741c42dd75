"""Long work shows progress (issue 11 item 8): plain periodic lines when not
on a terminal (CI, pipes), a bar with rate and time left on one; and the audit
verifier reports every entry it checks."""

from __future__ import annotations

import io
import os
import re
import select
from collections.abc import AsyncIterator

import pytest

from iclaim.audit.note import NoteVerifier
from iclaim.audit.verifier import StoredLeaf, verify_log
from iclaim.progress import PlainProgress, progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_tenth_with_rate_and_time_left() -> None:
    out, clock = io.StringIO(), Clock()
    shown = PlainProgress("audit verify", 1000, out, interval_s=5.0, clock=clock)
    for _ in range(20):  # 1000 entries, 50 per second
        clock.now += 1.0
        shown.advance(50)
    shown.close()
    lines = out.getvalue().splitlines()
    # 10 %, 20 %, ... 100 %: one line each (every 2 s here), then the end.
    assert len(lines) == 11
    assert lines[0] == "audit verify: 100/1,000 (10%), 50/s, 18 s left"
    assert lines[4] == "audit verify: 500/1,000 (50%), 50/s, 10 s left"
    assert lines[9] == "audit verify: 1,000/1,000 (100%), 50/s"
    assert lines[-1] == "audit verify: 1,000/1,000 done in 20 s"


def test_plain_lines_every_interval_when_the_total_is_unknown_or_far() -> None:
    out, clock = io.StringIO(), Clock()
    shown = PlainProgress("claims", None, out, interval_s=5.0, clock=clock)
    for _ in range(23):
        clock.now += 1.0
        shown.advance(10)
    lines = out.getvalue().splitlines()
    assert lines == ["claims: 50 done, 10/s", "claims: 100 done, 10/s", "claims: 150 done, 10/s",
                     "claims: 200 done, 10/s"]  # fmt: skip


def test_plain_lines_are_at_least_a_second_apart() -> None:
    out, clock = io.StringIO(), Clock()
    shown = PlainProgress("trail", 3, out, interval_s=5.0, clock=clock)
    for _ in range(3):  # every item is a third: without the gap, a line each
        clock.now += 0.1
        shown.advance()
    shown.close()
    assert out.getvalue() == ""  # quick work stays quiet


def test_not_a_terminal_gives_plain_lines() -> None:
    out = io.StringIO()  # isatty() is False: a pipe, CI
    with progress("fill", 10, stream=out, interval_s=0.0) as shown:
        for _ in range(10):
            shown.advance()
    text = out.getvalue()
    assert "\x1b[" not in text  # no escape codes in a log
    assert text.splitlines()[0].startswith("fill: 1/10 (10%)")


def test_forced_terminal_draws_a_bar_with_rate_and_time_left() -> None:
    out = io.StringIO()
    with progress("audit verify", 200, stream=out, terminal=True) as shown:
        for _ in range(200):
            shown.advance()
    text = out.getvalue()
    assert "\x1b[" in text and "━" in text  # a drawn bar
    assert re.search(r"200/200", text)
    assert re.search(r"[\d,]+/s", text) and "left" in text


def test_a_pseudo_terminal_gets_the_bar_without_forcing() -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            assert tty.isatty()
            with progress("claims", 5, stream=tty) as shown:
                for _ in range(5):
                    shown.advance()
        chunks = b""
        while select.select([master], [], [], 0.2)[0]:
            chunks += os.read(master, 65536)
    finally:
        os.close(master)
        os.close(slave)
    text = chunks.decode(errors="replace")
    assert "━" in text and "5/5" in text


class Leaves:
    """A log of `n` expired entries and no checkpoint: the verifier walks them all."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def checkpoint_notes(self) -> list[str]:
        return []

    async def iter_leaves(self) -> AsyncIterator[StoredLeaf]:
        for i in range(self.n):
            yield StoredLeaf(i, f"ev-{i}", bytes(32), None, True)

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        raise AssertionError("no checkpoints, no proofs")


class Counted:
    def __init__(self) -> None:
        self.done = 0
        self.calls = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.calls += 1

    def set_total(self, total: int | None) -> None:
        pass


@pytest.mark.parametrize("n", [0, 999, 2500])
async def test_the_verifier_reports_every_entry_in_steps(n: int) -> None:
    sink = Counted()
    report = await verify_log(Leaves(n), NoteVerifier("o", bytes(32)), "o", progress=sink)
    assert report.entries == n
    assert sink.done == n
    assert sink.calls <= n // 1000 + 1  # in steps, not one call per entry
