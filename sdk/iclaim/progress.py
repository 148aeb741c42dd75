"""Progress of long work (audit verification, `make bench`, soak runs).

On a terminal: a bar with the count, the rate and the time left, drawn by
rich when it is installed (`pip install 'iclaim[progress]'`; the hub's dev
environment has it). Otherwise (CI, a pipe, a log file, or no rich): a
plain line every `interval_s` seconds or every `step_percent` of the total
(at most one a second), and one at the end, so a long run never goes silent
and never floods a log; work done within a second prints nothing.

Work reports through `ProgressSink` (advance, set_total), so the code being
measured imports nothing of this module's drawing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol


MIN_GAP_S = 1.0  # between two plain lines, whatever the percentage did


class ProgressSink(Protocol):
    """What long work reports to."""

    def advance(self, n: int = 1) -> None: ...

    def set_total(self, total: int | None) -> None: ...


class NoProgress:
    """Reports nowhere (the default of work that takes a sink)."""

    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class PlainProgress:
    """Periodic plain lines: for logs, CI and pipes."""

    def __init__(
        self,
        description: str,
        total: int | None,
        stream: IO[str],
        *,
        interval_s: float = 5.0,
        step_percent: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._description = description
        self._total = total
        self._stream = stream
        self._interval_s = interval_s
        self._step = step_percent
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._done = 0
        self._next_percent = step_percent
        self._printed = False

    def set_total(self, total: int | None) -> None:
        self._total = total

    def advance(self, n: int = 1) -> None:
        self._done += n
        now = self._clock()
        percent = self._percent()
        since = now - self._last_line
        stepped = percent is not None and percent >= self._next_percent
        if since >= self._interval_s or (stepped and since >= MIN_GAP_S):
            self._line(now)

    def _percent(self) -> int | None:
        return None if not self._total else min(100, self._done * 100 // self._total)

    def _line(self, now: float) -> None:
        elapsed = now - self._started
        rate = self._done / elapsed if elapsed > 0 else 0.0
        percent = self._percent()
        if percent is not None and self._total:
            text = f"{self._description}: {self._done:,}/{self._total:,} ({percent}%), {rate:,.0f}/s"
            left = self._total - self._done
            if rate > 0 and left > 0:
                text += f", {_duration(left / rate)} left"
            while self._next_percent <= percent:
                self._next_percent += self._step
        else:
            text = f"{self._description}: {self._done:,} done, {rate:,.0f}/s"
        print(text, file=self._stream, flush=True)
        self._last_line = now
        self._printed = True

    def close(self) -> None:
        elapsed = self._clock() - self._started
        if not self._printed and elapsed < MIN_GAP_S:
            return  # quick work stays quiet
        total = f"/{self._total:,}" if self._total else ""
        print(
            f"{self._description}: {self._done:,}{total} done in {_duration(elapsed)}",
            file=self._stream,
            flush=True,
        )


class _RichProgress:
    """A rich bar: description, bar, n/total, rate, elapsed, time left."""

    def __init__(self, description: str, total: int | None, stream: IO[str], force_terminal: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(f"{task.speed:,.0f}/s" if task.speed else "-/s")

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(file=stream, force_terminal=force_terminal or None),
        )
        self._task = self._bar.add_task(description, total=total)
        self._bar.start()

    def set_total(self, total: int | None) -> None:
        self._bar.update(self._task, total=total)

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)

    def close(self) -> None:
        self._bar.stop()


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    stream: IO[str] | None = None,
    terminal: bool | None = None,
    interval_s: float = 5.0,
    step_percent: int = 10,
) -> Iterator[ProgressSink]:
    """Shows the progress of the work done inside. `terminal`: None asks the
    stream (isatty); True forces the bar (tests), False the plain lines."""
    out = stream if stream is not None else sys.stderr
    tty = out.isatty() if terminal is None else terminal
    shown: Any
    if tty and _rich_available():
        shown = _RichProgress(description, total, out, force_terminal=terminal is True)
    else:
        shown = PlainProgress(description, total, out, interval_s=interval_s, step_percent=step_percent)
    try:
        yield shown
    finally:
        shown.close()
