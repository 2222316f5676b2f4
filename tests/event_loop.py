"""Run a coroutine to completion from a test, whatever the test's thread is doing.

The browser tests' Playwright (sync API) keeps an event loop running in the main thread for the
rest of the session, and `asyncio.run` refuses to start inside a running loop; so a coroutine
gets a fresh loop on a thread of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T], *, runner: Callable[..., Any] = asyncio.run) -> T:
    """`runner` is `asyncio.run` or another loop's (`uvloop.run`)."""
    with ThreadPoolExecutor(1, thread_name_prefix="test-loop") as pool:
        return pool.submit(runner, coroutine).result()
