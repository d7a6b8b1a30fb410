"""Progress on stderr, never stdout (stdout carries the results people and tests parse).

On a terminal, a rich bar. Elsewhere (CI logs, ``nohup``), one plain line per stage at most every
``AUGMENT_PROGRESS_SECONDS`` (default :data:`SECONDS`) with counts, elapsed time and an ETA, e.g.
``evaluate segmentation real+classic seed 1 / train: 1200/3000 steps (40%), 52 s elapsed, ETA 78 s``,
and a final line when a stage that ran at least that long ends (a stage that fails leaves only
its error). Under a multi-process launcher only rank 0 (``RANK``) reports.

:func:`stage` names what a caller is doing, so that a loop deep inside (a task model's training
steps) says which arm, seed or pipeline stage it belongs to. A loop reads the clock once per item
and writes (and flushes) only when it prints a line.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from augment.errors import ConfigError
from augment.seeding import rank_zero

T = TypeVar("T")

#: seconds between two headless lines of one stage, unless ``AUGMENT_PROGRESS_SECONDS`` says otherwise
SECONDS = 30.0
ENV = "AUGMENT_PROGRESS_SECONDS"

_stages: ContextVar[tuple[str, ...]] = ContextVar("augment_progress_stages", default=())
_console: Console | None = None


def interval() -> float:
    """Seconds between headless lines: ``AUGMENT_PROGRESS_SECONDS`` (0 prints after every item), else :data:`SECONDS`."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise ConfigError(f"{ENV} is `{raw}`; give a number of seconds >= 0 (0 prints after every step; default {SECONDS:g})")
    return value


def console() -> Console:
    """The one stderr console every bar draws on (rich nests the bars of one console)."""
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Inside it, every progress line and bar starts with ``name`` (stages nest: ``outer / inner``)."""
    token = _stages.set((*_stages.get(), name))
    try:
        yield
    finally:
        _stages.reset(token)


def described(description: str) -> str:
    """``description`` behind the names of the enclosing stages."""
    return " / ".join(p for p in (*_stages.get(), description) if p)


def duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def line(description: str, done: int, total: int | None, unit: str, elapsed: float, start: int = 0) -> str:
    """One headless progress line. The ETA assumes the rate so far, counted from ``start`` (where
    a resumed run began); without a total there is no percentage and no ETA."""
    if total is None:
        return f"{description}: {done} {unit}, {duration(elapsed)} elapsed"
    percent = 100 * done / total if total else 100.0
    text = f"{description}: {done}/{total} {unit} ({percent:.0f}%), {duration(elapsed)} elapsed"
    if done > start:
        text += f", ETA {duration(elapsed / (done - start) * max(total - done, 0))}"
    return text


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class Lines:
    """Headless progress of one stage: :meth:`update` (at most once per item) prints a
    :func:`line` when ``seconds`` have passed since the last one, :meth:`finish` the final line.
    Silent on a terminal (a bar shows there), on ranks other than 0 and when not ``enabled``."""

    def __init__(self, description: str, total: int | None, unit: str = "items", *, done: int = 0,
                 stream: TextIO | None = None, seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic, enabled: bool = True) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.active = enabled and rank_zero() and not _isatty(self.stream)
        self.description, self.total, self.unit = described(description), total, unit
        self.start = self.done = done
        self.seconds = interval() if seconds is None else seconds
        self.clock = clock
        self.began = self.last = clock() if self.active else 0.0

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        if not self.active:
            return
        now = self.clock()
        if now - self.last >= self.seconds and done != self.total:
            self.last = now
            self._write(line(self.description, done, self.total, self.unit, now - self.began, self.start), note)

    def finish(self, note: str = "") -> None:
        if not self.active:
            return
        elapsed = self.clock() - self.began
        if elapsed >= self.seconds:
            count = f"{self.done}" if self.total is None else f"{self.done}/{self.total}"
            self._write(f"{self.description}: {count} {self.unit} done in {duration(elapsed)}", note)

    def _write(self, text: str, note: str) -> None:
        self.stream.write(f"{text}, {note}\n" if note else text + "\n")
        self.stream.flush()


def track(items: Iterable[T], total: int | None = None, description: str = "", unit: str = "items", *,
          stream: TextIO | None = None, seconds: float | None = None,
          clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Yield ``items`` unchanged while reporting progress on ``stream`` (stderr): a rich bar on a
    terminal, :class:`Lines` elsewhere. ``total`` defaults to ``len(items)`` where it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    stream = sys.stderr if stream is None else stream
    if not rank_zero():
        yield from items
        return
    if _isatty(stream):
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console() if stream is sys.stderr else Console(file=stream), transient=True,
        )
        with progress:
            yield from progress.track(items, total=total, description=escape(described(description)))
        return
    lines = Lines(description, total, unit, stream=stream, seconds=seconds, clock=clock)
    done = 0
    for item in items:
        yield item
        done += 1
        lines.update(done)
    lines.finish()
