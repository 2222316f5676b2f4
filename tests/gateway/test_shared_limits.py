"""Slots and RPM windows shared by every gateway process (docs/gateway.md#shared-limits).

Two real uvicorn processes share the test database and Redis (DB 2); requests are split across
them and the fake upstream's served log says how many were in flight at once. The control runs
the same burst on the per-process store and sees the limit exceeded, so the harness can see it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import openai
import pytest
import redis
from django.utils import timezone

from accounts.models import UpstreamAccount
from gateway.limits import Full, Limit, ProcessLimiter, RedisLimiter
from gateway.models import SlotLease
from gateway.services import slot_lease_release, slot_lease_take
from tests import event_loop
from tests.concurrency import run_in_threads, run_naive_increments
from tests.factories import UserFactory
from tests.gateway.conftest import ledger_rows, make_tenant, openai_sdk
from tests.gateway.processes import GatewayProcess

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = "redis://127.0.0.1:6379/2"
SLOW = "slow=300,words=6"  # six chunks, 300 ms apart: about two seconds in flight
BURST = 8


@pytest.fixture(scope="module")
def gateways(django_db_setup) -> Iterator:
    """gateways(store) → two processes sharing that store, started once per module."""
    started: dict[str, tuple[GatewayProcess, GatewayProcess]] = {}
    environments = {
        "redis": {"REDIS_URL": REDIS_URL},
        "database": {"GATEWAY_LIMITS": "database"},
        "process": {"GATEWAY_LIMITS": "process"},
    }

    def pair(store: str) -> tuple[GatewayProcess, GatewayProcess]:
        if store not in started:
            if store == "redis":
                redis.Redis.from_url(REDIS_URL).flushdb()
            both = (
                GatewayProcess(redis_url="", **environments[store]),
                GatewayProcess(redis_url="", **environments[store]),
            )
            started[store] = (both[0].wait(), both[1].wait())
        return started[store]

    yield pair
    for both in started.values():
        for process in both:
            process.stop()


def stream(url: str, secret: str) -> tuple[int, str | None, str | None]:
    """One streamed chat through the gateway with the OpenAI SDK: (status, refusal code, Retry-After)."""
    client = openai_sdk(url, secret)
    try:
        chunks = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        for _ in chunks:
            pass
        return 200, None, None
    except openai.APIStatusError as error:
        return error.status_code, error.body["code"], error.response.headers.get("retry-after")


def burst(processes, secret: str, count: int = BURST) -> list[tuple[int, str | None, str | None]]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: stream(processes[i % 2].url, secret), range(count)))


def most_in_flight(served: list[dict]) -> int:
    edges = sorted(
        [(row["started_at"], 1) for row in served] + [(row["ended_at"], -1) for row in served],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def served_by(fake_upstream, count: int) -> list[dict]:
    """What the fake upstream served, once `count` requests ended and the gateways recorded them
    (so no recording is still running when the test's rows are flushed)."""
    served = fake_upstream.wait_for(
        lambda rows: len(rows) >= count and all(row["ended_at"] for row in rows), timeout=30
    )
    assert len(ledger_rows(len(served), timeout=30)) == len(served)
    return served


def no_slot_left(prefix: str) -> bool:
    deadline = time.monotonic() + 10
    while SlotLease.objects.filter(scope__startswith=prefix).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_key_concurrency_limit_holds_across_two_gateway_processes(fake_upstream, gateways):
    tenant = make_tenant(
        fake_upstream,
        platform="openai",
        scenarios=(SLOW,),
        key_fields={"concurrency": 3},
        user_fields={"concurrency": 0},
    )
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=0)
    answers = burst(gateways("redis"), tenant.secret)
    served = served_by(fake_upstream, sum(status == 200 for status, _, _ in answers))
    assert most_in_flight(served) == 3
    refused = [answer for answer in answers if answer[0] != 200]
    assert refused and set(refused) == {(429, "API_KEY_CONCURRENCY_EXCEEDED", "1")}


def test_the_control_a_per_process_limit_lets_two_processes_exceed_it(fake_upstream, gateways):
    tenant = make_tenant(
        fake_upstream,
        platform="openai",
        scenarios=(SLOW,),
        key_fields={"concurrency": 3},
        user_fields={"concurrency": 0},
    )
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=0)
    answers = burst(gateways("process"), tenant.secret)
    served = served_by(fake_upstream, sum(status == 200 for status, _, _ in answers))
    assert most_in_flight(served) > 3  # each process let its own three through


def test_a_user_concurrency_limit_holds_across_processes_without_redis(fake_upstream, gateways):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=(SLOW,), user_fields={"concurrency": 2})
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=0)
    answers = burst(gateways("database"), tenant.secret)
    served = served_by(fake_upstream, sum(status == 200 for status, _, _ in answers))
    assert most_in_flight(served) == 2
    refused = [answer for answer in answers if answer[0] != 200]
    assert refused and set(refused) == {(429, "USER_CONCURRENCY_EXCEEDED", "1")}
    assert no_slot_left("user:")  # every slot given back


def test_a_full_account_is_skipped_and_never_exceeded_across_processes(fake_upstream, gateways):
    tenant = make_tenant(
        fake_upstream, platform="openai", scenarios=(SLOW, "slow=301,words=6"), user_fields={"concurrency": 0}
    )
    UpstreamAccount.objects.filter(pk__in=[account.pk for account in tenant.accounts]).update(concurrency=2)
    answers = burst(gateways("redis"), tenant.secret)
    served = served_by(fake_upstream, sum(status == 200 for status, _, _ in answers))
    first = [row for row in served if row["scenario"] == SLOW]
    second = [row for row in served if row["scenario"] != SLOW]
    # The preferred account full, the next one takes the requests; neither above its 2.
    assert most_in_flight(first) == 2 and most_in_flight(second) == 2
    refused = {answer[:2] for answer in answers if answer[0] != 200}
    assert refused == {(503, "NO_ACCOUNT_AVAILABLE")}


def test_rpm_is_counted_once_across_processes(fake_upstream, gateways):
    tenant = make_tenant(
        fake_upstream,
        platform="openai",
        user_fields={"concurrency": 0, "rpm_limit": 3},
        scenarios=("words=2",),
    )
    processes = gateways("redis")
    answers = [stream(processes[index % 2].url, tenant.secret) for index in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429, 429]
    assert {code for _, code, _ in answers[3:]} == {"USER_RPM_EXCEEDED"}
    assert all(55 <= int(retry) <= 60 for _, _, retry in answers[3:])
    served_by(fake_upstream, 3)


def test_a_killed_process_frees_its_slot_when_the_lease_ends(fake_upstream, gateways):
    tenant = make_tenant(
        fake_upstream,
        platform="openai",
        scenarios=("slow=500,words=12",),
        key_fields={"concurrency": 1},
        user_fields={"concurrency": 0},
    )
    survivor = gateways("redis")[0]
    doomed = GatewayProcess(redis_url=REDIS_URL, GATEWAY_SLOT_LEASE_SECONDS="4").wait()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(stream, doomed.url, tenant.secret)
        fake_upstream.wait_for(lambda rows: len(rows) == 1, timeout=20)
        taken = time.monotonic()
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(timeout=10)
    assert stream(survivor.url, tenant.secret)[:2] == (429, "API_KEY_CONCURRENCY_EXCEEDED")
    while time.monotonic() < taken + 3:
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while (answer := stream(survivor.url, tenant.secret))[0] != 200:
        assert answer[1] == "API_KEY_CONCURRENCY_EXCEEDED" and time.monotonic() < deadline
        time.sleep(0.5)
    assert time.monotonic() >= taken + 3  # not before the lease (4 s) could have ended
    assert len(ledger_rows(1, timeout=30)) == 1  # the survivor's (the killed request: issue 13's recovery)


# --- The stores on their own ----------------------------------------------------------------------


def limit(scope: str, count: int, lease: float = 60.0, minute: bool = False) -> Limit:
    return Limit(scope, count, lease, minute)


@pytest.mark.parametrize("store", ["process", "redis"])
def test_a_refused_limit_leaves_nothing_taken_in_memory_and_in_redis(store):
    async def scenario() -> None:
        if store == "redis":
            redis.Redis.from_url(REDIS_URL).flushdb()
        limiter = ProcessLimiter() if store == "process" else RedisLimiter(REDIS_URL)
        both = [limit("user:1", 2), limit("key:1", 1)]
        assert await limiter.take("a", both) is None
        refused = await limiter.take("b", both)
        assert refused is not None and refused.index == 1
        assert await limiter.take("c", [limit("user:1", 2)]) is None  # "b" took nothing
        assert await limiter.take("d", [limit("user:1", 2)]) is not None
        await limiter.release("a", ["user:1", "key:1"])
        assert await limiter.take("b", both) is None
        for token in "xyz":
            await limiter.take(token, [limit("rpm:user:1", 3, 60, minute=True)])
        full = await limiter.take("w", [limit("rpm:user:1", 3, 60, minute=True)])
        assert full.index == 0 and 58 < full.wait <= 60
        assert await limiter.take("e", [limit("key:9", 1, lease=0.2)]) is None
        await asyncio.sleep(0.3)
        assert await limiter.take("f", [limit("key:9", 1, lease=0.2)]) is None  # "e"'s lease ended
        await limiter.close()

    event_loop.run(scenario())


def test_database_slots_are_all_or_nothing_and_expire_by_lease():
    now = timezone.now()
    both = [limit("user:1", 2), limit("key:1", 1)]
    assert slot_lease_take(token="a", limits=both, now=now) is None
    assert slot_lease_take(token="b", limits=both, now=now) == Full(1, 60.0)
    assert SlotLease.objects.filter(token="b").count() == 0
    assert slot_lease_release(token="a", scopes=["user:1", "key:1"]) == 2
    dead = [limit("key:2", 1, lease=30)]
    assert slot_lease_take(token="dead", limits=dead, now=now) is None
    assert slot_lease_take(token="next", limits=dead, now=now + timedelta(seconds=10)) is not None
    assert slot_lease_take(token="next", limits=dead, now=now + timedelta(seconds=31)) is None
    assert slot_lease_release(token="dead", scopes=["key:2"]) == 0  # taken over, not its own any more
    assert SlotLease.objects.get(scope="key:2").token == "next"


def test_database_slots_taken_by_racing_threads_never_exceed_the_limit():
    taken: list[int] = []

    def take(index: int) -> None:
        if slot_lease_take(token=f"t{index}", limits=[limit("user:5", 3)]) is None:
            taken.append(index)

    assert run_in_threads(16, take) == []
    assert len(taken) == 3
    assert SlotLease.objects.filter(scope="user:5").count() == 3


def test_the_control_a_count_read_then_written_loses_updates():
    user = UserFactory(concurrency=0)
    failures = run_naive_increments(16, model=type(user), pk=user.pk, field="concurrency", amount=1)
    assert failures == []
    user.refresh_from_db()
    assert user.concurrency < 16
