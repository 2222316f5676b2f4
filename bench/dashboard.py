"""How fast the dashboard answers with 10,000,000 ledger rows over 30 days, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tollgate .venv/bin/python -m bench.dashboard

Generates the ledger rows with one INSERT … SELECT generate_series spread evenly over the last
30 days (the same generator and dimensions as bench/usage_page.py), builds the hourly rollups from
them in SQL, then times the dashboard through Django's test client for each period (today, 7 days,
30 days): the first request after the cache is cleared ("cold": closed hours and days are summed
from the rollups and cached) and the median of `--runs` requests after it ("warm"), both for the
full page and for the HTMX swap the period switcher requests. The target is under 200 ms of server
time, warm. It works in its own scratch database and drops it afterwards (`--keep` leaves it for
the next run, which then skips the generation).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

if __package__ in (None, ""):  # run as a script: make `bench` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, setup_django

PERIODS = ("today", "7d", "30d")
# The only ledger index the dashboard reads (the unpriced-model warning); the load drops the others.
KEPT_LEDGER_INDEXES = ("usage_source_created_idx",)


def load(rows: int) -> None:
    """Generate the rows and rollups as fast as PostgreSQL allows: no foreign-key triggers and no
    secondary ledger indexes during the load (the dashboard reads none but KEPT_LEDGER_INDEXES,
    rebuilt afterwards), a small breakdown JSON, and memory enough to aggregate in one pass."""
    from django.db import connection

    from bench.usage_page import generate_rows, make_dimensions

    dims = make_dimensions()
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("SET work_mem = '256MB'")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute("SET synchronous_commit = off")
        cursor.execute(
            """
            SELECT i.relname, pg_get_indexdef(i.oid), c.conname
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
            WHERE x.indrelid = 'billing_usagelog'::regclass AND NOT x.indisprimary
            """
        )
        kept = []
        for name, definition, constraint in cursor.fetchall():
            if constraint:
                cursor.execute(f'ALTER TABLE billing_usagelog DROP CONSTRAINT "{constraint}"')
            else:
                cursor.execute(f'DROP INDEX "{name}"')
            if name in KEPT_LEDGER_INDEXES:
                kept.append(definition)
    generate_rows(rows, dims, period="30d", breakdown={"version": 1, "bench": True})
    with connection.cursor() as cursor:
        for definition in kept:
            cursor.execute(definition)
        cursor.execute("SET session_replication_role = origin")
        cursor.execute("ANALYZE billing_usagelog")


TARGET_MS = 200


@contextmanager
def bench_database(*, keep: bool) -> Iterator[bool]:
    """Switch to `<name>_bench`; yield True if a kept one with data was reused."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    name = settings.DATABASES["default"]["NAME"] + "_bench"
    original = settings.DATABASES["default"]["NAME"]
    # On the maintenance database, as Django's test-database creation does: the configured
    # database itself need not exist.
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        exists = cursor.fetchone() is not None
    if keep and exists:
        connection.close()
        settings.DATABASES["default"]["NAME"] = connection.settings_dict["NAME"] = name
        call_command("migrate", verbosity=0)
        from billing.models import UsageRollup

        if UsageRollup.objects.exists():
            yield True
            return
        connection.close()
        settings.DATABASES["default"]["NAME"] = connection.settings_dict["NAME"] = original
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = name
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield False
    finally:
        if not keep:
            connection.creation.destroy_test_db(original, verbosity=0)


def timed(client, params: dict, *, htmx: bool, runs: int) -> tuple[float, float, float, int]:
    """Cold time, median warm time, median slowest SQL statement (warm), queries per warm request."""
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    headers = {"HX-Request": "true"} if htmx else {}
    cache.clear()
    started = time.perf_counter()
    response = client.get("/", params, headers=headers)
    cold = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.status_code
    times, slowest = [], []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get("/", params, headers=headers)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
        slowest.append(max(float(query["time"]) for query in queries.captured_queries) * 1000)
    return cold, statistics.median(times), statistics.median(slowest), len(queries.captured_queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=7, help="warm runs per case; the median is shown")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch database (and reuse a kept one)"
    )
    options = parser.parse_args()
    setup_django()
    from django.db import connection
    from django.test import Client

    with bench_database(keep=options.keep) as reused:
        from accounts.models import User
        from billing.models import UsageLog, UsageRollup

        print(f"bench/dashboard on {connection.settings_dict['NAME']}: {machine()}")
        if not reused:
            started = time.perf_counter()
            load(options.rows)
            print(f"generated {options.rows:,} usage rows in {time.perf_counter() - started:.0f} s")
        staff = User.objects.get(email="staff@example.com")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [UsageLog._meta.db_table]
            )
            ledger = cursor.fetchone()[0]
        print(f"{ledger:,} ledger rows (estimate), {UsageRollup.objects.count():,} hourly rollup rows")
        with open("/proc/loadavg") as loadavg:
            print(f"load average before timing: {' '.join(loadavg.read().split()[:3])}\n")

        client = Client()
        client.force_login(staff)
        print(
            f"{'period':<8} {'request':<14} {'cold':>8} {'warm (median)':>14} {'slowest SQL':>12} {'queries':>8}"
        )
        for period in PERIODS:
            for htmx in (False, True):
                cold, warm, sql, count = timed(client, {"period": period}, htmx=htmx, runs=options.runs)
                flag = "" if warm < TARGET_MS else f"  over {TARGET_MS} ms"
                print(
                    f"{period:<8} {'htmx swap' if htmx else 'full page':<14} {cold:>5.0f} ms {warm:>11.0f} ms "
                    f"{sql:>9.1f} ms {count:>8}{flag}",
                    flush=True,
                )
        with open("/proc/loadavg") as loadavg:
            print(f"\nload average after timing: {' '.join(loadavg.read().split()[:3])}")


if __name__ == "__main__":
    main()
