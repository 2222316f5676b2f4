"""The loop watch (docs/gateway.md#event-loop-lag-and-stalls): a tick on real event loops, asyncio's
and uvloop's (the gateway's under uvicorn), with its real watchdog thread; each test gets a
histogram of its own, so the session's gateway, which watches its loop too, counts into another."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry, Histogram

from gateway.loop_watch import loop_watch_start
from tests.gateway.conftest import gateway_app
from tests.gateway.test_metrics import TOKEN, scrape, value

SECRET_IN_A_LOCAL = "sk-live-a-secret-held-by-the-blocking-frame"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    runner = asyncio.run if request.param == "asyncio" else uvloop.run

    def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
        # A thread of its own: the browser tests keep a loop running in the main thread.
        with ThreadPoolExecutor(1, thread_name_prefix="test-loop") as pool:
            return pool.submit(runner, coroutine).result()

    return run


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


def block_the_loop() -> list[str]:
    held = [SECRET_IN_A_LOCAL]
    time.sleep(0.35)
    return held


def watch_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "gateway-loop-watch"}


def test_a_callback_that_blocks_the_loop_is_observed_once_and_logged_once_with_its_stack(run, caplog):
    lag = Lag(0.3)
    records = caplog.records

    async def scenario():
        watch = loop_watch_start(interval=0.02, stall_after=0.1, lag=lag.histogram)
        await asyncio.sleep(0.1)
        asyncio.get_running_loop().call_soon(block_the_loop)
        deadline = time.monotonic() + 1.5
        # The block, then the watchdog's word that the loop runs again.
        while not any("running again" in record.getMessage() for record in records):
            assert time.monotonic() < deadline, "the end of the stall was never logged"
            await asyncio.sleep(0.01)
        watch.stop()
        return watch

    with caplog.at_level(logging.INFO, logger="gateway.loop"):
        watch = run(scenario())
        watch.thread.join(2)
    assert not watch.thread.is_alive(), "stop did not end the watchdog"

    assert lag.above == 1, "the stall is one observation of at least 0.3 s, not one per tick it delayed"
    ours = [record for record in records if record.thread == watch.thread.ident]
    warnings = [record for record in ours if record.levelno == logging.WARNING]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    warning = warnings[0].getMessage()
    assert warning.startswith("event loop blocked for ")
    assert re.search(rf"{re.escape(__file__)}:\d+ in block_the_loop$", warning, re.MULTILINE), warning
    assert SECRET_IN_A_LOCAL not in warning
    (ended,) = [record.getMessage() for record in ours if record.levelno == logging.INFO]
    assert int(re.search(r"after (\d+) ms blocked", ended)[1]) >= 300, ended


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
        watch.thread.join(2)
    assert lag.count >= 5
    assert lag.above == 0, "a tick ran more than half the stall threshold late"
    assert [record.getMessage() for record in caplog.records if record.thread == watch.thread.ident] == []


def test_an_interval_of_0_starts_no_tick_and_no_thread(run):
    lag = Lag(0.25)
    before = watch_threads()

    async def scenario():
        watch = loop_watch_start(interval=0, stall_after=0.2, lag=lag.histogram)
        await asyncio.sleep(0.05)
        return watch

    assert run(scenario()) is None
    assert lag.count == 0
    assert watch_threads() == before


def test_a_stall_log_of_0_keeps_the_ticks_and_starts_no_watchdog(run):
    lag = Lag(0.25)
    before = watch_threads()

    async def scenario():
        watch = loop_watch_start(interval=0.01, stall_after=0, lag=lag.histogram)
        await asyncio.sleep(0.1)
        started = watch_threads()
        watch.stop()
        return watch, started

    watch, started = run(scenario())
    assert watch.thread is None and started == before
    assert lag.count >= 2


@pytest.mark.django_db(transaction=True)
def test_a_running_gateway_reports_its_event_loop_lag_in_a_metrics_scrape(gateway_url, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = []
    watch = gateway_app().loop_watch
    assert watch is not None and watch.thread.is_alive()
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
