"""THE one reading of container time stamps (runner/backends/base.py ``epoch_seconds``, ``ContainerState.started_s``
and ``finished_s``), by equality on the forms the backends give."""
import calendar

import pytest

from runner.backends.base import ContainerState, epoch_seconds
from runner.backends.fake import _stamp
from runner.backends.slurm_records import _iso

T = calendar.timegm((2026, 11, 27, 7, 25, 40, 0, 0, 0))  # 2026-11-27T07:25:40Z


@pytest.mark.parametrize("stamp,seconds", [
    ("2026-11-27T07:25:40.123456789Z", T + 0.123456789),  # Docker: RFC 3339, UTC, nanoseconds
    ("2026-11-27T07:25:40.5Z", T + 0.5),
    ("2026-11-27T07:25:40Z", T),  # Slurm (slurm._iso): whole seconds, UTC
    ("2026-11-27T07:25:40", T),  # no zone: UTC
    ("2026-11-27 07:25:40Z", T),
    ("2026-11-27T09:25:40.25+02:00", T + 0.25),  # an offset is honoured
    ("2026-11-27T02:25:40-0500", T),
    ("1970-01-01T00:00:00Z", 0.0),
])
def test_time_stamps_are_read_as_unix_times(stamp, seconds):
    assert epoch_seconds(stamp) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize("stamp", [
    None, "", "0001-01-01T00:00:00Z",  # Docker's zero value: never started / not ended
    "Unknown", "None", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-27T24:00:00Z",
    "2026-11-27T07:25:40Zjunk",
])
def test_no_time_is_none(stamp):
    assert epoch_seconds(stamp) is None


def test_container_state_gives_its_times_in_seconds():
    running = ContainerState("c", "n", "running", True, started_at="2026-11-27T07:25:40.000000001Z",
                             finished_at="0001-01-01T00:00:00Z")
    assert running.started_s == pytest.approx(T + 1e-9, abs=1e-6)
    assert running.finished_s is None
    ended = ContainerState("c", "n", "exited", False, 3, started_at="2026-11-27T07:25:40Z", finished_at="2026-11-27T07:26:40Z")
    assert (ended.started_s, ended.finished_s) == (T, T + 60)
    assert ContainerState("c", "n", "queued", False).started_s is None


def test_the_backends_own_stamps_read_back():
    assert epoch_seconds(_iso(T)) == T  # the Slurm backend's
    assert epoch_seconds(_stamp(T + 0.123456789)) == pytest.approx(T + 0.123456789, abs=1e-6)  # the fake's
    assert _stamp(T + 0.9999999999) == "2026-11-27T07:25:41.000000000Z"  # rounding carries into the second
