"""How late a gateway process's event loop runs, and what blocked it (docs/gateway.md#event-loop-lag-and-stalls).

Every request of a process waits while its event loop is busy with something else, so a loop
blocked for 450 ms is 450 ms added to every request in flight. Two parts watch for it:

- **The tick**, a callback on the loop due every `GATEWAY_LOOP_WATCH_INTERVAL_MS`: it observes how
  late it ran in `tollgate_event_loop_lag_seconds` and stamps a heartbeat. A histogram
  observation and the next `call_at`: 3.5 µs in one process, up to about 8 µs with
  `PROMETHEUS_MULTIPROC_DIR` (measured in the docs).
- **The watchdog**, a daemon thread: when the heartbeat is older than the interval plus
  `GATEWAY_LOOP_STALL_LOG_MS`, it logs a warning on `gateway.loop` with the event loop thread's
  stack and what the thread was doing, told by the CPU time it used meanwhile: computing, waiting
  in a call, or not running at all (the watchdog's own late wake and its waits for the GIL tell
  which). At most one such warning every `GATEWAY_LOOP_STALL_LOG_EVERY_S`; the stalls in between
  are counted and summed up in one line: once the time is up, or just before the next warning (a
  stall's or a pause's) if that comes first, or when the watch stops.

A stack is code locations only (file, line, function), never a variable's value: nothing a
request carries can reach the log through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

from prometheus_client import Histogram

from common import logs
from gateway import metrics

try:
    import resource
except ImportError:  # not on Windows: no GIL waits counted, so no cause told for a late wake
    resource = None

logger = logging.getLogger("gateway.loop")

STACK_DEPTH = 16  # the innermost frames: the blocking call and the few that led to it
_WAKE_FLOOR = 0.001  # the watchdog never sleeps less than this
_PROBE = 0.05  # at most this long, inside a stall, to measure what the loop thread does
_COMPUTING = 0.5  # CPU share of the loop thread above which it was computing
_WAITING = 0.15  # and below which it was not
_FAILURE_LOG_EVERY = 60.0  # at least this long between two errors of a look that failed
# The event loop's own functions: with one of them innermost, no callback is running.
_LOOP_OWN = {"select", "_run_once", "run_forever", "run_until_complete", "run"}


class Sample(NamedTuple):
    """What the watchdog reads at each wake (seconds, except `gil_waits`)."""

    wall: float  # time.monotonic()
    loop_cpu: float  # CPU time of the event loop thread; nan where it cannot be read
    process_cpu: float  # of every thread of the process
    gil_waits: int  # the watchdog thread's voluntary context switches: one per switch interval
    # spent waiting for a GIL that another thread keeps (CPython's take_gil)


class LoopWatch:
    """The tick on one event loop and, with `stall_after` above 0, its watchdog thread.

    `interval`, `stall_after` and `log_every` are in seconds. Start and stop it on the loop's own
    thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float,
        stall_after: float,
        log_every: float = 60.0,
        lag: Histogram = metrics.LOOP_LAG,
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.stall_after = stall_after
        self.log_every = log_every
        self.beat = 0.0  # time.monotonic() of the last tick, read by the watchdog
        # (lag, beat) of the last tick that ran late enough to end a stall; written rarely.
        self.late_tick: tuple[float, float] = (0.0, 0.0)
        self.thread: threading.Thread | None = None
        self._observe = lag.observe
        self._late = stall_after / 2 if stall_after > 0 else float("inf")
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = 0
        self._loop_clock: int | None = None
        self._stopped = threading.Event()
        # The watchdog thread's own: when the next warning may be logged, and the stalls not logged.
        self._quiet_until = 0.0
        self._unlogged = 0
        self._unlogged_longest = 0.0
        self._stalled_at: float | None = None  # the heartbeat before the stall under way
        self._logged = False  # whether the stall under way was logged
        self._failed_quiet_until = 0.0  # when the next failed look may be logged
        self._failures_unlogged = 0

    def start(self) -> None:
        """The tick only; `start_watchdog` adds the thread."""
        self._loop_thread = threading.get_ident()
        self._loop_clock = _thread_clock(self._loop_thread)
        self.beat = time.monotonic()
        self._due = self.loop.time() + self.interval
        self._handle = self.loop.call_at(self._due, self._tick)

    def start_watchdog(self) -> None:
        if self.stall_after <= 0 or self.thread is not None or self._stopped.is_set():
            return
        # From now on: whatever kept the tick from running before (start-up) is not a stall.
        self.beat = time.monotonic()
        self.thread = threading.Thread(target=self._watch, name="gateway-loop-watch", daemon=True)
        self.thread.start()

    def stop(self, *, timeout: float = 2.0) -> None:
        self._stopped.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)  # it wakes at once, unless it is writing a log line
            if self.thread.is_alive():
                return  # its counts are still its own
        # What was counted since the last warning or error, and not written yet: not lost. Each
        # write on its own: a log handler or filter that fails on one keeps neither the other out
        # nor the caller (the gateway's shutdown) from going on.
        if self._unlogged:
            with contextlib.suppress(Exception):
                self._log_unlogged()
        if self._failures_unlogged:
            with contextlib.suppress(Exception):
                self._log_failures_unlogged(time.monotonic())

    # --- On the event loop: as little as possible --------------------------------------------

    def _tick(self) -> None:
        loop = self.loop
        now = loop.time()
        lag = now - self._due
        self._observe(lag if lag > 0.0 else 0.0)  # a millisecond timer (uvloop) may fire early
        beat = time.monotonic()
        if lag > self._late:
            self.late_tick = (lag, beat)  # before the beat: a watchdog that sees the beat sees it
        self.beat = beat
        # Due one interval from now, not from when it was due: a stall is observed once, not
        # again by every tick it pushed into the past.
        self._due = now + self.interval
        self._handle = loop.call_at(self._due, self._tick)

    # --- On the watchdog thread ---------------------------------------------------------------

    def _watch(self) -> None:
        timeout = self.interval
        while True:
            before = self._sample()
            if self._stopped.wait(timeout):
                return
            try:
                timeout = self._look(before, timeout)
            except Exception:
                # One failed look (a log handler or filter that raised, say) must not end the
                # watchdog: without a word, the loop would go unwatched until the process ends.
                timeout = self.interval
                with contextlib.suppress(Exception):
                    self._look_failed(time.monotonic())
            if timeout is None:
                return

    def _look(self, before: Sample, timeout: float) -> float | None:
        """One look after waiting `timeout`: the next wait, or None once the loop is closed."""
        after = self._sample()
        late = after.wall - before.wall - timeout  # the watchdog's own overshoot
        if self.loop.is_closed():
            return None
        if not self.loop.is_running():
            self._stalled_at = None  # a loop stopped between two runs is paused, not blocked
            return self.interval
        beat = self.beat
        stalled_at = self._stalled_at
        if stalled_at is not None:
            if beat != stalled_at:
                self._stalled_at = None
                self._stall_ended(self._logged)
            elif not self._logged and after.wall >= self._quiet_until:
                # Begun inside the quiet time and still under way when it is over: a loop that
                # hangs for good is logged with its stack, not only counted once it ends (never).
                self._logged = self._stall_began(after.wall - stalled_at - self.interval, late, before, after)
            return self.interval
        overdue = after.wall - beat - self.interval
        if overdue > self.stall_after:
            self._stalled_at = beat
            self._logged = False  # until the warning is written
            self._logged = self._stall_began(overdue, late, before, after)
        elif late > self.stall_after:
            # The loop has run again already, but nothing ran the watchdog for that long.
            if self._may_log(after.wall, late):
                self._log_pause(late, before, after)
        else:
            self._sum_up_due(after.wall)
            # Wake just as the tick would pass the limit: a stall is seen as soon as it counts.
            return max(beat + self.interval + self.stall_after - time.monotonic(), _WAKE_FLOOR)
        return self.interval

    @property
    def _failure_log_every(self) -> float:
        return max(self.log_every, _FAILURE_LOG_EVERY)

    def _look_failed(self, now: float) -> None:
        """Log the exception being handled, at most once every `log_every` or a minute, whichever
        is longer (even with `log_every` 0): a look that fails once is likely to fail at every
        look, several times a second."""
        if now < self._failed_quiet_until:
            self._failures_unlogged += 1
            return
        every = self._failure_log_every
        self._failed_quiet_until = now + every
        since = self._failures_unlogged
        self._failures_unlogged = 0
        logger.exception(
            "the event loop watchdog failed at one look%s; it goes on watching (at most one such "
            "error every %.0f s)",
            f" ({since} more failed since the last such error)" if since else "",
            every,
        )

    def _log_failures_unlogged(self, now: float) -> None:
        """The failed looks counted since the last error, in an error of its own: its time starts
        over, as an error's with a traceback does (at most one such line per that time)."""
        every = self._failure_log_every
        self._failed_quiet_until = now + every
        since, self._failures_unlogged = self._failures_unlogged, 0  # reset first: see _log_unlogged
        logger.error(
            "the event loop watchdog failed at %d more looks since its last such error, not logged "
            "(at most one such error every %.0f s)",
            since,
            every,
        )

    def _sum_up_due(self, now: float) -> None:
        """At a look that found the loop on time: what was counted and not written, once the time
        of its warning or of its error is up (no further stall or failure may come to carry it)."""
        if self._unlogged and now >= self._quiet_until:
            self._log_unlogged()
        if self._failures_unlogged and now >= self._failed_quiet_until:
            self._log_failures_unlogged(now)

    def _sample(self) -> Sample:
        try:
            loop_cpu = time.clock_gettime(self._loop_clock) if self._loop_clock is not None else math.nan
        except OSError:  # the loop thread has ended
            loop_cpu = math.nan
        return Sample(time.monotonic(), loop_cpu, time.process_time(), _voluntary_switches())

    def _may_log(self, now: float, length: float) -> bool:
        """One warning per `log_every`: the others are counted, with the longest."""
        if now < self._quiet_until:
            self._unlogged += 1
            self._unlogged_longest = max(self._unlogged_longest, length)
            return False
        self._new_window(now)
        return True

    def _new_window(self, now: float) -> None:
        """A warning is about to be logged: its window opens, and the stalls counted since the last
        one are summed up first, so that the lines come in time order and no count lands in the
        wrong window. The window opens before anything is written: a log handler or filter that
        raises cannot keep it shut (every later look would try again). Nor can it keep the warning
        from being written: a summary that fails is logged as a failed look, and the warning
        follows."""
        self._quiet_until = now + self.log_every
        if self._unlogged:
            try:
                self._log_unlogged()
            except Exception:
                with contextlib.suppress(Exception):
                    self._look_failed(now)

    def _stall_began(self, overdue: float, late: float, before: Sample, after: Sample) -> bool:
        if after.wall < self._quiet_until:
            return False  # counted when it ends, with its length
        # What the loop thread is doing first, before any line is written: a slow log handler
        # would let the stall end, and the stack be some later callback's.
        frames = _frames(self._loop_thread)
        request = self._running_request()
        idle = not frames or _is_loop_own(frames[-1])
        if late > self.stall_after / 2:
            # The watchdog could not run either: what kept it out kept the loop out.
            why = _why_late(late, before, after, idle=idle)
        else:
            # Measured inside the stall, a moment more, so that what came before does not count.
            beat = self.beat
            if self._stopped.wait(min(_PROBE, self.stall_after / 2)):
                return True
            probe = self._sample()
            start, end = (after, probe) if self.beat == beat else (before, after)
            why = _why_on_time(start, end, idle)
        self._new_window(after.wall)
        logger.warning(
            "event loop blocked for %.0f ms by the time the watchdog looked, in gateway process %d "
            "(its tick, due every %.0f ms, was that overdue; logged past %.0f ms%s).%s %s\n"
            "Event loop thread, innermost call last:\n%s",
            overdue * 1000,
            os.getpid(),
            self.interval * 1000,
            self.stall_after * 1000,
            f", at most once every {self.log_every:.0f} s" if self.log_every > 0 else "",
            f" Request {request} was running." if request else "",
            why,
            "\n".join(f"  {line}" for line in _lines(frames)),
            extra={"request_id": request},
        )
        return True

    def _stall_ended(self, logged: bool) -> None:
        # The first tick after the stall ran at least (overdue - 1 ms of uvloop's clock) late, more
        # than `_late`, and wrote `late_tick` before its beat: this is that tick's or a later one's.
        lag, _ = self.late_tick
        if not logged:
            self._unlogged += 1
            self._unlogged_longest = max(self._unlogged_longest, lag)
            return
        logger.info(
            "event loop running again after %.0f ms blocked in all (how late its tick ran)", lag * 1000
        )

    def _log_pause(self, late: float, before: Sample, after: Sample) -> None:
        logger.warning(
            "gateway process %d: the watchdog thread woke %.0f ms late, so for that long no "
            "Python code ran in the process, on the event loop or anywhere else (the loop has "
            "run again since). %s",
            os.getpid(),
            late * 1000,
            _why_late(late, before, after, idle=None),
        )

    def _log_unlogged(self) -> None:
        # Reset before writing: a logger that raises must not leave the count to be written again,
        # and fail again, at every later look.
        count, longest = self._unlogged, self._unlogged_longest
        self._unlogged = 0
        self._unlogged_longest = 0.0
        logger.warning(
            "gateway process %d: %d more event loop stalls or pauses since the last warning were "
            "not logged (at most one warning every %.0f s), the longest %.0f ms; "
            "tollgate_event_loop_lag_seconds counts every one.",
            os.getpid(),
            count,
            self.log_every,
            longest * 1000,
        )

    def _running_request(self) -> str:
        """The request id of the task running on the loop, if one is. Both reads are a dict lookup
        (asyncio's running tasks by loop; the task's context, immutable underneath), safe from
        another thread."""
        task = asyncio.current_task(self.loop)
        if task is None:
            return ""
        return task.get_context().get(logs.request_id, "")


def loop_watch_start(
    *,
    interval: float,
    stall_after: float,
    log_every: float = 60.0,
    watchdog: bool = True,
    lag: Histogram = metrics.LOOP_LAG,
) -> LoopWatch | None:
    """Watch the running event loop (seconds; `stall_after` 0: no watchdog, no log), or nothing
    with `interval` 0. `watchdog=False` starts the tick alone: `start_watchdog` adds the thread."""
    if interval <= 0:
        return None
    watch = LoopWatch(
        asyncio.get_running_loop(), interval=interval, stall_after=stall_after, log_every=log_every, lag=lag
    )
    watch.start()
    if watchdog:
        watch.start_watchdog()
    return watch


# --- What a stall was ----------------------------------------------------------------------------


def _why_on_time(start: Sample, end: Sample, idle: bool) -> str:
    """The watchdog ran on time, so no thread kept the GIL for long: the loop thread's CPU share
    says whether it computed or waited."""
    wall = end.wall - start.wall
    cpu = end.loop_cpu - start.loop_cpu
    if not wall > 0 or math.isnan(cpu):
        return "The stack below is where the event loop thread is."
    share = cpu / wall
    used = f"it used {share:.0%} of a CPU meanwhile"
    if share >= _COMPUTING:
        if idle:
            return (
                f"The event loop thread was computing with no callback on its stack ({used}): in "
                "the loop's own code (a great many callbacks or events at once), or in a C function "
                "the loop called directly (uvloop shows no frame for one)."
            )
        return (
            f"The event loop thread was computing ({used}): running Python code, or C code called "
            "from it, at the innermost lines below, the likely culprit."
        )
    if share >= _WAITING:
        return (
            f"The event loop thread was computing part of the time ({used}): computing at the lines "
            "below on a machine short of CPU, or computing and waiting in turn."
        )
    if idle:
        return (
            f"The event loop thread was hardly running ({used}) and no callback is on its stack: "
            "it was waiting in a C function the loop called directly (uvloop shows no frame for "
            "one: a time.sleep scheduled with call_soon, say), or the machine gave it no CPU, or it "
            "was waiting for the GIL."
        )
    return (
        f"The event loop thread was waiting, not computing ({used}), in a call that let go of the "
        "GIL (I/O, a sleep, a lock, a database query made from the loop) at the innermost lines "
        "below, the likely culprit."
    )


def _why_late(late: float, before: Sample, after: Sample, *, idle: bool | None) -> str:
    """The watchdog woke `late` seconds late: no Python ran in the process for that long. Its own
    waits for the GIL and the threads' CPU time say why; the loop thread's stack, if it is still
    stalled (`idle` is None once the loop has run again: its stack says nothing then, and the
    text points to none).

    The CPU times cover the whole wait, its normal part before the late one too, when the threads
    may have computed as usual: a thread computed while the watchdog was kept out only if it used
    more than that part could hold, and did not if it used less than half the late part in all.
    """
    stack = idle is not None
    only_where = " The stack below is only where the event loop thread was." if stack else ""
    if before.gil_waits < 0:
        return (
            "What kept it out cannot be told on this system (no count of the watchdog's waits for "
            f"the GIL).{only_where}"
        )
    gil_wait = (after.gil_waits - before.gil_waits) * sys.getswitchinterval()
    if gil_wait < late / 2:
        return (
            "The watchdog was not waiting for the GIL, so the process itself was not running: "
            f"stopped (SIGSTOP, a debugger, a frozen container) or given no CPU by the machine.{only_where}"
        )
    usual = after.wall - before.wall - late  # the normal part of the watchdog's wait
    loop_cpu = after.loop_cpu - before.loop_cpu
    others = after.process_cpu - before.process_cpu - (0.0 if math.isnan(loop_cpu) else loop_cpu)
    # Every other thread together may have used each CPU the process may run on in the normal
    # part (threads in C code without the GIL run side by side).
    others_usual = usual * _usable_cpus()
    if loop_cpu - usual >= late / 2:
        return (
            f"The event loop thread kept the GIL while computing in C code ({loop_cpu * 1000:.0f} ms "
            "of CPU: a garbage collection, a large regular expression, JSON or compression call)"
            + ("; the lines below are where it let go." if stack else ".")
        )
    if others - others_usual >= late / 2:
        return (
            f"Another thread of the process kept the GIL while computing in C code "
            f"({others * 1000:.0f} ms of CPU: an import, a garbage collection, a large C call); "
            "the event loop thread was waiting for the GIL"
            + (", and its stack below is only where." if stack else ".")
        )
    if not (loop_cpu < late / 2 or math.isnan(loop_cpu)) or not others < late / 2:
        return (
            "A thread kept the GIL; whether it was computing cannot be told: the event loop thread "
            f"used {loop_cpu * 1000:.0f} ms of CPU and the others {others * 1000:.0f} ms over the "
            f"watchdog's whole wait, {(usual + late) * 1000:.0f} ms, which may have been before "
            "the GIL was kept." + (" The stack below is where the event loop thread is." if stack else "")
        )
    if idle is None:
        who = "which one cannot be told, as the event loop has run again since"
    elif idle:
        who = (
            "by the look of its stack another thread, as the event loop thread shows no callback: "
            "or the event loop thread itself, in a C function the loop called directly (uvloop "
            "shows no frame for one)"
        )
    else:
        who = "most likely the event loop thread, in the innermost lines below"
    return (
        "A thread kept the GIL without using the CPU: it was blocked in a C call (a sleep, I/O, a "
        f"lock) that does not let go of the GIL; {who}."
    )


# --- Stacks --------------------------------------------------------------------------------------


class Frame(NamedTuple):
    filename: str
    lineno: int
    function: str


def _frames(thread_id: int, *, depth: int = STACK_DEPTH + 1) -> list[Frame]:
    """Up to `depth` frames of a thread, outermost first ([] if it has ended)."""
    frame = sys._current_frames().get(thread_id)
    frames = []
    while frame is not None and len(frames) < depth:
        code = frame.f_code
        frames.append(Frame(code.co_filename, frame.f_lineno, code.co_qualname))
        frame = frame.f_back
    del frame  # a frame refers to its locals: hold none of them longer than this
    frames.reverse()
    return frames


def _lines(frames: list[Frame], *, depth: int = STACK_DEPTH) -> list[str]:
    if not frames:
        return ["(the thread has ended)"]
    lines = [f"{frame.filename}:{frame.lineno} in {frame.function}" for frame in frames[-depth:]]
    if len(frames) > depth:
        lines.insert(0, "… (outer calls left out)")
    return lines


def _is_loop_own(frame: Frame) -> bool:
    """The event loop waiting for events or between callbacks (asyncio's or uvloop's), not
    running one."""
    path = Path(frame.filename)
    in_loop = path.name == "selectors.py" or path.parent.name in ("asyncio", "uvloop")
    return in_loop and frame.function.rsplit(".", 1)[-1] in _LOOP_OWN


def _thread_clock(thread_id: int) -> int | None:
    """The CPU-time clock of a thread of this process. Linux names the thread in it by its id, so
    reading it once the thread has ended raises OSError rather than touching freed memory."""
    try:
        return time.pthread_getcpuclockid(thread_id)
    except (AttributeError, OSError):
        return None


def _voluntary_switches() -> int:
    """-1 where a thread's own count cannot be read (RUSAGE_THREAD is Linux's)."""
    if resource is None or not hasattr(resource, "RUSAGE_THREAD"):
        return -1
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), not the machine's: a container pinned to
    two of 64 CPUs can use two."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1
