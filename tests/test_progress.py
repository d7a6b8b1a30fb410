"""Progress on stderr: plain lines when nobody watches a terminal, nothing on other ranks."""

from __future__ import annotations

import io
import itertools

import pytest

from augment import progress
from augment.errors import ConfigError
from augment.progress import Lines, stage, track


def _clock(step: float = 1.0):
    """A fake monotonic clock that advances ``step`` seconds at every reading."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


@pytest.fixture(autouse=True)
def _rank0(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv(progress.ENV, raising=False)


def test_every_item_comes_through_unchanged_with_counts_eta_and_a_final_line():
    out = io.StringIO()
    items = [object() for _ in range(4)]
    got = list(track(items, None, "audit features", "batches", stream=out, seconds=0, clock=_clock()))
    assert got == items and all(a is b for a, b in zip(got, items))
    lines = out.getvalue().splitlines()
    # the clock reads 0 at the start and i after item i: 1 s per item, ETA (4 - i) s
    assert lines == [
        "audit features: 1/4 batches (25%), 1 s elapsed, ETA 3 s",
        "audit features: 2/4 batches (50%), 2 s elapsed, ETA 2 s",
        "audit features: 3/4 batches (75%), 3 s elapsed, ETA 1 s",
        "audit features: 4/4 batches done in 5 s",
    ]


def test_a_long_interval_prints_no_intermediate_line():
    out = io.StringIO()
    assert list(track(range(50), None, "x", stream=out, seconds=1000, clock=_clock())) == list(range(50))
    assert out.getvalue() == ""  # 51 s < 1000 s: not even a final line
    out = io.StringIO()
    list(track(range(50), None, "x", stream=out, seconds=20, clock=_clock()))
    assert out.getvalue().splitlines() == ["x: 20/50 items (40%), 20 s elapsed, ETA 30 s",
                                           "x: 40/50 items (80%), 40 s elapsed, ETA 10 s",
                                           "x: 50/50 items done in 51 s"]


def test_a_generator_without_length_gets_counts_but_no_eta():
    out = io.StringIO()
    list(track((i for i in range(2)), None, "reading", stream=out, seconds=0, clock=_clock()))
    assert out.getvalue().splitlines() == ["reading: 1 items, 1 s elapsed", "reading: 2 items, 2 s elapsed",
                                           "reading: 2 items done in 3 s"]


def test_other_ranks_print_nothing(monkeypatch):
    for var, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(var, value)
    out = io.StringIO()
    assert list(track(range(3), None, "x", stream=out, seconds=0, clock=_clock())) == [0, 1, 2]
    lines = Lines("y", 3, stream=out, seconds=0, clock=_clock())
    lines.update(1)
    lines.finish()
    assert out.getvalue() == ""


def test_a_failed_loop_leaves_only_its_error():
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        for i in track(range(5), None, "x", stream=out, seconds=0, clock=_clock()):
            if i == 2:
                raise RuntimeError("boom")
    assert out.getvalue().splitlines() == ["x: 1/5 items (20%), 1 s elapsed, ETA 4 s",
                                           "x: 2/5 items (40%), 2 s elapsed, ETA 3 s"]


def test_stages_name_the_lines_inside_them_and_nest():
    out = io.StringIO()
    with stage("evaluate (cvae budget 20 seed 0)"), stage("evaluate segmentation real+classic seed 1"):
        list(track(range(1), None, "train", "steps", stream=out, seconds=0, clock=_clock()))
    list(track(range(1), None, "train", "steps", stream=out, seconds=0, clock=_clock()))
    assert out.getvalue().splitlines() == [
        "evaluate (cvae budget 20 seed 0) / evaluate segmentation real+classic seed 1 / train: 1/1 steps done in 2 s",
        "train: 1/1 steps done in 2 s",
    ]


def test_a_resumed_run_counts_its_eta_from_where_it_resumed_and_carries_a_note():
    out = io.StringIO()
    lines = Lines("train generator", 100, "steps", done=50, stream=out, seconds=0, clock=_clock(2.0))
    lines.update(60, "phase vae, loss 0.25")  # 10 steps in 2 s: 40 left take 8 s
    lines.finish()
    assert out.getvalue().splitlines() == [
        "train generator: 60/100 steps (60%), 2 s elapsed, ETA 8 s, phase vae, loss 0.25",
        "train generator: 60/100 steps done in 4 s",
    ]


def test_the_interval_comes_from_the_environment(monkeypatch):
    assert progress.interval() == progress.SECONDS
    monkeypatch.setenv(progress.ENV, "2.5")
    assert progress.interval() == 2.5
    out = io.StringIO()
    monkeypatch.setenv(progress.ENV, "0")
    list(track(range(2), None, "x", stream=out, clock=_clock()))
    assert len(out.getvalue().splitlines()) == 2
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(progress.ENV, bad)
        with pytest.raises(ConfigError, match=f"{progress.ENV} is `{bad}`; give a number of seconds >= 0"):
            progress.interval()


def test_a_terminal_gets_a_bar_and_no_plain_lines():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    assert list(track(range(3), None, "x", stream=out, seconds=0, clock=_clock())) == [0, 1, 2]
    assert "x: 1/3 items" not in out.getvalue()
    lines = Lines("y", 3, stream=out, seconds=0, clock=_clock())
    lines.update(1)
    lines.finish()
    assert "y:" not in out.getvalue()


@pytest.mark.parametrize("seconds,text", [(5, "5 s"), (99.4, "99 s"), (150, "2.5 min"), (7200, "2.0 h")])
def test_durations_read_at_a_glance(seconds, text):
    assert progress.duration(seconds) == text
