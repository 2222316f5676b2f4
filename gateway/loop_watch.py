"""How late a gateway process's event loop runs, and what blocked it (docs/gateway.md#event-loop-lag-and-stalls).

Every request of a process waits while its event loop is busy with something else, so a loop
blocked for 450 ms is 450 ms added to every request in flight. Two parts watch for it:

- **The tick**, a callback on the loop due every `GATEWAY_LOOP_WATCH_INTERVAL_MS`: it observes how
  late it ran in `tollgate_event_loop_lag_seconds` and stamps a heartbeat. A histogram
  observation and the next `call_at`: 3.5 µs in one process, up to about 8 µs with
  `PROMETHEUS_MULTIPROC_DIR` (measured in the docs).
- **The watchdog**, a daemon thread: when the heartbeat is older than the interval plus
  `GATEWAY_LOOP_STALL_LOG_MS`, it logs one warning on `gateway.loop` with the event loop thread's
  stack at that moment (the code that is blocking it), and, when the loop runs again, how late
  the tick was in total. It also times its own sleep: a watchdog that woke late was not running
  either, so the whole process was stopped (no CPU, or C code holding the GIL such as a garbage
  collection), not the loop alone.

A stack is code locations only (file, line, function), never a variable's value: nothing a
request carries can reach the log through it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time

from prometheus_client import Histogram

from gateway import metrics

logger = logging.getLogger("gateway.loop")

STACK_DEPTH = 16  # the innermost frames: the blocking call and the few that led to it
_WAKE_FLOOR = 0.001  # the watchdog never sleeps less than this


class LoopWatch:
    """The tick on one event loop and, with `stall_after` above 0, its watchdog thread.

    `interval` and `stall_after` are in seconds. Start and stop it on the loop's own thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float,
        stall_after: float,
        lag: Histogram = metrics.LOOP_LAG,
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.stall_after = stall_after
        self.beat = 0.0  # time.monotonic() of the last tick, read by the watchdog
        # (lag, beat) of the last tick that ran late enough to end a stall; written rarely.
        self.late_tick: tuple[float, float] = (0.0, 0.0)
        self.thread: threading.Thread | None = None
        self._observe = lag.observe
        self._late = stall_after / 2 if stall_after > 0 else float("inf")
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = 0
        self._stopped = threading.Event()

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self.beat = time.monotonic()
        self._due = self.loop.time() + self.interval
        self._handle = self.loop.call_at(self._due, self._tick)
        if self.stall_after > 0:
            self.thread = threading.Thread(target=self._watch, name="gateway-loop-watch", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    # --- On the event loop: as little as possible --------------------------------------------

    def _tick(self) -> None:
        loop = self.loop
        now = loop.time()
        lag = now - self._due
        self._observe(lag if lag > 0.0 else 0.0)  # a millisecond timer (uvloop) may fire early
        self.beat = beat = time.monotonic()
        if lag > self._late:
            self.late_tick = (lag, beat)
        # Due one interval from now, not from when it was due: a stall is observed once, not
        # again by every tick it pushed into the past.
        self._due = now + self.interval
        self._handle = loop.call_at(self._due, self._tick)

    # --- On the watchdog thread ---------------------------------------------------------------

    def _watch(self) -> None:
        limit = self.interval + self.stall_after
        stalled_at: float | None = None  # the heartbeat before the stall being reported
        paused = False  # a process pause was reported and the watchdog has not woken on time since
        timeout = self.interval
        full_collections = _full_collections()
        while True:
            asleep = time.monotonic()
            if self._stopped.wait(timeout):
                return
            woke = time.monotonic()
            late = woke - asleep - timeout  # the watchdog's own overshoot
            timeout = self.interval
            if self.loop.is_closed():
                return
            if not self.loop.is_running():
                stalled_at = None  # a loop stopped between two runs is paused, not blocked
                continue
            beat = self.beat
            collections = _full_collections() - full_collections
            full_collections += collections
            if stalled_at is None:
                overdue = woke - beat - self.interval
                if overdue > self.stall_after:
                    stalled_at = beat
                    self._log_stall(overdue, late, collections)
                elif late > self.stall_after:
                    if not paused:
                        _log_process_pause(late, collections)
                    paused = True
                else:
                    paused = False
                    # Wake just as the tick would pass the limit: a stall is seen as soon as it counts.
                    timeout = max(beat + limit - time.monotonic(), _WAKE_FLOOR)
            elif beat != stalled_at:
                self._log_stall_end(stalled_at)
                stalled_at = None

    def _log_stall(self, overdue: float, late: float, collections: int) -> None:
        if late > self.stall_after:
            why = (
                f"The watchdog thread itself woke {late * 1000:.0f} ms late, so the whole process "
                "was stopped, not only the event loop: the machine gave it no CPU, or C code held "
                f"the GIL (full garbage collections meanwhile: {collections}). The stack is where "
                "the loop thread was, not necessarily the cause."
            )
        else:
            why = (
                "The watchdog thread woke on time, so the event loop thread itself is busy: "
                "running Python code or waiting in a blocking call, at the innermost lines below."
            )
        logger.warning(
            "event loop blocked for %.0f ms so far (its tick, due every %.0f ms, is that overdue; "
            "logged past %.0f ms). %s\nEvent loop thread, innermost call last:\n%s",
            overdue * 1000,
            self.interval * 1000,
            self.stall_after * 1000,
            why,
            "\n".join(f"  {line}" for line in thread_stack(self._loop_thread)),
        )

    def _log_stall_end(self, stalled_at: float) -> None:
        lag, beat = self.late_tick
        if beat <= stalled_at:  # the tick that ended it ran less late than it looked from here
            lag = max(self.beat - stalled_at - self.interval, 0.0)
        logger.info(
            "event loop running again after %.0f ms blocked in all (how late its tick ran)", lag * 1000
        )


def loop_watch_start(
    *, interval: float, stall_after: float, lag: Histogram = metrics.LOOP_LAG
) -> LoopWatch | None:
    """Watch the running event loop (seconds; `stall_after` 0: no watchdog, no log), or nothing
    with `interval` 0."""
    if interval <= 0:
        return None
    watch = LoopWatch(asyncio.get_running_loop(), interval=interval, stall_after=stall_after, lag=lag)
    watch.start()
    return watch


def thread_stack(thread_id: int, *, depth: int = STACK_DEPTH) -> list[str]:
    """Where a thread is now, outermost first: `file:line in function`, at most `depth` lines (the
    innermost). Locations only: a frame's variables are never read."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return ["(the thread has ended)"]
    lines = []
    while frame is not None and len(lines) < depth:
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_qualname}")
        frame = frame.f_back
    if frame is not None:
        lines.append("… (outer calls left out)")
    del frame  # a frame refers to its locals: hold none of them longer than this
    lines.reverse()
    return lines


def _full_collections() -> int:
    return gc.get_stats()[2]["collections"]


def _log_process_pause(late: float, collections: int) -> None:
    # The loop has run since (its tick is fresh), but the watchdog's sleep overshot: nothing in
    # this process ran Python for that long.
    logger.warning(
        "gateway process stopped for about %.0f ms: the watchdog thread woke that late, so no "
        "Python code ran in the process meanwhile, on the event loop or anywhere else. Either the "
        "machine gave it no CPU or C code held the GIL (full garbage collections meanwhile: %d).",
        late * 1000,
        collections,
    )
