"""progress: log lines at the interval with counts and an estimate (fake clock), silence for short steps, a tqdm
bar only on a terminal; collect_statistics reports its two passes as one progress."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import int8tune.progress as progress_module
from int8tune.progress import Progress, track

LOGGER = "int8tune"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


@pytest.fixture
def no_tqdm(monkeypatch):
    """Fail if any tqdm bar is made: not a terminal, so the log path must be taken."""
    def refuse(*args, **kwargs):
        raise AssertionError("tqdm used although stderr is not a terminal")

    monkeypatch.setattr(progress_module, "tqdm", refuse)


def test_lines_at_the_interval_with_counts_and_estimate(caplog, no_tqdm):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    p = Progress(total=20, desc="calibration statistics", interval=10, clock=clock, terminal=False)
    for _ in range(4):  # 3 s per batch: the first line once 10 s have gone by, at batch 4 (12 s)
        clock.advance(3)
        p.update()
    assert _lines(caplog) == ["calibration statistics: 4/20 batches, 12s elapsed, about 48s left"]
    for _ in range(3):  # 21 s: less than 10 s since the last line, nothing new
        clock.advance(3)
        p.update()
    assert len(_lines(caplog)) == 1
    clock.advance(3)
    p.update()  # 24 s, 12 s after the last line
    assert _lines(caplog)[-1] == "calibration statistics: 8/20 batches, 24s elapsed, about 36s left"
    for _ in range(12):
        clock.advance(3)
        p.update()
    p.close()
    lines = _lines(caplog)
    assert lines[-1] == "calibration statistics: 20/20 batches, 60s elapsed, about 0s left"
    # one line per interval (12, 24, 36, 48, 60 s); the final one is not repeated by close()
    assert [line.split(" batches")[0].split(": ")[1] for line in lines] == ["4/20", "8/20", "12/20", "16/20",
                                                                           "20/20"]
    p.close()  # closing twice logs nothing more
    assert len(_lines(caplog)) == 5


def test_update_by_several_items_and_units(caplog, no_tqdm):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    with Progress(total=100, desc="evaluation", unit="image", interval=5, clock=clock, terminal=False) as p:
        clock.advance(6)
        p.update(25)
        clock.advance(2)
        p.update(25)
    assert _lines(caplog) == ["evaluation: 25/100 images, 6s elapsed, about 18s left",
                              "evaluation: 50/100 images, 8s elapsed, about 8s left"]


def test_without_a_total_no_estimate(caplog, no_tqdm):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    p = Progress(total=None, desc="statistics", interval=10, clock=clock, terminal=False)
    clock.advance(11)
    p.update(3)
    p.close()
    assert _lines(caplog)[0] == "statistics: 3 batches, 11s elapsed"
    assert all("left" not in line for line in _lines(caplog))


def test_a_fast_run_logs_nothing(caplog, no_tqdm):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = FakeClock()
    for _ in track(range(50), total=50, desc="fast", interval=10, clock=clock, terminal=False):
        clock.advance(0.1)  # 5 s in all
    assert _lines(caplog) == []


def test_disabled_logs_nothing_even_when_slow(caplog, no_tqdm):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    with Progress(total=3, desc="quiet", enabled=False, interval=1, clock=clock, terminal=True) as p:
        for _ in range(3):
            clock.advance(5)
            p.update()
    assert _lines(caplog) == []


def test_track_yields_every_item_and_counts_them(caplog, no_tqdm):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    got = []
    for x in track(iter([1, 2, 3]), total=3, desc="items", unit="item", interval=10, clock=clock, terminal=False):
        got.append(x)
        clock.advance(4)
    assert got == [1, 2, 3]
    # the last update's line (at 12 s) already says 3/3: close() does not repeat it
    assert _lines(caplog) == ["items: 3/3 items, 12s elapsed, about 0s left"]


def test_not_a_terminal_by_default_under_pytest(caplog, no_tqdm, monkeypatch):
    """terminal=None asks sys.stderr.isatty(); a captured or redirected stderr is not one: no tqdm."""
    class NotATty:
        def isatty(self) -> bool:
            return False

        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(progress_module.sys, "stderr", NotATty())
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    with Progress(total=2, desc="log path", interval=1, clock=clock) as p:
        clock.advance(2)
        p.update(2)
    assert _lines(caplog)[0] == "log path: 2/2 batches, 2s elapsed, about 0s left"


def test_a_terminal_gets_a_tqdm_bar(caplog, monkeypatch):
    made = []

    class FakeBar:
        def __init__(self, **kwargs):
            made.append(kwargs)
            self.n = 0
            self.closed = False

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(progress_module, "tqdm", FakeBar)
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    with Progress(total=4, desc="bar", interval=1, clock=clock, terminal=True) as p:
        clock.advance(20)
        p.update(4)
        bar = p._bar
    assert made == [{"total": 4, "desc": "bar", "unit": "batch", "leave": False}]
    assert bar.n == 4 and bar.closed
    assert _lines(caplog) == []  # the bar replaces the log lines


def test_collect_statistics_reports_both_passes_as_one_progress(tmp_path, caplog, monkeypatch, no_tqdm):
    from netbuilder import input_header, layer, write_net

    from int8tune.caffe.loader import load_net
    from int8tune.convert.converter import convert_net
    from int8tune.quant import calibrate
    from int8tune.runtime import Engine

    proto = input_header((1, 2, 4, 4)) + layer("conv", "Convolution", "data", "conv",
                                               "convolution_param { num_output: 2 kernel_size: 1 }")
    weights = {"conv": [np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1), np.zeros(2, np.float32)]}
    engine = Engine(convert_net(load_net(*write_net(tmp_path, proto, weights))))
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((2, 2, 4, 4)).astype(np.float32) for _ in range(3)]

    clock = FakeClock()
    made = []

    def slow_progress(total, desc, **kwargs):  # 7 s per batch on a fake clock, log path
        made.append((total, desc))
        p = Progress(total, desc, clock=clock, terminal=False, **kwargs)
        update = p.update

        def timed_update(n=1):
            clock.advance(7)
            update(n)

        p.update = timed_update
        return p

    monkeypatch.setattr(calibrate, "Progress", slow_progress)
    caplog.set_level(logging.INFO, logger=LOGGER)
    stats = calibrate.collect_statistics(engine, ["data", "conv"], lambda: iter(batches), 64, False, total=3)
    assert set(stats) == {"data", "conv"}
    assert made == [(6, "calibration statistics")]
    lines = _lines(caplog)
    # 6 batches of 7 s: a line at 14 s (2/6), 28 s (4/6), 42 s (6/6), and the final line
    assert lines[0] == "calibration statistics: 2/6 batches, 14s elapsed, about 28s left"
    assert lines[-1] == "calibration statistics: 6/6 batches, 42s elapsed, about 0s left"
    # without a total: counts only, no estimate
    made.clear()
    caplog.clear()
    calibrate.collect_statistics(engine, ["data"], lambda: iter(batches), 64, False)
    assert made == [(None, "calibration statistics")]
    assert _lines(caplog) and all("left" not in line for line in _lines(caplog))
