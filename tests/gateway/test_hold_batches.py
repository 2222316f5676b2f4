"""Hold batches (docs/gateway.md#hold-batches): several requests of one key held by one query
string, each all or nothing, and the gateway's queue that forms them."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import APIKey, Subscription, UpstreamAccount, User
from accounts.snapshots import AccountQuota
from billing.holds import AccountHold, HoldRequest, HoldResult, pending_hold_many, pending_release
from billing.models import PendingRequest
from gateway.db import DatabaseThreads
from gateway.holds import HoldQueue
from tests import event_loop
from tests.factories import (
    APIKeyFactory,
    SubscriptionFactory,
    UpstreamAccountFactory,
    UserFactory,
)
from tests.gateway.conftest import gateway_app
from tests.holds import held
from tests.sent import expanded

pytestmark = pytest.mark.django_db(transaction=True)

D = Decimal


def request(key, request_id: str, amount: str = "0.1", accounts=()) -> HoldRequest:
    return HoldRequest(
        request_id=request_id,
        api_key_id=key.pk,
        user_id=key.user_id,
        amount_usd=D(amount),
        now=datetime.now(UTC),
        lease_seconds=60.0,
        requested_model="gpt-4o",
        mapped_model="gpt-4o",
        protocol="openai",
        stream=False,
        estimate={"input_tokens": 10, "output_tokens": 10},
        accounts=tuple(
            AccountHold(account_id=account.pk, amount_usd=D(amount), quota=AccountQuota.of(account))
            for account in accounts
        ),
    )


def test_a_batch_holds_every_request_in_one_query_string_that_commits(key):
    account = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    with CaptureQueriesContext(connection) as queries:
        results = pending_hold_many([request(key, f"r{n}", "0.1", [account]) for n in range(5)])
    assert results == [HoldResult(account_id=account.pk)] * 5
    assert held(APIKey, key.pk) == D("0.5")
    assert held(User, key.user_id, "balance_held") == D("0.5")
    assert held(UpstreamAccount, account.pk, "quota_held_usd") == D("0.5")
    assert PendingRequest.objects.count() == 5
    strings = [query["sql"] for query in queries.captured_queries if "billing_pendingrequest" in query["sql"]]
    assert len(strings) == 1  # one round trip for the five holds
    assert expanded(strings[0]).count("INSERT INTO") == 5 and strings[0].rstrip().endswith("COMMIT")


def test_each_request_of_a_batch_fits_on_what_the_ones_before_it_left(key):
    APIKey.objects.filter(pk=key.pk).update(quota_used_usd=D("0.7"))
    with CaptureQueriesContext(connection) as queries:
        results = pending_hold_many([request(key, name, "0.1") for name in ("a", "b", "c", "d")])
    assert [result.refused for result in results] == ["", "", "", "key_quota"]
    batched = [
        query["sql"] for query in queries.captured_queries if expanded(query["sql"]).count("INSERT INTO") == 4
    ]
    assert len(batched) == 1  # a, b and c were held by the batch's string; d fitted in none of it
    assert held(APIKey, key.pk) == D("0.3")
    assert sorted(PendingRequest.objects.values_list("request_id", flat=True)) == ["a", "b", "c"]


def test_a_request_that_fails_alone_does_not_cost_the_others_their_holds(key):
    assert pending_hold_many([request(key, "taken")])[0].held
    results = pending_hold_many([request(key, "first"), request(key, "taken"), request(key, "last")])
    # The string stopped on the repeated request id and rolled back whole; each then went alone.
    assert results[0].held and results[2].held
    assert isinstance(results[1], Exception)
    assert held(APIKey, key.pk) == D("0.3")
    assert PendingRequest.objects.count() == 3


def test_a_batch_locks_accounts_in_ascending_id_order_and_answers_each_request_in_its_place(key):
    low = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    high = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    UpstreamAccount.objects.filter(pk=low.pk).update(quota_used_usd=D("5"))  # no room left
    requests = [
        request(key, "on-high", accounts=[high]),
        request(key, "none"),
        request(key, "on-low", accounts=[low]),
    ]
    with CaptureQueriesContext(connection) as queries:
        results = pending_hold_many(requests)
    assert (results[0].account_id, results[1].account_id) == (high.pk, None)
    assert results[2].refused == "account_quota"  # in its own place, though its statement ran second
    sql = next(
        expanded(query["sql"])
        for query in queries.captured_queries
        if expanded(query["sql"]).count("INSERT INTO") == 3
    )
    assert sql.index("'none'") < sql.index("'on-low'") < sql.index("'on-high'")
    assert sorted(PendingRequest.objects.values_list("request_id", flat=True)) == ["none", "on-high"]


def test_a_batch_holds_against_a_subscription_limit_in_cents_exactly(key):
    # 2.35 of 2.50 used: 0.05 fits three times, not four. The batch's prepared statement declares
    # the limit numeric; read as an integer it would be 3 and let the fourth through.
    subscription = SubscriptionFactory(
        user=key.user, daily_usage_usd=D("2.35"), daily_window_start=datetime.now(UTC)
    )
    on_subscription = {
        "subscription_id": subscription.pk,
        "subscription_limits": {"daily": D("2.50")},
        "subscription_starts_at": subscription.starts_at,
        "subscription_timezone": "UTC",
    }
    with CaptureQueriesContext(connection) as queries:
        results = pending_hold_many(
            [replace(request(key, f"s{n}", "0.05"), **on_subscription) for n in range(4)]
        )
    assert [result.refused for result in results] == ["", "", "", "subscription_daily"]
    assert held(Subscription, subscription.pk) == D("0.15")
    assert [query for query in queries.captured_queries if expanded(query["sql"]).count("INSERT INTO") == 4]


def test_requests_of_one_key_with_different_money_rows_are_held_one_by_one(key):
    subscription = SubscriptionFactory(user=key.user)
    on_subscription = replace(request(key, "sub"), subscription_id=subscription.pk, subscription_limits={})
    with CaptureQueriesContext(connection) as queries:
        results = pending_hold_many([request(key, "balance"), on_subscription])
    assert all(result.held for result in results)
    assert not [
        query for query in queries.captured_queries if expanded(query["sql"]).count("INSERT INTO") == 2
    ]
    assert held(User, key.user_id, "balance_held") == D("0.1")
    assert held(Subscription, subscription.pk) == D("0.1")


def test_a_request_that_cannot_be_built_is_its_own_answer_and_the_others_are_held(key):
    account = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    unpriced = AccountHold(account_id=account.pk, amount_usd=None, quota=AccountQuota.of(account))
    broken = replace(request(key, "broken"), accounts=(unpriced,))
    results = pending_hold_many([request(key, "a"), broken, request(key, "b")])
    assert results[0].held and results[2].held
    assert isinstance(results[1], TypeError)
    assert sorted(PendingRequest.objects.values_list("request_id", flat=True)) == ["a", "b"]


def test_a_batch_is_for_one_key(key):
    other = APIKeyFactory(user=key.user, group=key.group)
    with pytest.raises(ValueError, match="one key"):
        pending_hold_many([request(key, "a"), request(other, "b")])


class Gate:
    """pending_hold_many that, on its `call`-th batch, waits on the database thread until the test
    opens the gate: the test acts while that batch is surely running."""

    def __init__(self, call: int = 1) -> None:
        self.call, self.calls = call, 0
        self.entered, self.opened = threading.Event(), threading.Event()

    def hold_many(self, requests: list[HoldRequest]) -> list:
        self.calls += 1
        if self.calls == self.call:
            self.entered.set()
            self.opened.wait(10)
        return pending_hold_many(requests)


def queue_on(db: DatabaseThreads, gate: Gate | None = None, release=None) -> HoldQueue:
    def give_back(hold: HoldRequest) -> None:
        pending_release(request_id=hold.request_id, api_key_id=hold.api_key_id)

    hold_many = gate.hold_many if gate is not None else pending_hold_many
    return HoldQueue(db=db, size=64, hold_many=hold_many, release=release or give_back)


def gated_run(main, *, threads: int = 1, call: int = 1, release=None):
    """`main(queue, gate)` on a fresh event loop, against a queue on `threads` database threads
    whose `call`-th batch waits at the gate: the queue, and what `main` answered."""
    db = DatabaseThreads(threads)
    gate = Gate(call=call)
    queue = queue_on(db, gate, release=release)
    try:
        return queue, event_loop.run(main(queue, gate))
    finally:
        gate.opened.set()
        db.shutdown()


async def until(condition) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def test_the_queue_holds_a_hot_keys_waiting_requests_together_and_a_quiet_key_at_once(key):
    quiet = APIKeyFactory(user=UserFactory(balance=D("10")), group=key.group)

    async def main(queue, gate):
        first = asyncio.ensure_future(queue.reserve(key.pk, request(key, "k0")))
        await until(gate.entered.is_set)  # k0's batch is running on a database thread
        rest = [asyncio.ensure_future(queue.reserve(key.pk, request(key, f"k{n}"))) for n in range(1, 9)]
        alone = await queue.reserve(quiet.pk, request(quiet, "q0"))  # while k0's batch still runs
        gate.opened.set()
        return await first, await asyncio.gather(*rest), alone

    queue, (first, rest, alone) = gated_run(main, threads=2)
    assert first.held and alone.held and all(result.held for result in rest)
    assert queue.batches == 3  # k0 alone, q0 alone beside it, k1..k8 together after k0
    assert held(APIKey, key.pk) == D("0.9")
    assert PendingRequest.objects.count() == 10


def test_a_request_cancelled_while_its_batch_runs_has_its_hold_given_back(key):
    async def main(queue, gate):
        waiting = asyncio.ensure_future(queue.reserve(key.pk, request(key, "gone")))
        await until(gate.entered.is_set)
        waiting.cancel()
        gate.opened.set()
        await until(lambda: queue.idle)
        return waiting.cancelled()

    queue, cancelled = gated_run(main)
    assert cancelled
    assert queue.batches == 1
    assert held(APIKey, key.pk) == 0
    assert not PendingRequest.objects.exists()


def test_a_request_cancelled_before_its_batch_starts_is_left_out_of_it(key):
    async def main(queue, gate):
        first = asyncio.ensure_future(queue.reserve(key.pk, request(key, "first")))
        await until(gate.entered.is_set)
        left = asyncio.ensure_future(queue.reserve(key.pk, request(key, "left")))
        stays = asyncio.ensure_future(queue.reserve(key.pk, request(key, "stays")))
        await asyncio.sleep(0)  # both wait behind the first batch
        left.cancel()
        gate.opened.set()
        return await first, await stays

    queue, (first, stays) = gated_run(main)
    assert first.held and stays.held and queue.batches == 2
    assert sorted(PendingRequest.objects.values_list("request_id", flat=True)) == ["first", "stays"]


def test_a_give_back_that_fails_costs_the_rest_of_its_batch_nothing(key, caplog):
    failures = []

    def failing_release(hold: HoldRequest) -> None:
        failures.append(hold.request_id)
        raise RuntimeError("the database went away")

    async def main(queue, gate):
        first = asyncio.ensure_future(queue.reserve(key.pk, request(key, "first")))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(queue.reserve(key.pk, request(key, "gone")))
        after = [asyncio.ensure_future(queue.reserve(key.pk, request(key, f"after{n}"))) for n in range(3)]
        await until(gate.entered.is_set)  # gone and after0..2 are on the database thread
        gone.cancel()
        gate.opened.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *after), timeout=10)
        await until(lambda: queue.idle)
        return answers

    with caplog.at_level(logging.ERROR, logger="gateway"):
        _queue, answers = gated_run(main, call=2, release=failing_release)
    assert all(answer.held for answer in answers)
    assert failures == ["gone"]
    assert "giving back a hold whose request stopped waiting failed" in caplog.text


def test_the_gateway_lets_its_threads_take_the_gil_within_the_configured_interval(gateway_url, settings):
    assert gateway_app().started
    assert sys.getswitchinterval() == pytest.approx(settings.GATEWAY_SWITCH_INTERVAL_MS / 1000)
