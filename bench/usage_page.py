"""How fast the usage log answers with 1,000,000 ledger rows, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tollgate .venv/bin/python -m bench.usage_page

Generates the rows with one INSERT … SELECT generate_series (not through the service: a million
service calls would take an hour), builds the rollups from them the same way, then times the
default page and each single filter through Django's test client: the full page and the htmx
table partial that filtering actually requests. Last, streams the whole CSV export.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from datetime import timedelta

if __package__ in (None, ""):  # run as a script: make `bench` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, scratch_database, setup_django

USERS, KEYS, ACCOUNTS, GROUPS = 200, 500, 20, 5
MODELS = [
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-4-1",
    "gpt-4o",
    "gpt-4.1-mini",
    "o3",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "claude-sonnet-4",
    "gpt-4.1",
    "gemini-2.5-flash-image",
    "deepseek-chat",
]


def make_dimensions() -> dict:
    from accounts.models import APIKey, Group, UpstreamAccount, User

    groups = Group.objects.bulk_create(
        [
            Group(name=f"group-{i}", platform="anthropic", rate_multiplier=1.2, sort_order=i)
            for i in range(GROUPS)
        ]
    )
    users = User.objects.bulk_create(
        [User(email=f"user{i}@example.com", username=f"user{i}", password="!") for i in range(USERS)]
    )
    accounts = UpstreamAccount.objects.bulk_create(
        [UpstreamAccount(name=f"account-{i}", platform="anthropic", type="apikey") for i in range(ACCOUNTS)]
    )
    keys = APIKey.objects.bulk_create(
        [
            APIKey(
                user=users[i % USERS],
                group=groups[i % GROUPS],
                name=f"key-{i}",
                key_hash=f"{i:064x}",
                key_prefix="sk-bench",
                key_last4=f"{i:04d}"[-4:],
            )
            for i in range(KEYS)
        ]
    )
    staff = User.objects.create_user(email="staff@example.com", password="x", is_staff=True)
    return {"groups": groups, "users": users, "accounts": accounts, "keys": keys, "staff": staff}


def generate_rows(rows: int, dims: dict, *, period: str = "7d", breakdown: dict | None = None) -> None:
    """`rows` ledger rows spread evenly from the start of `period` to now, then their rollups.

    Each row carries a real breakdown's JSON unless `breakdown` is given (bench/dashboard.py,
    which never reads it, passes a small one to keep ten million rows quick to write).
    """
    from django.db import connection
    from django.utils import timezone

    from billing.cost import Usage, compute_cost
    from billing.selectors import period_range
    from billing.services import breakdown_extra
    from channels.pricing import catalog_price

    # A real breakdown's JSON, so the rows are as wide as real ones.
    sample = compute_cost(
        price=catalog_price("claude-sonnet-4-5"),
        usage=Usage(input_tokens=12_000, output_tokens=800, cache_read_tokens=20_000),
        pricing_source="catalog",
        billing_model="claude-sonnet-4-5",
    )
    start, _ = period_range(period)
    span = (timezone.now() - start).total_seconds() - 1
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE bench_keys (n int PRIMARY KEY, key_id bigint, user_id bigint, group_id bigint)"
        )
        cursor.executemany(
            "INSERT INTO bench_keys VALUES (%s, %s, %s, %s)",
            [(i, k.pk, k.user_id, k.group_id) for i, k in enumerate(dims["keys"])],
        )
        cursor.execute("CREATE TEMP TABLE bench_accounts (n int PRIMARY KEY, account_id bigint)")
        cursor.executemany(
            "INSERT INTO bench_accounts VALUES (%s, %s)", [(i, a.pk) for i, a in enumerate(dims["accounts"])]
        )
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.execute(
            f"""
            INSERT INTO billing_usagelog (
                request_id, user_id, api_key_id, account_id, group_id, channel_id, subscription_id,
                requested_model, upstream_model, billing_model, billing_model_source, billing_mode,
                input_tokens, output_tokens, cache_creation_5m_tokens, cache_creation_1h_tokens,
                cache_read_tokens, image_output_tokens, unit_count,
                input_cost, output_cost, image_output_cost, cache_creation_cost, cache_read_cost, unit_cost,
                total_cost, rate_multiplier, actual_cost, account_rate_multiplier, account_cost,
                pricing_source, breakdown, stream, duration_ms, first_token_ms, status_code, client_ip,
                user_agent, cache_ttl_overridden, outcome, usage_source, created_at
            )
            SELECT
                'bench-' || g, k.user_id, k.key_id, a.account_id, k.group_id, NULL, NULL,
                m.model, m.model, m.model, 'channel_mapped', 'token',
                t.input, t.output, t.cache5, 0, t.cache_read, 0, 0,
                t.input * 0.000003, t.output * 0.000015, 0, t.cache5 * 0.00000375, t.cache_read * 0.0000003, 0,
                t.total, 1.2, round(t.total * 1.2, 8), 1, t.total,
                CASE WHEN g %% 100 = 0 THEN 'missing' WHEN g %% 10 = 1 THEN 'channel' ELSE 'catalog' END,
                %s::jsonb, g %% 3 <> 0, 400 + (g * 13) %% 30000, 150 + (g * 17) %% 2000,
                CASE WHEN g %% 50 = 0 THEN 429 WHEN g %% 97 = 0 THEN 500 ELSE 200 END,
                ('198.51.100.' || (1 + g %% 250))::inet, 'claude-cli/2.0.14 (external, cli)', false,
                'completed', 'reported',
                %s::timestamptz + (g::float8 / {rows}) * %s * interval '1 second'
            FROM generate_series(1::bigint, {rows}::bigint) AS g
            JOIN bench_keys k ON k.n = g %% {KEYS}
            JOIN bench_accounts a ON a.n = g %% {ACCOUNTS}
            CROSS JOIN LATERAL (SELECT (ARRAY{MODELS!r})[1 + (g * 7) %% {len(MODELS)}] AS model) m
            CROSS JOIN LATERAL (
                SELECT 500 + (g * 7919) %% 20000 AS input, 50 + (g * 104729) %% 2000 AS output,
                       CASE WHEN g %% 3 = 0 THEN (g * 31) %% 6000 ELSE 0 END AS cache5,
                       (g * 37) %% 40000 AS cache_read
            ) t0
            CROSS JOIN LATERAL (
                SELECT t0.*, t0.input * 0.000003 + t0.output * 0.000015 + t0.cache5 * 0.00000375
                       + t0.cache_read * 0.0000003 AS total
            ) t
            """,
            [json.dumps(breakdown_extra(sample) if breakdown is None else breakdown), start, span],
        )
        cursor.execute(
            """
            INSERT INTO billing_usagerollup (
                hour, user_id, api_key_id, account_id, group_id, requested_model, upstream_model, billing_model,
                pricing_source, status_code, requests, input_tokens, output_tokens,
                cache_creation_5m_tokens, cache_creation_1h_tokens, cache_read_tokens, image_output_tokens,
                total_cost, actual_cost, account_cost
            )
            SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', user_id, api_key_id,
                   coalesce(account_id, 0), coalesce(group_id, 0), requested_model, upstream_model, billing_model,
                   pricing_source, status_code, count(*), sum(input_tokens), sum(output_tokens),
                   sum(cache_creation_5m_tokens), sum(cache_creation_1h_tokens), sum(cache_read_tokens),
                   sum(image_output_tokens), sum(total_cost), sum(actual_cost), sum(account_cost)
            FROM billing_usagelog GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
            """
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE billing_usagelog")
        cursor.execute("VACUUM ANALYZE billing_usagerollup")


def cases(dims: dict) -> list[tuple[str, dict]]:
    from django.utils import timezone

    yesterday = timezone.localdate() - timedelta(days=1)
    return [
        ("default (last 7 days)", {}),
        ("period=today", {"period": "today"}),
        ("period=30d", {"period": "30d"}),
        ("custom range (yesterday)", {"period": "custom", "date_from": yesterday, "date_to": yesterday}),
        ("user", {"user": dims["users"][7].pk}),
        ("api_key", {"api_key": dims["keys"][7].pk}),
        ("account", {"account": dims["accounts"][7].pk}),
        ("group", {"group": dims["groups"][2].pk}),
        ("model (requested)", {"model": "claude-opus-4-1"}),
        ("model (upstream)", {"model": "gpt-4o", "model_field": "upstream"}),
        ("model (billing)", {"model": "o3", "model_field": "billing"}),
        ("pricing_source=missing", {"pricing_source": "missing"}),
        ("pricing_source=catalog", {"pricing_source": "catalog"}),
        ("status=error", {"status": "error"}),
        ("status=ok", {"status": "ok"}),
        ("sort by charged (desc)", {"sort": "-actual_cost"}),
        ("page 50", {"page": 50}),
        # Midnight in a half-hour zone splits a UTC hour, so the totals come from the ledger.
        ("default, in Asia/Kolkata", {"zone": "Asia/Kolkata"}),
        ("group, in Asia/Kolkata", {"group": dims["groups"][2].pk, "zone": "Asia/Kolkata"}),
    ]


def timed(client, params: dict, *, htmx: bool, runs: int) -> tuple[float, float, int]:
    """Median wall time of the request, median time of its slowest SQL statement, rows matched."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    headers = {"HX-Request": "true"} if htmx else {}
    client.get("/usage/", params, headers=headers)  # warm the caches
    times, slowest = [], []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get("/usage/", params, headers=headers)
            times.append((time.perf_counter() - started) * 1000)
        slowest.append(max(float(query["time"]) for query in queries.captured_queries) * 1000)
        assert response.status_code == 200
    return statistics.median(times), statistics.median(slowest), response.context["table"].paginator.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case; the median is shown")
    options = parser.parse_args()
    setup_django()
    from django.test import Client
    from django.utils import timezone

    from billing.selectors import usage_csv_rows, usage_logs
    from billing.views import csv_lines

    with scratch_database() as name:
        print(f"bench/usage_page on {name}: {machine()}")
        started = time.perf_counter()
        dims = make_dimensions()
        generate_rows(options.rows, dims)
        from billing.models import UsageRollup

        rollups = UsageRollup.objects.count()
        print(
            f"generated {options.rows:,} usage rows ({rollups:,} hourly rollup rows) in {time.perf_counter() - started:.0f} s\n"
        )

        client = Client()
        client.force_login(dims["staff"])
        print(f"{'case':<28} {'rows matched':>12} {'full page':>10} {'htmx table':>11} {'slowest SQL':>12}")
        for label, params in cases(dims):
            zone = params.pop("zone", None)
            if zone:
                timezone.activate(zone)
            page_ms, _, matched = timed(client, params, htmx=False, runs=options.runs)
            table_ms, sql_ms, _ = timed(client, params, htmx=True, runs=options.runs)
            timezone.deactivate()
            flag = "" if max(page_ms, table_ms) < 1000 else "  over 1 s"
            print(
                f"{label:<28} {matched:>12,} {page_ms:>7.0f} ms {table_ms:>8.0f} ms {sql_ms:>9.0f} ms{flag}",
                flush=True,
            )

        from billing.selectors import UsageFilters

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        size = lines = 0
        for chunk in csv_lines(usage_csv_rows(usage_logs(filters=UsageFilters()))):
            size += len(chunk)
            lines += chunk.count("\n")
        seconds = time.perf_counter() - started
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(
            f"\nCSV export of all rows: {lines - 1:,} rows, {size / 1e6:,.0f} MB in {seconds:.1f} s "
            f"({(lines - 1) / seconds:,.0f} rows/s); peak memory grew by {grown:.0f} MB"
        )


if __name__ == "__main__":
    main()
