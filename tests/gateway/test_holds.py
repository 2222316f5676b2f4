"""Holds and their settlement (docs/gateway.md#holds-and-settle), at the service level: the hold
transaction, its refusals, the recording that settles it, and real threads racing for room."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from accounts.models import APIKey, Subscription, UpstreamAccount, User
from accounts.snapshots import AccountQuota
from billing.cost import Usage
from billing.holds import AccountHold, pending_hold, pending_move_account, pending_release
from billing.models import PendingRequest, UsageLog
from billing.services import usage_record
from gateway.recovery import pending_recover
from tests.concurrency import run_in_threads, run_naive_increments
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)
from tests.holds import held

pytestmark = pytest.mark.django_db(transaction=True)

D = Decimal
NOW = datetime.now(UTC)  # for window starts only: an hour either way changes nothing


def hold(key, request_id="req-1", amount=D("0.1"), *, accounts=(), subscription=None, now=None, lease=60.0):
    group = key.group
    now = now or datetime.now(UTC)
    return pending_hold(
        request_id=request_id,
        api_key_id=key.pk,
        user_id=key.user_id,
        amount_usd=amount,
        now=now,
        lease_seconds=lease,
        requested_model="gpt-4o",
        mapped_model="gpt-4o",
        protocol="openai",
        stream=True,
        estimate={"input_tokens": 100, "output_tokens": 50},
        subscription_id=subscription.pk if subscription else None,
        subscription_limits=(
            {
                "daily": group.daily_limit_usd,
                "weekly": group.weekly_limit_usd,
                "monthly": group.monthly_limit_usd,
            }
            if subscription
            else None
        ),
        subscription_starts_at=subscription.starts_at if subscription else None,
        subscription_timezone=group.timezone if subscription else "",
        accounts=tuple(
            AccountHold(account_id=account.pk, amount_usd=amount, quota=AccountQuota.of(account))
            for account in accounts
        ),
    )


def test_a_hold_raises_every_counted_row_and_writes_the_pending_record(key):
    account = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    now = datetime.now(UTC)
    result = hold(key, amount=D("0.25"), accounts=[account], now=now)
    assert result.held and result.account_id == account.pk
    assert held(APIKey, key.pk) == D("0.25")
    assert held(User, key.user_id, "balance_held") == D("0.25")
    assert held(UpstreamAccount, account.pk, "quota_held_usd") == D("0.25")
    pending = PendingRequest.objects.get()
    assert (pending.request_id, pending.held_usd, pending.account_id) == ("req-1", D("0.25"), account.pk)
    assert pending.lease_expires_at == now + timedelta(seconds=60)


def test_a_hold_that_does_not_fit_leaves_nothing_held_and_names_the_limit(key):
    APIKey.objects.filter(pk=key.pk).update(quota_used_usd=D("0.8"))
    account = UpstreamAccountFactory(platform="openai")
    assert hold(key, "a", D("0.15"), accounts=[account]).held
    result = hold(key, "b", D("0.1"), accounts=[account])
    assert result.refused == "key_quota"
    assert held(APIKey, key.pk) == D("0.15")  # only the first request's
    assert held(User, key.user_id, "balance_held") == D("0.15")
    assert list(PendingRequest.objects.values_list("request_id", flat=True)) == ["a"]


def test_a_lone_request_may_spend_the_rest_of_a_limit_but_not_beside_another(key):
    APIKey.objects.filter(pk=key.pk).update(quota_used_usd=D("0.95"))
    assert hold(key, "lone", D("0.2")).held  # nothing else held: it may overshoot by its own cost
    assert hold(key, "second", D("0.01")).refused == "key_quota"


def test_each_limit_refuses_with_its_own_name():
    user = UserFactory(balance=D("0.05"))
    windowed = APIKeyFactory(
        user=UserFactory(), group=GroupFactory(platform="openai"), rate_limit_5h_usd=D("1")
    )
    APIKey.objects.filter(pk=windowed.pk).update(
        usage_5h_usd=D("0.95"), window_5h_start=NOW - timedelta(hours=1)
    )
    assert hold(windowed, "w1", D("0.04")).held
    assert hold(windowed, "w2", D("0.04")).refused == "key_5h"

    poor = APIKeyFactory(user=user, group=GroupFactory(platform="openai"))
    assert hold(poor, "b1", D("0.04")).held
    assert hold(poor, "b2", D("0.04")).refused == "balance"
    assert held(APIKey, poor.pk) == D("0.04")  # the refused hold raised nothing, the key included

    group = SubscriptionGroupFactory(daily_limit_usd=D("0.1"))
    subscription = SubscriptionFactory(group=group)
    subscribed = APIKeyFactory(user=subscription.user, group=group)
    assert hold(subscribed, "s1", D("0.06"), subscription=subscription).held
    assert hold(subscribed, "s2", D("0.06"), subscription=subscription).refused == "subscription_daily"
    assert held(Subscription, subscription.pk) == D("0.06")
    assert held(User, subscription.user_id, "balance_held") == 0  # a subscription is held, not the balance

    quota = UpstreamAccountFactory(platform="openai", quota_daily_limit_usd=D("0.1"))
    other = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("0.1"))
    rich = APIKeyFactory(user=UserFactory(), group=GroupFactory(platform="openai"))
    assert hold(rich, "a1", D("0.06"), accounts=[quota, other]).account_id == quota.pk
    second = hold(rich, "a2", D("0.06"), accounts=[quota, other])
    assert (second.account_id, second.skipped_account_ids) == (other.pk, (quota.pk,))
    third = hold(rich, "a3", D("0.06"), accounts=[quota, other])
    assert third.refused == "account_quota"
    assert held(APIKey, rich.pk) == D("0.12")  # nothing of the third stays held, its key hold neither


def test_failover_moves_the_account_hold_or_refuses_an_account_without_room(key):
    first = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    roomy = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    full = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"), quota_used_usd=D("5"))
    unlimited = UpstreamAccountFactory(platform="openai")
    hold(key, "r", D("0.5"), accounts=[first])

    def to(account):
        return AccountHold(account_id=account.pk, amount_usd=D("0.5"), quota=AccountQuota.of(account))

    def state():
        pending = PendingRequest.objects.get()
        accounts = [held(UpstreamAccount, a.pk, "quota_held_usd") for a in (first, roomy, full)]
        return pending.account_id, pending.account_held_usd, accounts

    now = datetime.now(UTC)
    assert pending_move_account(request_id="r", api_key_id=key.pk, to=to(roomy), now=now)
    assert state() == (roomy.pk, D("0.5"), [0, D("0.5"), 0])
    assert not pending_move_account(request_id="r", api_key_id=key.pk, to=to(full), now=now)
    assert state() == (roomy.pk, D("0.5"), [0, D("0.5"), 0])  # nothing changed
    assert pending_move_account(request_id="r", api_key_id=key.pk, to=to(unlimited), now=now)
    assert state() == (unlimited.pk, 0, [0, 0, 0])
    assert held(APIKey, key.pk) == D("0.5")  # the key's hold stays with the request


def test_an_ended_window_counts_as_empty(key):
    APIKey.objects.filter(pk=key.pk).update(
        rate_limit_1d_usd=D("1"), usage_1d_usd=D("5"), window_1d_start=NOW - timedelta(days=2)
    )
    assert hold(key, amount=D("0.5")).held


def prepared_holds() -> int:
    """One-statement holds prepared on this thread's connection, as PostgreSQL lists them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'WITH lk AS %%'")
        return cursor.fetchone()[0]


def test_the_hold_is_prepared_once_and_holds_after_a_reconnect_and_after_a_rollback(key):
    # Ids of every size (psycopg would send 1 as a smallint, 70000 as an integer): one statement.
    big = APIKeyFactory(
        id=70000, user=UserFactory(id=70000, balance=D("10")), group=key.group, quota_usd=D("1")
    )
    assert hold(key, "a").held and hold(big, "b").held and hold(key, "c").held
    assert prepared_holds() == 1

    connection.close()  # as Django closes an obsolete or broken connection; the next one prepares again
    assert hold(key, "d").held
    assert prepared_holds() == 1

    APIKey.objects.filter(pk=key.pk).update(quota_used_usd=D("0.6"))
    assert hold(key, "e", D("0.2")).refused == "key_quota"  # rolled back: psycopg deallocates
    assert hold(big, "f").held
    assert prepared_holds() == 1
    assert sorted(PendingRequest.objects.values_list("request_id", flat=True)) == ["a", "b", "c", "d", "f"]
    assert held(APIKey, key.pk) == D("0.3") and held(User, key.user_id, "balance_held") == D("0.3")
    assert held(APIKey, big.pk) == D("0.2") and held(User, big.user_id, "balance_held") == D("0.2")


def test_the_recording_settles_the_hold_in_its_own_transaction(key):
    account = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    hold(key, amount=D("0.5"), accounts=[account])
    result = usage_record(
        request_id="req-1",
        api_key_id=key.pk,
        account_id=account.pk,
        requested_model="gpt-4o",
        usage=Usage(input_tokens=1000, output_tokens=100),
    )
    assert not result.duplicate and result.charged_usd > 0
    assert not PendingRequest.objects.exists()
    assert held(APIKey, key.pk) == 0
    assert held(User, key.user_id, "balance_held") == 0
    assert held(UpstreamAccount, account.pk, "quota_held_usd") == 0
    assert held(APIKey, key.pk, "quota_used_usd") == result.charged_usd


def test_a_released_hold_gives_everything_back_once(key):
    hold(key, amount=D("0.5"))
    assert pending_release(request_id="req-1", api_key_id=key.pk) is True
    assert pending_release(request_id="req-1", api_key_id=key.pk) is False
    assert held(APIKey, key.pk) == 0 and held(User, key.user_id, "balance_held") == 0


def test_threads_racing_for_a_quota_hold_exactly_what_fits(key):
    # Room for ten holds of $0.1 on a $1 quota; 32 threads ask at once.
    outcomes: list[str] = []

    def work(index: int) -> None:
        outcomes.append(hold(key, f"req-{index}", D("0.1")).refused)

    assert run_in_threads(32, work) == []
    assert outcomes.count("") == 10
    assert outcomes.count("key_quota") == 22
    assert held(APIKey, key.pk) == D("1") == PendingRequest.objects.aggregate(total=Sum("held_usd"))["total"]
    assert held(User, key.user_id, "balance_held") == D("1")


def test_a_refusal_racing_a_release_still_names_the_limit_that_failed():
    # Only a 5h window is set. Holds that are refused while others release in between must name
    # key_5h (or get in), never a limit the key does not have.
    windowed = APIKeyFactory(
        user=UserFactory(balance=D("100")), group=GroupFactory(platform="openai"), rate_limit_5h_usd=D("0.25")
    )
    refusals: list[str] = []

    def work(index: int) -> None:
        for attempt in range(40):
            result = hold(windowed, f"req-{index}-{attempt}", D("0.1"))
            if result.held:
                pending_release(request_id=f"req-{index}-{attempt}", api_key_id=windowed.pk)
            else:
                refusals.append(result.refused)

    assert run_in_threads(8, work) == []
    assert refusals and set(refusals) == {"key_5h"}
    assert held(APIKey, windowed.pk) == 0


def test_the_harness_sees_a_race_on_a_held_column(key):
    # Control: the same harness, read-modify-write in Python, loses updates.
    assert run_naive_increments(16, model=APIKey, pk=key.pk, field="held_usd", amount=D("0.1")) == []
    assert held(APIKey, key.pk) < D("1.6")


def test_recovery_bills_the_estimate_of_a_dead_request_once_and_releases_its_holds(key):
    account = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    hold(key, "dead", D("0.5"), accounts=[account], now=datetime.now(UTC) - timedelta(minutes=5), lease=60)
    hold(key, "alive", D("0.1"), accounts=[account])  # lease not over: left alone
    assert pending_recover() == 1
    row = UsageLog.objects.get(request_id="dead")
    assert (row.usage_source, row.outcome) == ("estimate", "gateway_stopped")
    assert row.explain().startswith("The gateway stopped mid-request; billed at its admission estimate: ")
    assert (row.input_tokens, row.output_tokens, row.account_id) == (100, 50, account.pk)
    assert list(PendingRequest.objects.values_list("request_id", flat=True)) == ["alive"]
    assert held(APIKey, key.pk) == D("0.1")
    assert held(UpstreamAccount, account.pk, "quota_held_usd") == D("0.1")
    assert held(APIKey, key.pk, "quota_used_usd") == row.actual_cost

    # The dead process's recording arriving late, and recovery again: nothing billed twice.
    late = usage_record(
        request_id="dead",
        api_key_id=key.pk,
        account_id=account.pk,
        requested_model="gpt-4o",
        usage=Usage(input_tokens=100, output_tokens=50),
    )
    assert late.duplicate
    assert pending_recover() == 0
    assert UsageLog.objects.filter(request_id="dead").count() == 1
    assert held(APIKey, key.pk, "quota_used_usd") == row.actual_cost
