"""The gateway's database threads: the ORM never runs on the event loop.

`GATEWAY_DB_THREADS` threads, each with its own connection that it keeps between jobs (a
connection per request would cost more than the query). A job that fails on a broken connection
closes it, so the next job on that thread reconnects. At shutdown every thread closes its
connection, so a test database can be dropped and PostgreSQL sees clean disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import connections


class DatabaseThreads:
    def __init__(self, size: int) -> None:
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="gateway-db")
        self._lock = threading.Lock()
        self._threads: set[int] = set()

    async def run[T](self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        # The caller's context goes along, so a log line written on the thread names its request.
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, context.run, self._job, function, args, kwargs)

    def _job(self, function: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        with self._lock:
            self._threads.add(threading.get_ident())
        try:
            return function(*args, **kwargs)
        except Exception:
            for connection in connections.all(initialized_only=True):
                if connection.in_atomic_block:
                    continue
                connection.close_if_unusable_or_obsolete()
            raise

    def on_every_thread(self, function: Callable[[], Any]) -> None:
        """Run `function` once on each database thread (their connections are per thread); block
        until all have. Each job waits for the others, so no thread can take two of them."""
        barrier = threading.Barrier(self.size + 1, timeout=30)

        def job() -> None:
            try:
                function()
            finally:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait()

        for _ in range(self.size):
            self._executor.submit(job)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()

    def shutdown(self) -> None:
        """Close each thread's connection (on that thread), then stop the threads."""
        self.on_every_thread(connections.close_all)
        self._executor.shutdown(wait=True)
