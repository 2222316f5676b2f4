"""Real threads against the real database, all released at once (pretix-style concurrency tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connection


def run_in_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run work(0) … work(count - 1) on `count` threads started together; return what they raised.

    Each thread has its own database connection (Django's are per thread) and closes it, so a
    transaction=True test can tear the database down afterwards.
    """
    barrier = threading.Barrier(count)
    failures: list[BaseException] = []

    def target(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as error:  # noqa: BLE001 - returned to the test, which asserts on it
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures
