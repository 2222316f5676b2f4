"""The loop watch (docs/gateway.md#event-loop-lag-and-stalls): a tick on real event loops, asyncio's
and uvloop's (the gateway's under uvicorn), with its real watchdog thread; each test gets a
histogram of its own, so the session's gateway, which watches its loop too, counts into another.
A stall is made for real: Python code spinning, a sleep, a C call that keeps the GIL, a stopped
process."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry, Histogram

from common import logs
from gateway.loop_watch import LoopWatch, Sample, _why_late, loop_watch_start
from tests import event_loop
from tests.fake_upstream import ROOT
from tests.gateway.conftest import ThreadedServer, gateway_app
from tests.gateway.test_metrics import TOKEN, scrape, value

SECRET_IN_A_LOCAL = "sk-live-a-secret-held-by-the-blocking-frame"


@pytest.fixture(autouse=True)
def switch_interval() -> Iterator[float]:
    """CPython's own switch interval, 5 ms, for every test here, the previous one back after it (a
    gateway started in this process sets 1 ms and keeps it): a watchdog waiting for the GIL then
    counts one wait per 5 ms, not per 1 ms, which a loaded machine can hardly fail to count."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return functools.partial(event_loop.run, runner=asyncio.run if request.param == "asyncio" else uvloop.run)


class Lag:
    """A real lag histogram in a registry of its own, with one bucket boundary: `at`."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.registry = CollectorRegistry()
        self.histogram = Histogram("test_loop_lag_seconds", "lag", buckets=(at,), registry=self.registry)

    def sample(self, suffix: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"test_loop_lag_seconds_{suffix}", labels) or 0.0

    @property
    def count(self) -> float:
        return self.sample("count")

    @property
    def above(self) -> float:
        """Observations above `at`."""
        return self.count - self.sample("bucket", le=str(self.at))


def sleep_on_the_loop() -> list[str]:
    held = [SECRET_IN_A_LOCAL]
    time.sleep(0.35)  # lets go of the GIL, uses no CPU
    return held


def spin_on_the_loop() -> None:
    finish = time.monotonic() + 0.35
    while time.monotonic() < finish:  # pure Python: the GIL changes hands every switch interval
        pass


def usleep_keeping_the_gil() -> None:
    ctypes.PyDLL(None).usleep(400_000)  # a PyDLL call keeps the GIL: no thread runs Python meanwhile


def block_for(seconds: float) -> Callable[[], None]:
    def block() -> None:
        time.sleep(seconds)

    return block


A_BLOCK = block_for(0)  # every block_for's blocker runs the same code: its stack is this one's


def stalls(
    run,
    caplog,
    *blockers: Callable[[], Any],
    gap: float = 0.1,
    settle: float = 0.25,
    with_stop: bool = False,
    **options,
) -> tuple[LoopWatch, list]:
    """Run each blocker on a watched loop (ticks every 20 ms, a stall logged past 100 ms, every
    one: a pause of a loaded machine adds a warning of its own, not one that takes the blocker's
    place), `gap` apart, then let the loop run freely for `settle` (the watchdog sees a stall end at
    its first look after the tick ran, within an interval): the watch, and the records of its
    watchdog; `with_stop`, those its stop wrote too (on the loop's thread: what it still counted)."""
    options = {"interval": 0.02, "stall_after": 0.1, "log_every": 0, "lag": Lag(0.3).histogram, **options}
    loop_thread = []

    async def scenario() -> LoopWatch:
        loop = asyncio.get_running_loop()
        loop_thread.append(threading.get_ident())
        watch = loop_watch_start(**options)
        for blocker in blockers:
            await asyncio.sleep(gap)
            ran = loop.create_future()
            loop.call_soon(blocker)
            loop.call_soon(ran.set_result, None)
            await ran
        await asyncio.sleep(settle)
        watch.stop()
        return watch

    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        watch = run(scenario())
    assert not watch.thread.is_alive(), "stop did not end the watchdog"
    threads = (watch.thread.ident, *loop_thread) if with_stop else (watch.thread.ident,)
    return watch, [record for record in caplog.records if record.thread in threads]


def told_ms(warning: str) -> int | None:
    """How long a stall's or a pause's warning says the loop was held up (None: another line)."""
    told = re.match(
        r"event loop blocked for (\d+) ms|gateway process \d+: the watchdog thread woke (\d+) ms", warning
    )
    return int(told[1] or told[2]) if told else None


def the_longest(records: list) -> logging.LogRecord:
    """The warning of the longest stall or pause: for a blocker whose stack may not be in it (a
    pause has none), whatever a loaded machine added."""
    told = [
        record for record in records if record.levelno == logging.WARNING and told_ms(record.getMessage())
    ]
    assert told, [record.getMessage() for record in records]
    return max(told, key=lambda record: told_ms(record.getMessage()))


def the_blockers(records: list, blocker: Callable) -> logging.LogRecord:
    """The one stall warning with `blocker` on its stack. Not the longest: it says how late the
    tick was when the watchdog looked (100 to 120 ms), and a pause or stall of a loaded machine is
    usually longer."""
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]
    blockers = [
        record
        for record in records
        if record.levelno == logging.WARNING and blocked_in(blocker, record.getMessage())
    ]
    assert len(blockers) == 1, warnings
    warning = blockers[0].getMessage()
    assert warning.startswith("event loop blocked for ") and f"gateway process {os.getpid()} " in warning, (
        warning
    )
    return blockers[0]


def is_pause(warning: str) -> bool:
    return warning.startswith(f"gateway process {os.getpid()}: the watchdog thread woke ")


def ended_ms(records: list) -> list[int]:
    """How long each stall that ended was, as its INFO line says."""
    return [
        int(re.search(r"after (\d+) ms blocked", record.getMessage())[1])
        for record in records
        if record.levelno == logging.INFO
    ]


def blocked_in(function: Callable, warning: str) -> bool:
    return bool(
        re.search(rf"{re.escape(__file__)}:\d+ in {re.escape(function.__qualname__)}$", warning, re.MULTILINE)
    )


@pytest.fixture
def idle_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop that never runs: the watchdog's methods are driven on it directly, with constructed
    times and samples, so that what they log does not hang on how threads were scheduled."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def logged_here(caplog) -> list[logging.LogRecord]:
    """The records of this thread (a running gateway's watchdog may log meanwhile)."""
    return [record for record in caplog.records if record.thread == threading.get_ident()]


def gil_waits(seconds: float) -> int:
    """The watchdog's voluntary context switches while it waits `seconds` for the GIL (at the
    switch interval of the moment: a gateway started in this process sets its own)."""
    return round(seconds / sys.getswitchinterval())


def test_a_callback_that_blocks_the_loop_is_observed_once_and_logged_once_with_its_stack(run, caplog):
    lag = Lag(0.3)
    watch, records = stalls(run, caplog, sleep_on_the_loop, lag=lag.histogram)

    assert lag.above == 1, "the stall is one observation of at least 0.3 s, not one per tick it delayed"
    warning = the_blockers(records, sleep_on_the_loop).getMessage()  # one warning with its stack
    assert SECRET_IN_A_LOCAL not in warning
    assert len([ms for ms in ended_ms(records) if ms >= 300]) == 1, ended_ms(records)


def test_a_sleep_on_the_loop_is_told_as_waiting_in_a_call_that_let_go_of_the_gil(run, caplog):
    _, records = stalls(run, caplog, sleep_on_the_loop)
    warning = the_blockers(records, sleep_on_the_loop).getMessage()
    assert "The event loop thread was waiting, not computing" in warning, warning
    assert "let go of the GIL" in warning


def test_python_code_spinning_on_the_loop_is_told_as_computing(run, caplog):
    _, records = stalls(run, caplog, spin_on_the_loop)
    warning = the_blockers(records, spin_on_the_loop).getMessage()
    # All of a CPU when the machine has one to spare, part of one when it is loaded.
    assert re.search(r"The event loop thread was computing (\(|part of the time)", warning), warning


def told_as_kept_without_cpu(warning: str) -> bool:
    if "A thread kept the GIL without using the CPU" not in warning or "not running" in warning:
        return False
    if warning.startswith("event loop blocked for "):
        # The watchdog got the GIL when the call returned, inside the callback that made it.
        return "most likely the event loop thread" in warning and blocked_in(usleep_keeping_the_gil, warning)
    # Another thread took the GIL first and the loop ran its tick before the watchdog looked: a
    # pause it cannot pin on a thread.
    return "the watchdog thread woke" in warning and "which one cannot be told" in warning


def test_a_c_call_that_keeps_the_gil_is_told_as_such_not_as_a_stopped_process(run, caplog):
    # A loaded machine may keep the watchdog from counting its waits for the GIL (then it reads
    # as a process not running): one run of three must tell it right. Computing in C is wrong at
    # any run, as it would be at every run.
    told = []
    for _ in range(3):
        caplog.clear()
        _, records = stalls(run, caplog, usleep_keeping_the_gil)
        warning = the_longest(records).getMessage()
        assert "computing in C" not in warning, warning
        if told_as_kept_without_cpu(warning):
            return
        told.append(warning)
    pytest.fail("\n\n".join(told))


STOPPED_PROCESS = """
    import asyncio, logging, sys
    from prometheus_client import CollectorRegistry, Histogram
    from gateway.loop_watch import loop_watch_start

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")

    async def main():
        lag = Histogram("lag_seconds", "lag", registry=CollectorRegistry())
        loop_watch_start(interval=0.02, stall_after=0.1, log_every=0, lag=lag)
        print("watching", flush=True)
        await asyncio.sleep(10)

    asyncio.run(main())
"""


def test_a_stopped_process_is_told_as_not_running():
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STOPPED_PROCESS)],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "watching\n"
        time.sleep(0.2)
        process.send_signal(signal.SIGSTOP)  # every thread, the watchdog's too
        time.sleep(0.6)
        process.send_signal(signal.SIGCONT)
        time.sleep(0.4)
    finally:
        process.kill()
        _, errors = process.communicate(timeout=10)
    # Every stall and pause is logged: the stop's is the longest (a loaded machine may add some).
    warnings = [line.removeprefix("WARNING ") for line in errors.splitlines() if line.startswith("WARNING")]
    assert warnings, errors
    stopped = max(warnings, key=lambda warning: told_ms(warning) or 0)
    # After SIGCONT either the watchdog looks first (a stall under way) or the loop ticks first (a
    # pause it has run since): both say the process was not running, not the loop alone.
    assert told_ms(stopped) >= 400, errors
    assert "so the process itself was not running: stopped (SIGSTOP" in stopped, errors


# The watchdog woke 0.5 s late after its normal wait (1 ms; 0.3 s for "cannot be told"), for
# each thing `_why_late` can say: the sample after it (wall time, the loop thread's CPU, the
# process's, and how long the watchdog waited for the GIL, None where that is not counted).
WOKE_LATE = {
    "kept it out cannot be told": (0.501, 0.0, 0.0, None),
    "the process itself was not running": (0.501, 0.0, 0.0, 0.0),
    "kept the GIL while computing in C": (0.501, 0.5, 0.5, 0.5),
    "Another thread of the process kept the GIL": (0.501, 0.0, 0.5, 0.5),
    "whether it was computing cannot be told": (0.8, 0.4, 0.4, 0.5),
    "kept the GIL without using the CPU": (0.501, 0.0, 0.0, 0.5),
}


def woke_late(
    wall: float, loop_cpu: float, process_cpu: float, gil_wait: float | None
) -> tuple[Sample, Sample]:
    """The samples before and after the watchdog's wait, all from 0 before it."""
    if gil_wait is None:
        return Sample(0.0, 0.0, 0.0, -1), Sample(wall, loop_cpu, process_cpu, -1)
    return Sample(0.0, 0.0, 0.0, 0), Sample(wall, loop_cpu, process_cpu, gil_waits(gil_wait))


@pytest.mark.parametrize("said", WOKE_LATE)
def test_a_pause_is_told_without_pointing_to_a_stack_as_none_follows_it(said, idle_loop, caplog):
    before, after = woke_late(*WOKE_LATE[said])
    watch = LoopWatch(idle_loop, interval=0.02, stall_after=0.1, lag=Lag(0.3).histogram)
    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        watch._log_pause(0.5, before, after)
    (line,) = [record.getMessage() for record in logged_here(caplog)]
    assert line.startswith("gateway process ") and said in line, line
    assert "below" not in line and "stack" not in line, line
    # A stall's warning, with the stack after it, points to it.
    assert "below" in _why_late(0.5, before, after, idle=False)


def test_one_warning_at_most_per_interval_the_stalls_in_between_counted_with_the_longest(run, caplog):
    block = block_for
    lag = Lag(0.3)
    # The first stall is logged at about 0.17 s, the third ends at about 0.9 s, the window at 1.2 s
    # (a pause of a loaded machine in it would be counted too), the watch stops at about 1.5 s.
    _, records = stalls(
        run,
        caplog,
        block(0.2),
        block(0.35),
        block(0.2),
        gap=0.05,
        settle=0.6,
        log_every=1.0,
        lag=lag.histogram,
        with_stop=True,
    )
    assert lag.above == 1  # the histogram counts every stall (0.35 s above 0.3 s, the others under)
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]
    # The first stall's warning, with its stack; the other two, in the same window, have none.
    the_blockers(records, A_BLOCK)
    # The two stalls not logged, in one line: once the window is over, while the loop runs freely,
    # or when the watch stops if a loaded machine held the watchdog back until then.
    summaries = [
        re.search(r"(\d+) more event loop stalls or pauses .* the longest (\d+) ms", warning)
        for warning in warnings[1:]
    ]
    summary = next(filter(None, summaries), None)
    assert summary and int(summary[1]) >= 2 and 330 <= int(summary[2]) < 800, warnings
    assert len(ended_ms(records)) == 1, "one end, the logged stall's"


def test_the_stalls_still_counted_when_the_watch_stops_are_summed_up_then(run, caplog):
    # The first stall is logged and opens a minute's quiet time: the second is only counted (with
    # any pause a loaded machine adds).
    _, records = stalls(run, caplog, block_for(0.25), block_for(0.35), log_every=60.0, with_stop=True)
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]
    the_blockers(records, A_BLOCK)  # the first's: the second's, in its quiet time, has none
    summary = re.search(r"(\d+) more event loop stalls or pauses .* the longest (\d+) ms", warnings[-1])
    assert summary and int(summary[1]) >= 1 and int(summary[2]) >= 330, warnings


def test_a_warning_that_opens_a_new_window_comes_after_the_summary_of_the_window_before(idle_loop, caplog):
    watch = LoopWatch(idle_loop, interval=0.02, stall_after=0.1, log_every=1.0, lag=Lag(0.3).histogram)
    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        assert watch._may_log(100.0, 0.2), "a pause logged: the window lasts until 101 s"
        assert not watch._may_log(100.4, 0.3)
        watch.late_tick = (0.5, 100.8)
        watch._stall_ended(logged=False)
        # A stall begun at 100.9 s, still under way at 101.3 s: logged then, opening a window.
        before, after = Sample(100.9, 0.0, 0.0, 0), Sample(101.3, 0.0, 0.0, 0)
        assert watch._stall_began(0.4, 0.2, before, after)
        assert not watch._may_log(101.8, 0.25)
        assert watch._may_log(102.4, 0.2), "a pause logged: the next window"
    lines = [record.getMessage() for record in logged_here(caplog)]
    assert len(lines) == 3, lines
    assert re.search(r"2 more event loop stalls or pauses .* the longest 500 ms", lines[0]), lines
    assert lines[1].startswith("event loop blocked for 400 ms"), lines
    assert re.search(r"1 more event loop stalls or pauses .* the longest 250 ms", lines[2]), lines


def sleep_past_the_quiet_time() -> None:
    time.sleep(1.3)


def test_a_stall_begun_in_the_quiet_time_is_logged_with_its_stack_once_that_is_over(run, caplog):
    # The first stall is logged at about 0.25 s, the quiet time is over at about 1.25 s, while the
    # second (from about 0.45 s to 1.75 s) still lasts: a loop that hangs for good is reported.
    # The stop's records too: a summary it writes must not count the logged stall either.
    _, records = stalls(
        run, caplog, block_for(0.2), sleep_past_the_quiet_time, gap=0.15, log_every=1.0, with_stop=True
    )
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]
    the_blockers(records, A_BLOCK)  # the first stall's
    # Its stack, and how long it had lasted then; a pause of a loaded machine may be logged too.
    (hung,) = [warning for warning in warnings if blocked_in(sleep_past_the_quiet_time, warning)]
    assert int(re.search(r"blocked for (\d+) ms", hung)[1]) >= 600, hung
    summed = [
        int(ms)
        for ms in re.findall(r"more event loop stalls or pauses .* the longest (\d+) ms", "\n".join(warnings))
    ]
    assert all(ms < 1000 for ms in summed), "the logged stall was counted too"
    assert len([ms for ms in ended_ms(records) if ms >= 1200]) == 1, ended_ms(records)


def spin_then_usleep_keeping_the_gil() -> None:
    finish = time.monotonic() + 0.3
    while time.monotonic() < finish:  # Python computing: the watchdog can still run meanwhile
        pass
    ctypes.PyDLL(None).usleep(500_000)


def test_a_loop_that_computed_before_keeping_the_gil_without_cpu_is_not_told_as_computing_in_c(run, caplog):
    # The first stall, logged, sets the watchdog's pace: it looks just after it ends, then sleeps
    # for the tick's whole limit (0.42 s), from before the spin to within the C call.
    _, records = stalls(
        run,
        caplog,
        block_for(0.5),
        spin_then_usleep_keeping_the_gil,
        gap=0.1,
        interval=0.02,
        stall_after=0.4,
        log_every=0,
        settle=0.3,
    )
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]
    # The second stall's: with its stack if the watchdog looked before the loop ran again, else a
    # pause (a loaded machine's pause is shorter than its 0.5 s).
    seconds = [
        warning
        for warning in warnings
        if blocked_in(spin_then_usleep_keeping_the_gil, warning)
        or ("the watchdog thread woke" in warning and told_ms(warning) >= 300)
    ]
    assert seconds, warnings
    second = seconds[0]
    # The spin's CPU came before the GIL was kept: it is no sign of computing in C meanwhile.
    assert "computing in C" not in second, second
    assert "cannot be told" in second or "without using the CPU" in second, second


def test_cpu_the_loop_used_in_the_normal_part_of_the_watchdogs_wait_is_no_sign_of_computing_in_c():
    # The test above, as its samples read when its timing falls right: the watchdog waited 0.42 s
    # as usual, then 0.5 s more for the GIL; the loop spun 0.3 s, then slept keeping the GIL.
    before = Sample(0.0, 0.0, 0.0, 0)
    spun_then_slept = Sample(0.92, 0.3, 0.3, gil_waits(0.5))
    why = _why_late(0.5, before, spun_then_slept, idle=False)
    assert "computing in C" not in why and "cannot be told" in why, why
    # More CPU than the normal part could hold: the loop thread did compute while late.
    computed = Sample(0.92, 0.9, 0.9, gil_waits(0.5))
    assert "The event loop thread kept the GIL while computing in C" in _why_late(
        0.5, before, computed, idle=False
    )


class FailsOnce(logging.Filter):
    """A filter on `gateway.loop` that raises at the first warning it sees: a real failure inside
    the watchdog's look."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.failed and record.getMessage().startswith("event loop blocked for "):
            self.failed = True
            raise RuntimeError("a log filter that fails")
        return True


def test_a_look_that_fails_is_logged_and_the_watchdog_goes_on_reporting_stalls(run, caplog):
    failing = FailsOnce()
    logging.getLogger("gateway.loop").addFilter(failing)
    try:
        # Every stall may be logged: the first, if still under way at the next look, and the second.
        _, records = stalls(run, caplog, sleep_on_the_loop, sleep_on_the_loop, gap=0.6, log_every=0)
    finally:
        logging.getLogger("gateway.loop").removeFilter(failing)
    assert failing.failed
    (failed,) = [index for index, record in enumerate(records) if record.levelno == logging.ERROR]
    assert "a log filter that fails" in str(records[failed].exc_info[1])
    later = [record.getMessage() for record in records[failed + 1 :] if record.levelno == logging.WARNING]
    # A stall's warning with the blocker's stack after the error (a loaded machine may add its
    # pauses and stalls, before it or after it).
    assert any(blocked_in(sleep_on_the_loop, warning) for warning in later), later
    assert all(warning.startswith("event loop blocked for ") for warning in later if not is_pause(warning)), (
        later
    )


class FailsAlways(logging.Filter):
    """A filter on `gateway.loop` that raises at every stall warning: a look that keeps failing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("event loop blocked for "):
            raise RuntimeError("a log filter that fails")
        return True


def test_a_look_that_keeps_failing_logs_one_error_even_when_every_stall_may_be_logged(run, caplog):
    failing = FailsAlways()
    logging.getLogger("gateway.loop").addFilter(failing)
    try:
        # Every look within the stall tries to log it again (log_every 0), and fails again.
        _, records = stalls(run, caplog, block_for(0.7), log_every=0)
    finally:
        logging.getLogger("gateway.loop").removeFilter(failing)
    errors = [record for record in records if record.levelno == logging.ERROR]
    assert len(errors) == 1, [error.getMessage() for error in errors]
    assert "at most one such error every 60 s" in errors[0].getMessage()


def test_the_failed_looks_not_logged_are_counted_in_the_next_error(idle_loop, caplog):
    watch = LoopWatch(idle_loop, interval=0.02, stall_after=0.1, log_every=0, lag=Lag(0.3).histogram)
    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        for now in (100.0, 100.1, 130.0, 160.0):
            try:
                raise RuntimeError("a look that fails")
            except RuntimeError:
                watch._look_failed(now)
    records = logged_here(caplog)
    errors = [record.getMessage() for record in records if record.levelno == logging.ERROR]
    assert errors == [
        "the event loop watchdog failed at one look; it goes on watching (at most one such error every 60 s)",
        "the event loop watchdog failed at one look (2 more failed since the last such error); it goes on "
        "watching (at most one such error every 60 s)",
    ]
    assert all(record.exc_info for record in records)


class FailsOnSummaries(logging.Filter):
    """A filter on `gateway.loop` that raises at every summary of the stalls not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "more event loop stalls or pauses" in record.getMessage():
            raise RuntimeError("a log filter that fails on summaries")
        return True


def test_a_summary_that_fails_neither_keeps_the_next_warning_out_nor_its_window_shut(idle_loop, caplog):
    watch = LoopWatch(idle_loop, interval=0.02, stall_after=0.1, log_every=1.0, lag=Lag(0.3).histogram)
    failing = FailsOnSummaries()
    logging.getLogger("gateway.loop").addFilter(failing)
    try:
        with caplog.at_level(logging.INFO, logger="gateway.loop"):
            assert watch._may_log(100.0, 0.2), "a pause logged: the window lasts until 101 s"
            watch._log_pause(0.2, *woke_late(0.201, 0.0, 0.0, 0.2))
            assert not watch._may_log(100.4, 0.3)
            # A stall still under way at 101.3 s: its summary fails, its warning is written.
            before, after = Sample(100.9, 0.0, 0.0, 0), Sample(101.3, 0.0, 0.0, 0)
            assert watch._stall_began(0.4, 0.2, before, after)
            assert watch._unlogged == 0, "the count that failed is not tried again at every look"
            assert not watch._may_log(101.8, 0.25), "the window opened: this one is counted"
            watch._sum_up_due(101.9)  # in the window still: nothing written
            assert watch._may_log(102.4, 0.2), "the next window"
            watch._log_pause(0.2, *woke_late(0.201, 0.0, 0.0, 0.2))
    finally:
        logging.getLogger("gateway.loop").removeFilter(failing)
    records = logged_here(caplog)
    lines = [(record.levelno, record.getMessage()) for record in records]
    assert [level for level, _ in lines] == [
        logging.WARNING,
        logging.ERROR,
        logging.WARNING,
        logging.WARNING,
    ], lines
    assert "at one look" in lines[1][1] and "a log filter that fails on summaries" in str(
        records[1].exc_info[1]
    )
    assert lines[2][1].startswith("event loop blocked for 400 ms"), lines
    # The second summary fails too: within a minute of the first error, it is only counted.
    assert lines[3][1].startswith(f"gateway process {os.getpid()}: the watchdog thread woke 200 ms"), lines
    assert watch._failures_unlogged == 1


def fail_at(watch: LoopWatch, *times: float) -> None:
    for now in times:
        try:
            raise RuntimeError("a look that fails")
        except RuntimeError:
            watch._look_failed(now)


def test_the_failed_looks_held_back_are_written_once_their_minute_is_up_if_no_other_fails(idle_loop, caplog):
    watch = LoopWatch(idle_loop, interval=0.02, stall_after=0.1, log_every=0, lag=Lag(0.3).histogram)
    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        fail_at(watch, 100.0, 100.1, 130.0)
        watch._sum_up_due(159.9)  # a look on time, within the minute
        watch._sum_up_due(160.0)  # the first on time after it
        watch._sum_up_due(170.0)
        # The count is an error too: its minute starts over, one line a minute at most.
        fail_at(watch, 170.0, 219.9)
        watch._sum_up_due(219.9)
        assert len(logged_here(caplog)) == 2, "nothing more within a minute of the count"
        fail_at(watch, 220.0)  # the next written, with its traceback and those counted since
    errors = [record.getMessage() for record in logged_here(caplog) if record.levelno == logging.ERROR]
    assert errors[1:] == [
        "the event loop watchdog failed at 2 more looks since its last such error, not logged (at most "
        "one such error every 60 s)",
        "the event loop watchdog failed at one look (2 more failed since the last such error); it goes on "
        "watching (at most one such error every 60 s)",
    ], errors


def test_the_failed_looks_held_back_when_the_watch_stops_are_written_then(idle_loop, caplog):
    watch = LoopWatch(idle_loop, interval=0.02, stall_after=0.1, log_every=0, lag=Lag(0.3).histogram)
    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        fail_at(watch, 100.0, 100.1)
        watch.stop()
    errors = [record.getMessage() for record in logged_here(caplog) if record.levelno == logging.ERROR]
    assert len(errors) == 2 and "failed at 1 more looks since its last such error" in errors[1], errors
    assert watch._failures_unlogged == 0


class FailsAlwaysAll(logging.Filter):
    """A filter on `gateway.loop` that raises at every line."""

    def __init__(self) -> None:
        super().__init__()
        self.tried: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.tried.append(record.getMessage())
        raise RuntimeError("a log filter that fails at every line")


def test_a_stop_whose_lines_fail_raises_nothing_and_tries_each(idle_loop):
    """`stop` runs in the gateway's shutdown (in its finally): a failing logger must not break it."""
    watch = LoopWatch(idle_loop, interval=0.02, stall_after=0.1, log_every=1.0, lag=Lag(0.3).histogram)
    watch._unlogged, watch._unlogged_longest = 2, 0.3
    watch._failures_unlogged = 1
    failing = FailsAlwaysAll()
    logging.getLogger("gateway.loop").addFilter(failing)
    try:
        watch.stop()
    finally:
        logging.getLogger("gateway.loop").removeFilter(failing)
    assert len(failing.tried) == 2, failing.tried
    assert "2 more event loop stalls or pauses" in failing.tried[0]
    assert "failed at 1 more looks" in failing.tried[1]
    assert watch._unlogged == watch._failures_unlogged == 0


def test_a_log_every_longer_than_a_minute_spaces_the_failed_looks_errors_as_far(idle_loop, caplog):
    watch = LoopWatch(idle_loop, interval=0.02, stall_after=0.1, log_every=120.0, lag=Lag(0.3).histogram)
    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        fail_at(watch, 100.0)
        fail_at(watch, 160.0)
        assert len(logged_here(caplog)) == 1, "nothing more a minute later"
        fail_at(watch, 220.0)
    errors = [record.getMessage() for record in logged_here(caplog) if record.levelno == logging.ERROR]
    assert errors == [
        "the event loop watchdog failed at one look; it goes on watching (at most one such error every 120 s)",
        "the event loop watchdog failed at one look (1 more failed since the last such error); it goes on "
        "watching (at most one such error every 120 s)",
    ]


def test_the_warning_names_the_request_whose_task_blocks_the_loop(run, caplog):
    async def request() -> None:
        logs.request_id.set("req_blocking")
        sleep_on_the_loop()

    def start_request() -> None:
        asyncio.get_running_loop().create_task(request())

    _, records = stalls(run, caplog, start_request)
    record = the_blockers(records, sleep_on_the_loop)  # which request() calls
    assert "Request req_blocking was running." in record.getMessage(), record.getMessage()
    assert record.request_id == "req_blocking"


def test_a_loop_that_is_not_blocked_logs_nothing_and_lags_well_under_the_threshold(run, caplog):
    lag = Lag(0.25)

    async def scenario():
        watch = loop_watch_start(interval=0.02, stall_after=0.5, lag=lag.histogram)
        finish = time.monotonic() + 0.5
        while time.monotonic() < finish:
            await asyncio.sleep(0.005)  # a loop with work, none of it long
        watch.stop()
        return watch

    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        watch = run(scenario())
    assert lag.count >= 5
    assert lag.above == 0, "a tick ran more than half the stall threshold late"
    assert [record.getMessage() for record in caplog.records if record.thread == watch.thread.ident] == []


@pytest.fixture
def watchdogs_started(monkeypatch) -> list[asyncio.AbstractEventLoop]:
    """The loops whose watchdog started meanwhile (any gateway's in this process counts here too)."""
    loops = []
    start = LoopWatch.start_watchdog

    def recorded(watch: LoopWatch) -> None:
        start(watch)
        if watch.thread is not None:
            loops.append(watch.loop)

    monkeypatch.setattr(LoopWatch, "start_watchdog", recorded)
    return loops


def test_an_interval_of_0_starts_no_tick_and_no_thread(run, watchdogs_started):
    lag = Lag(0.25)

    async def scenario():
        watch = loop_watch_start(interval=0, stall_after=0.2, lag=lag.histogram)
        await asyncio.sleep(0.05)
        return watch, asyncio.get_running_loop()

    watch, loop = run(scenario())
    assert watch is None
    assert lag.count == 0
    assert loop not in watchdogs_started


def test_a_stall_log_of_0_keeps_the_ticks_and_starts_no_watchdog(run, watchdogs_started):
    lag = Lag(0.25)

    async def scenario():
        watch = loop_watch_start(interval=0.01, stall_after=0, lag=lag.histogram)
        await asyncio.sleep(0.1)
        watch.stop()
        return watch

    watch = run(scenario())
    assert watch.thread is None and watch.loop not in watchdogs_started
    assert lag.count >= 2


@pytest.mark.django_db(transaction=True)
def test_a_running_gateway_reports_its_event_loop_lag_in_a_metrics_scrape(gateway_url, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = []
    assert gateway_app().loop_watch is not None
    deadline = time.monotonic() + 5
    while value(samples := scrape(gateway_url), "tollgate_event_loop_lag_seconds_count") < 1:
        assert time.monotonic() < deadline, "no tick of the gateway's loop was counted"
        time.sleep(0.05)
    buckets = {
        labels["le"] for name, labels, _ in samples if name == "tollgate_event_loop_lag_seconds_bucket"
    }
    assert {"0.001", "2.5", "+Inf"} <= buckets
    count = value(samples, "tollgate_event_loop_lag_seconds_count")
    assert value(samples, "tollgate_event_loop_lag_seconds_bucket", le="+Inf") == count


# --- In a gateway: from the end of warm-up to shutdown ---------------------------------------------


def slow_freeze(freeze: Callable) -> Callable:
    def freeze_slowly(warmed) -> None:
        freeze(warmed)
        time.sleep(0.4)  # a process with more to collect than this test's

    return freeze_slowly


def failing_warm_up() -> None:
    raise RuntimeError("the catalog could not be loaded")


@pytest.mark.parametrize("warm_up", ["slow freeze", "no freeze", "failing"])
def test_a_gateway_watches_from_the_end_of_warm_up_and_its_watchdog_ends_with_it(
    warm_up, transactional_db, settings, monkeypatch, caplog
):
    from gateway import app

    settings.GATEWAY_LOOP_WATCH_INTERVAL_MS = 20
    settings.GATEWAY_LOOP_STALL_LOG_MS = 100
    settings.GATEWAY_GC_FREEZE = warm_up != "no freeze"
    monkeypatch.setattr(app, "_freeze_startup_objects", slow_freeze(app._freeze_startup_objects))
    if warm_up == "failing":
        monkeypatch.setattr("channels.catalog.catalog_warm", failing_warm_up)
    gateway = app.Gateway()
    server = ThreadedServer(gateway)
    with caplog.at_level(logging.INFO, logger="gateway"):
        server.start()
        try:
            deadline = time.monotonic() + 10
            while not (gateway._warming.done() and gateway.loop_watch.thread is not None):
                assert time.monotonic() < deadline, "the watchdog did not start after warm-up"
                time.sleep(0.01)
            watchdog = gateway.loop_watch.thread
            time.sleep(0.3)  # past the stall threshold: a freeze it watched would be logged by now
        finally:
            server.stop()
    # From this gateway's watchdog (the session's gateway has one too): it came after the freeze.
    assert [record.getMessage() for record in caplog.records if record.thread == watchdog.ident] == []
    assert not watchdog.is_alive(), "the gateway stopped, its watchdog did not"
    assert gateway.loop_watch is None
    failed = [record.getMessage() for record in caplog.records if "price catalog" in record.getMessage()]
    assert len(failed) == (warm_up == "failing"), failed


async def fails() -> None:
    raise RuntimeError("broken")


async def succeeds() -> None:
    return None


@pytest.mark.parametrize("failing", ["drain", "auth.stop"])
def test_a_shutdown_that_fails_midway_still_stops_the_watchdog(failing):
    from gateway.app import Gateway

    gateway = Gateway()
    gateway.started = True
    gateway.proxy = SimpleNamespace(
        drain=lambda timeout: fails() if failing == "drain" else succeeds(),
        loop_holds=None,
        limiter=SimpleNamespace(close=succeeds),
    )
    gateway.auth = SimpleNamespace(stop=fails)

    async def scenario() -> LoopWatch:
        gateway.loop_watch = watch = loop_watch_start(interval=0.02, stall_after=0.1, lag=Lag(0.3).histogram)
        with pytest.raises(RuntimeError, match="broken"):
            await gateway.shutdown()
        return watch, watch.thread.is_alive()

    watch, alive = event_loop.run(scenario())
    assert not alive, "shutdown did not wait for the watchdog to end"
    assert gateway.loop_watch is None


def test_a_warm_up_that_ends_after_shutdown_or_a_restart_starts_no_watchdog():
    from gateway.app import Gateway

    gateway = Gateway()
    gateway.loop_watch = watch = SimpleNamespace(starts=0)
    watch.start_watchdog = lambda: setattr(watch, "starts", watch.starts + 1)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        old, new = loop.create_future(), loop.create_future()
        old.set_result(None)
        new.set_result(None)
        gateway._warming = old
        gateway._warmed(old)  # shut down while warming
        assert watch.starts == 0
        gateway.started, gateway._warming = True, new
        gateway._warmed(old)  # started again: the first warm-up is not this start's
        assert watch.starts == 0
        gateway._warmed(new)
        assert watch.starts == 1

    event_loop.run(scenario())
