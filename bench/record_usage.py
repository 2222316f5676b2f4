"""Usage rows recorded per second by billing.services.usage_record and usage_record_batch, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tollgate .venv/bin/python -m bench.record_usage

Writers are separate processes, as gateway workers would be. Each holds a BillingContext loaded
once, as the gateway's auth snapshot will.

- one hot key: every writer bills the same key, user and account, so each recording waits for
  the row locks of the one before;
- many keys, one account: each writer has its own key and user, all served by one upstream
  account (the usual shape: a group's keys share a few accounts);
- many keys: each writer has its own key, user and account; nothing is shared but the tables.

Each scenario runs twice: "single", one usage_record transaction per row, and "batch", each
writer committing `--batch` rows per usage_record_batch transaction, as the gateway's recorder
thread does when requests finish faster than one transaction commits (docs/recording.md#batches).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from decimal import Decimal

if __package__ in (None, ""):  # run as a script: make `bench` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, scratch_database, setup_django

WRITERS = (1, 8, 32)


def make_keys(count: int, *, shared_account: bool = False) -> list[tuple[int, int]]:
    """`count` (key id, account id) pairs, each key with its own user; one account for all or one each."""
    from accounts.models import APIKey, Group, UpstreamAccount, User

    group = Group.objects.get_or_create(
        name="bench", defaults={"platform": "anthropic", "rate_multiplier": 1.2}
    )[0]
    pairs = []
    for index in range(count):
        user = User.objects.create_user(
            email=f"bench{time.monotonic_ns()}-{index}@example.com", balance=Decimal(10_000)
        )
        key = APIKey.objects.create(
            user=user,
            group=group,
            name=f"bench-{index}",
            key_hash=f"{time.monotonic_ns():032x}{index:032x}",
            key_prefix="sk-bench",
            key_last4=f"{index:04d}"[-4:],
        )
        if not (shared_account and pairs):
            account = UpstreamAccount.objects.create(
                name=f"bench-{index}",
                platform="anthropic",
                type=UpstreamAccount.Type.APIKEY,
                quota_limit_usd=0,
            )
        pairs.append((key.pk, account.pk))
    return pairs


def writer(args: tuple) -> int:
    scenario, index, key_id, account_id, seconds, batch = args
    from django.db import connection

    from billing.cost import Usage
    from billing.pricing import billing_context
    from billing.services import BatchRecord, usage_record, usage_record_batch

    connection.close()  # never share the parent's connection across fork
    context = billing_context(api_key_id=key_id, account_id=account_id)
    usage = Usage(
        input_tokens=12_000, output_tokens=800, cache_creation_5m_tokens=1_000, cache_read_tokens=20_000
    )
    # Every writer has its connection and context before any starts: on a busy machine, forking
    # and loading can take longer than a fixed head start.
    _ready.wait(timeout=120)
    stop_at = time.time() + seconds
    count = 0
    while time.time() < stop_at and batch > 1:
        usage_record_batch(
            [
                BatchRecord(
                    request_id=f"{scenario}-{index}-{count + n}",
                    api_key_id=key_id,
                    account_id=account_id,
                    requested_model="claude-sonnet-4-5",
                    usage=usage,
                    context=context,
                    stream=True,
                    duration_ms=2_000,
                )
                for n in range(batch)
            ]
        )
        count += batch
    while time.time() < stop_at and batch <= 1:
        usage_record(
            request_id=f"{scenario}-{index}-{count}",
            api_key_id=key_id,
            account_id=account_id,
            requested_model="claude-sonnet-4-5",
            usage=usage,
            context=context,
            stream=True,
            duration_ms=2_000,
        )
        count += 1
    connection.close()
    return count


def run(scenario: str, pairs: list[tuple[int, int]], writers: int, seconds: float, batch: int) -> float:
    from django.db import connection

    global _ready
    connection.close()
    context = multiprocessing.get_context("fork")
    _ready = context.Barrier(writers)  # inherited by the forked writers
    jobs = [(scenario, i, *pairs[i % len(pairs)], seconds, batch) for i in range(writers)]
    with context.Pool(writers) as pool:
        counts = pool.map(writer, jobs, chunksize=1)
    return sum(counts) / seconds


_ready = None


def check_ledger(pairs: list[tuple[int, int]]) -> None:
    """The figures only count if the counters still equal the ledger."""
    from django.db.models import Sum

    from accounts.models import APIKey
    from billing.models import UsageLog

    for key_id, _ in pairs:
        ledger = UsageLog.objects.filter(api_key_id=key_id).aggregate(s=Sum("actual_cost"))["s"] or 0
        assert APIKey.objects.get(pk=key_id).quota_used_usd == ledger, f"key {key_id} drifted from its ledger"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    parser.add_argument("--batch", type=int, default=16, help="rows per batch transaction (default 16)")
    parser.add_argument(
        "--writers", default=",".join(map(str, WRITERS)), help="writer counts (default 1,8,32)"
    )
    options = parser.parse_args()
    writer_counts = [int(n) for n in options.writers.split(",")]
    setup_django()
    with scratch_database() as name:
        print(f"bench/record_usage on {name}: {machine()}")
        print(f"each run {options.seconds:g} s; rows/s = usage rows recorded and billed per second")
        print(
            f"single = one usage_record transaction per row; batch = {options.batch} rows per usage_record_batch\n"
        )
        scenarios = {
            "one hot key": make_keys(1),
            "many keys, one account": make_keys(max(writer_counts), shared_account=True),
            "many keys": make_keys(max(writer_counts)),
        }
        modes = (("single", 1), ("batch", options.batch))
        print(
            f"{'writers':>8}" + "".join(f"{f'{name}, {mode}':>32}" for name in scenarios for mode, _ in modes)
        )
        for writers in writer_counts:
            rates = [
                run(f"s{n}{mode}{writers}", pairs, writers, options.seconds, size)
                for n, pairs in enumerate(scenarios.values())
                for mode, size in modes
            ]
            print(f"{writers:>8}" + "".join(f"{rate:>28,.0f} r/s" for rate in rates), flush=True)
        check_ledger([pair for pairs in scenarios.values() for pair in pairs])
        print("\ncounters equal the ledger for every key: yes")


if __name__ == "__main__":
    main()
