"""Waiting on one descriptor (aoe.fdwait.readable) and its users, at descriptor numbers
above 1023, where select() raises ValueError."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from aoe.fdwait import readable
from aoe.lab.host import _read_all

from .support.fds import fd_above_1024


class HighPipe:
    """A pipe whose read end is above 1024; the writer may be closed early, once."""

    def __init__(self, r: int, w: int) -> None:
        self.r, self.w = r, w

    def close_writer(self) -> None:
        if self.w >= 0:
            os.close(self.w)
            self.w = -1


@pytest.fixture
def high_pipe() -> Iterator[HighPipe]:
    r, w = os.pipe()
    pipe = HighPipe(-1, w)
    try:
        with fd_above_1024(r) as high:
            os.close(r)
            pipe.r = high
            yield pipe
    finally:
        pipe.close_writer()


def test_readable_waits_then_sees_data_and_the_end(high_pipe: HighPipe) -> None:
    r = high_pipe.r
    assert not readable(r, 0.05)
    os.write(high_pipe.w, b"x")
    assert readable(r, 5)
    assert os.read(r, 1) == b"x"
    high_pipe.close_writer()
    assert readable(r, 5)  # the end of the pipe is readable too
    assert os.read(r, 1) == b""


def test_a_timeout_already_past_does_not_wait(high_pipe: HighPipe) -> None:
    assert not readable(high_pipe.r, -1.0)


def test_the_lab_reads_a_child_result_on_a_high_descriptor(
        high_pipe: HighPipe) -> None:
    os.write(high_pipe.w, b"result")
    high_pipe.close_writer()
    assert _read_all(high_pipe.r, 5) == b"result"


def test_the_lab_read_times_out_on_a_silent_high_descriptor(
        high_pipe: HighPipe) -> None:
    with pytest.raises(TimeoutError):
        _read_all(high_pipe.r, 0.05)
