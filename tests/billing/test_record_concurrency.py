"""32 threads recording usage for one key, user and account at once (real PostgreSQL).

Afterwards every counter must equal the sum of the ledger rows to the last digit, and
request ids replayed by every thread must have been recorded and billed exactly once.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db.models import Count, Sum

from accounts.models import User
from billing.cost import Usage
from billing.models import UsageLog, UsageRollup
from billing.services import BatchRecord, usage_record, usage_record_batch
from tests.concurrency import run_in_threads, run_naive_increments
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)

THREADS = 32
OWN_REQUESTS = 4  # distinct request ids per thread
SHARED_REQUESTS = 3  # request ids every thread sends: each must be billed once in all


def run_threads(key_id: int, account_id: int) -> list:
    results: list = []
    lock = threading.Lock()

    def work(index: int) -> None:
        ids = [f"t{index}-{n}" for n in range(OWN_REQUESTS)] + [f"shared-{n}" for n in range(SHARED_REQUESTS)]
        for position, request_id in enumerate(ids):
            # Odd token counts make every cost a different 8-decimal amount.
            usage = Usage(
                input_tokens=1_000 + 37 * index + position,
                output_tokens=101 + index,
                cache_creation_5m_tokens=13 * position,
                cache_read_tokens=7 * index,
            )
            result = usage_record(
                request_id=request_id,
                api_key_id=key_id,
                account_id=account_id,
                requested_model="claude-sonnet-4-5",
                usage=usage,
            )
            with lock:
                results.append(result)

    assert run_in_threads(THREADS, work) == []
    return results


def assert_ledger_matches_rollups():
    ledger = UsageLog.objects.aggregate(
        n=Count("id"), actual=Sum("actual_cost"), total=Sum("total_cost"), tokens=Sum("input_tokens")
    )
    rollups = UsageRollup.objects.aggregate(
        n=Sum("requests"), actual=Sum("actual_cost"), total=Sum("total_cost"), tokens=Sum("input_tokens")
    )
    assert ledger == rollups


@pytest.mark.django_db(transaction=True)
def test_32_threads_on_one_key_user_and_account_lose_nothing_and_bill_replays_once():
    group = GroupFactory(rate_multiplier=Decimal("1.3"))
    user = UserFactory(balance=Decimal("100"))
    key = APIKeyFactory(user=user, group=group)
    account = UpstreamAccountFactory(rate_multiplier=Decimal("0.7"))

    results = run_threads(key.pk, account.pk)

    expected_rows = THREADS * OWN_REQUESTS + SHARED_REQUESTS
    assert UsageLog.objects.count() == expected_rows
    assert sum(1 for r in results if not r.duplicate) == expected_rows
    assert sum(1 for r in results if r.duplicate) == (THREADS - 1) * SHARED_REQUESTS
    assert sum(r.charged_usd for r in results) == UsageLog.objects.aggregate(s=Sum("actual_cost"))["s"]
    for n in range(SHARED_REQUESTS):
        assert UsageLog.objects.filter(request_id=f"shared-{n}").count() == 1

    sums = UsageLog.objects.aggregate(actual=Sum("actual_cost"), account=Sum("account_cost"))
    assert sums["actual"] > 0
    user.refresh_from_db()
    key.refresh_from_db()
    account.refresh_from_db()
    assert user.balance == Decimal("100") - sums["actual"]
    assert key.quota_used_usd == sums["actual"]
    assert key.usage_5h_usd == key.usage_1d_usd == key.usage_7d_usd == sums["actual"]
    assert account.quota_used_usd == sums["account"]
    assert account.quota_daily_used_usd == account.quota_weekly_used_usd == sums["account"]
    assert_ledger_matches_rollups()


@pytest.mark.django_db(transaction=True)
def test_32_threads_on_one_subscription_lose_nothing():
    group = SubscriptionGroupFactory(rate_multiplier=Decimal("0.9"))
    user = UserFactory(balance=Decimal("3"))
    subscription = SubscriptionFactory(user=user, group=group)
    key = APIKeyFactory(user=user, group=group)
    account = UpstreamAccountFactory()

    run_threads(key.pk, account.pk)

    actual = UsageLog.objects.aggregate(s=Sum("actual_cost"))["s"]
    assert (
        UsageLog.objects.filter(subscription=subscription).count() == THREADS * OWN_REQUESTS + SHARED_REQUESTS
    )
    subscription.refresh_from_db()
    user.refresh_from_db()
    assert (
        subscription.daily_usage_usd
        == subscription.weekly_usage_usd
        == subscription.monthly_usage_usd
        == actual
    )
    assert user.balance == Decimal("3")
    assert_ledger_matches_rollups()


@pytest.mark.django_db(transaction=True)
def test_the_harness_sees_a_race_a_naive_read_modify_write_loses_charges():
    # The control: 32 threads on the harness above, taking money off one balance by reading it
    # into Python first (written here, never in the product). It must lose charges.
    user = UserFactory(balance=Decimal("100"))
    failures = run_naive_increments(THREADS, model=User, pk=user.pk, field="balance", amount=Decimal("-1"))
    assert failures == []
    user.refresh_from_db()
    assert user.balance == Decimal("99")  # 31 of the 32 charges were lost


# -- the batch path (billing.services.usage_record_batch) -----------------------------------------


def run_batch_threads(key_ids: list[int], account_id: int) -> list:
    """Each thread records its own requests and the shared ones in batches of 4 that mix the keys,
    each batch with one request twice; a thread starts on its own key, so batches lock in every
    order the callers could offer them."""
    results: list = []
    lock = threading.Lock()

    def work(index: int) -> None:
        records = []
        ids = [f"t{index}-{n}" for n in range(OWN_REQUESTS)] + [f"shared-{n}" for n in range(SHARED_REQUESTS)]
        for position, request_id in enumerate(ids):
            key_id = key_ids[(index + position) % len(key_ids)]
            if request_id.startswith("shared"):
                key_id = key_ids[0]
            usage = Usage(
                input_tokens=1_000 + 37 * index + position,
                output_tokens=101 + index,
                cache_creation_5m_tokens=13 * position,
                cache_read_tokens=7 * index,
            )
            records.append(
                BatchRecord(
                    request_id=request_id,
                    api_key_id=key_id,
                    account_id=account_id,
                    requested_model="claude-sonnet-4-5",
                    usage=usage,
                )
            )
        for start in range(0, len(records), 3):
            batch = records[start : start + 3]
            batch.append(batch[0])  # the same request twice in one batch
            answered = usage_record_batch(batch)
            with lock:
                results.extend(answered)

    assert run_in_threads(THREADS, work) == []
    return results


@pytest.mark.django_db(transaction=True)
def test_32_threads_recording_batches_on_mixed_keys_of_one_user_and_account_lose_nothing_and_bill_replays_once():
    group = GroupFactory(rate_multiplier=Decimal("1.3"))
    user = UserFactory(balance=Decimal("100"))
    keys = [APIKeyFactory(user=user, group=group) for _ in range(3)]
    account = UpstreamAccountFactory(rate_multiplier=Decimal("0.7"))

    results = run_batch_threads([key.pk for key in keys], account.pk)

    expected_rows = THREADS * OWN_REQUESTS + SHARED_REQUESTS
    assert UsageLog.objects.count() == expected_rows
    assert sum(1 for r in results if not r.duplicate) == expected_rows
    assert sum(r.charged_usd for r in results) == UsageLog.objects.aggregate(s=Sum("actual_cost"))["s"]
    for n in range(SHARED_REQUESTS):
        assert UsageLog.objects.filter(request_id=f"shared-{n}").count() == 1
    sums = UsageLog.objects.aggregate(actual=Sum("actual_cost"), account=Sum("account_cost"))
    user.refresh_from_db()
    account.refresh_from_db()
    assert user.balance == Decimal("100") - sums["actual"]
    for key in keys:
        key.refresh_from_db()
        own = UsageLog.objects.filter(api_key=key).aggregate(s=Sum("actual_cost"))["s"]
        assert own > 0
        assert key.quota_used_usd == key.usage_5h_usd == key.usage_1d_usd == key.usage_7d_usd == own
    assert (
        account.quota_used_usd
        == account.quota_daily_used_usd
        == account.quota_weekly_used_usd
        == sums["account"]
    )
    assert_ledger_matches_rollups()


@pytest.mark.django_db(transaction=True)
def test_32_threads_recording_batches_on_one_subscription_lose_nothing():
    group = SubscriptionGroupFactory(rate_multiplier=Decimal("0.9"))
    user = UserFactory(balance=Decimal("3"))
    subscription = SubscriptionFactory(user=user, group=group)
    key = APIKeyFactory(user=user, group=group)
    account = UpstreamAccountFactory()

    run_batch_threads([key.pk], account.pk)

    actual = UsageLog.objects.aggregate(s=Sum("actual_cost"))["s"]
    assert (
        UsageLog.objects.filter(subscription=subscription).count() == THREADS * OWN_REQUESTS + SHARED_REQUESTS
    )
    subscription.refresh_from_db()
    key.refresh_from_db()
    user.refresh_from_db()
    assert (
        subscription.daily_usage_usd
        == subscription.weekly_usage_usd
        == subscription.monthly_usage_usd
        == actual
    )
    assert key.quota_used_usd == actual
    assert user.balance == Decimal("3")
    assert_ledger_matches_rollups()


@pytest.mark.django_db(transaction=True)
def test_batches_and_single_recordings_of_the_same_requests_at_once_bill_each_once():
    group = GroupFactory()
    user = UserFactory(balance=Decimal("100"))
    key = APIKeyFactory(user=user, group=group)
    account = UpstreamAccountFactory()
    usage = Usage(input_tokens=1_234, output_tokens=321)

    def work(index: int) -> None:
        ids = [f"same-{n}" for n in range(12)]
        if index % 2:
            usage_record_batch(
                [
                    BatchRecord(
                        request_id=rid,
                        api_key_id=key.pk,
                        account_id=account.pk,
                        requested_model="claude-sonnet-4-5",
                        usage=usage,
                    )
                    for rid in reversed(ids)
                ]
            )
        else:
            for rid in ids:
                usage_record(
                    request_id=rid,
                    api_key_id=key.pk,
                    account_id=account.pk,
                    requested_model="claude-sonnet-4-5",
                    usage=usage,
                )

    assert run_in_threads(16, work) == []
    assert UsageLog.objects.count() == 12
    key.refresh_from_db()
    user.refresh_from_db()
    actual = UsageLog.objects.aggregate(s=Sum("actual_cost"))["s"]
    assert key.quota_used_usd == actual
    assert user.balance == Decimal("100") - actual
    assert_ledger_matches_rollups()
