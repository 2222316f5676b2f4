"""Real threads against the real database, all released at once (pretix-style concurrency tests).

`run_in_threads` is the harness every concurrency test uses. `run_naive_increments` is its
control: the same harness running the read-modify-write the product must never do, held at a
barrier between the read and the write so every thread reads the same value. It must lose
updates; a test that shows it does proves the harness can see a race, so the same harness
finding nothing lost in a real counter means something.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

from django.db import connection, models


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


def run_naive_increments(
    count: int, *, model: type[models.Model], pk: int, field: str, amount: Decimal
) -> list[BaseException]:
    """Add `amount` to one row's `field` from `count` threads the wrong way: read it into Python,
    wait until every thread has read, then write back what each read plus `amount`."""
    read_all = threading.Barrier(count)
    rows = model.objects.filter(pk=pk)

    def naive_increment(_index: int) -> None:
        value = rows.values_list(field, flat=True).get()
        read_all.wait()
        rows.update(**{field: value + amount})

    return run_in_threads(count, naive_increment)
