"""usage_record (docs/recording.md): one transaction that writes the ledger row and moves every counter
by exactly the amounts of the breakdown, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from accounts.models import APIKey, Subscription, UpstreamAccount, User, UserGroupRate
from billing.cost import Usage
from billing.models import UsageLog, UsageRollup
from billing.selectors import unpriced_models_seen
from billing.services import usage_record
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal
NOON = datetime(2026, 11, 25, 12, 30, tzinfo=UTC)


@pytest.fixture
def setup():
    group = GroupFactory(rate_multiplier=D("1.5"))
    user = UserFactory(balance=D("10"))
    key = APIKeyFactory(user=user, group=group)
    account = UpstreamAccountFactory(rate_multiplier=D("0.5"))
    return group, user, key, account


def record(key, account, request_id="req-1", **kwargs):
    kwargs.setdefault("requested_model", "claude-sonnet-4-5")
    kwargs.setdefault("usage", Usage(input_tokens=12_000, output_tokens=1_000))
    kwargs.setdefault("created_at", NOON)
    return usage_record(
        request_id=request_id, api_key_id=key.pk, account_id=account.pk if account else None, **kwargs
    )


def test_it_charges_balance_key_and_account_by_exactly_the_breakdown(setup):
    group, user, key, account = setup
    result = record(key, account)

    # Catalog price of claude-sonnet-4-5: $3/MTok in, $15/MTok out.
    # 12,000 × 0.000003 = 0.036; 1,000 × 0.000015 = 0.015; total 0.051.
    # Charged: 0.051 × 1.5 (group) = 0.0765. Account: 0.051 × 0.5 = 0.0255.
    assert result.duplicate is False and result.charged_to == "balance"
    assert result.breakdown.total_cost == D("0.05100000")
    assert result.charged_usd == D("0.07650000")
    assert result.account_charged_usd == D("0.02550000")

    user.refresh_from_db()
    key.refresh_from_db()
    account.refresh_from_db()
    assert user.balance == D("10") - D("0.0765")
    assert key.quota_used_usd == key.usage_5h_usd == key.usage_1d_usd == key.usage_7d_usd == D("0.0765")
    assert (
        account.quota_used_usd == account.quota_daily_used_usd == account.quota_weekly_used_usd == D("0.0255")
    )

    log = UsageLog.objects.get(pk=result.usage_log_id)
    assert (log.user_id, log.api_key_id, log.account_id, log.group_id) == (
        user.pk,
        key.pk,
        account.pk,
        group.pk,
    )
    assert (log.pricing_source, log.billing_model, log.billing_mode) == (
        "catalog",
        "claude-sonnet-4-5",
        "token",
    )
    assert (log.input_cost, log.output_cost, log.total_cost) == (D("0.036"), D("0.015"), D("0.051"))
    assert (log.rate_multiplier, log.actual_cost, log.account_cost) == (D("1.5"), D("0.0765"), D("0.0255"))
    assert log.subscription_id is None and log.created_at == NOON


def test_the_stored_row_explains_itself_exactly_as_it_was_billed(setup):
    _, _, key, account = setup
    result = record(
        key,
        account,
        usage=Usage(
            input_tokens=1_234, output_tokens=567, cache_creation_5m_tokens=89, cache_read_tokens=4_321
        ),
    )
    log = UsageLog.objects.get(pk=result.usage_log_id)
    assert log.cost_breakdown() == result.breakdown
    assert log.explain() == result.breakdown.explain()
    assert "1,234 input × $3.00/MTok = $0.003702" in log.explain()


def test_a_replayed_request_is_recorded_once_and_charged_once(setup):
    _, user, key, account = setup
    first = record(key, account, request_id="same")
    again = record(key, account, request_id="same", usage=Usage(input_tokens=999_999))

    assert again.duplicate is True and again.usage_log_id == first.usage_log_id
    assert again.charged_usd == 0 and again.charged_to == ""
    assert UsageLog.objects.count() == 1
    user.refresh_from_db()
    key.refresh_from_db()
    assert user.balance == D("10") - first.charged_usd
    assert key.quota_used_usd == first.charged_usd
    assert UsageRollup.objects.get().requests == 1


def test_the_same_request_id_on_another_key_is_a_different_request(setup):
    _, user, key, account = setup
    other_key = APIKeyFactory(user=user, group=key.group)
    record(key, account, request_id="shared")
    result = record(other_key, account, request_id="shared")
    assert result.duplicate is False
    assert UsageLog.objects.filter(request_id="shared").count() == 2


def test_a_subscription_group_charges_the_subscription_windows_not_the_balance():
    group = SubscriptionGroupFactory(rate_multiplier=D("2"))
    user = UserFactory(balance=D("5"))
    subscription = SubscriptionFactory(user=user, group=group, starts_at=NOON - timedelta(days=1))
    key = APIKeyFactory(user=user, group=group)
    result = record(key, None, requested_model="gpt-4o", usage=Usage(input_tokens=10_000, output_tokens=500))

    # gpt-4o catalog: $2.50 in, $10 out. 10,000 × 0.0000025 = 0.025; 500 × 0.00001 = 0.005.
    # Total 0.03 × 2 = 0.06 charged to the subscription.
    assert result.charged_to == "subscription" and result.charged_usd == D("0.06")
    subscription.refresh_from_db()
    user.refresh_from_db()
    assert (
        subscription.daily_usage_usd
        == subscription.weekly_usage_usd
        == subscription.monthly_usage_usd
        == D("0.06")
    )
    assert user.balance == D("5")
    log = UsageLog.objects.get()
    assert log.subscription_id == subscription.pk and log.account_id is None and log.account_cost == D("0.03")


def test_a_lapsed_subscription_is_still_charged_for_the_request_it_admitted():
    group = SubscriptionGroupFactory()
    user = UserFactory(balance=D("5"))
    lapsed = SubscriptionFactory(
        user=user, group=group, starts_at=NOON - timedelta(days=40), status=Subscription.Status.EXPIRED
    )
    key = APIKeyFactory(user=user, group=group)
    result = record(key, None, requested_model="gpt-4o")
    assert result.charged_to == "subscription"
    assert UsageLog.objects.get().subscription_id == lapsed.pk
    user.refresh_from_db()
    assert user.balance == D("5")


def test_a_user_override_of_the_group_rate_wins(setup):
    group, user, key, account = setup
    UserGroupRate.objects.create(user=user, group=group, rate_multiplier=D("0.8"))
    result = record(key, account)
    # 0.051 × 0.8 = 0.0408
    assert result.charged_usd == D("0.0408")
    assert result.breakdown.rate_multiplier_source == "user"
    assert "(user override)" in UsageLog.objects.get().explain()


def test_billing_may_overdraw_the_balance(setup):
    _, user, key, account = setup
    User.objects.filter(pk=user.pk).update(balance=D("0.01"))
    record(key, account)
    user.refresh_from_db()
    assert user.balance == D("0.01") - D("0.0765")


def test_crossing_the_key_quota_exhausts_the_key_and_says_so(setup):
    _, _, key, account = setup
    APIKey.objects.filter(pk=key.pk).update(quota_usd=D("0.1"))
    first = record(key, account, request_id="a")
    second = record(key, account, request_id="b")
    assert (first.key_became_exhausted, first.key_status) == (False, "active")
    assert (second.key_became_exhausted, second.key_status) == (True, "quota_exhausted")
    key.refresh_from_db()
    assert key.status == APIKey.Status.QUOTA_EXHAUSTED and key.quota_used_usd == D("0.153")


def test_an_unpriced_model_is_recorded_at_zero_and_listed_as_unpriced(setup):
    _, user, key, account = setup
    result = record(key, account, requested_model="acme-llm-9000", request_id="u1")
    record(
        key, account, requested_model="acme-llm-9000", request_id="u2", created_at=NOON + timedelta(hours=1)
    )
    record(key, account, requested_model="claude-sonnet-4-5", request_id="priced")

    assert result.breakdown.pricing_source == "missing" and result.charged_usd == 0
    log = UsageLog.objects.get(pk=result.usage_log_id)
    assert (log.pricing_source, log.total_cost, log.input_tokens) == ("missing", 0, 12_000)
    assert "no price found" in log.explain()
    user.refresh_from_db()
    assert user.balance == D("10") - D("0.0765")  # only the priced request

    seen = unpriced_models_seen(days=7, now=NOON + timedelta(days=1))
    assert [(m.model, m.requests, m.last_seen) for m in seen] == [
        ("acme-llm-9000", 2, NOON + timedelta(hours=1))
    ]
    assert unpriced_models_seen(days=7, now=NOON + timedelta(days=9)) == []
    unpriced = UsageRollup.objects.filter(pricing_source="missing").aggregate(n=Sum("requests"))
    assert unpriced["n"] == 2


def test_the_channel_mapped_name_is_billed_when_there_is_no_channel(setup):
    _, _, key, account = setup
    result = record(
        key,
        account,
        requested_model="sonnet-latest",
        mapped_model="claude-sonnet-4-5",
        upstream_model="acme-x",
    )
    log = UsageLog.objects.get(pk=result.usage_log_id)
    assert (log.requested_model, log.billing_model, log.upstream_model) == (
        "sonnet-latest",
        "claude-sonnet-4-5",
        "acme-x",
    )
    assert (log.billing_model_source, log.pricing_source) == ("channel_mapped", "catalog")


def test_an_oauth_account_with_a_ttl_override_bills_every_cache_write_as_1h():
    group = GroupFactory()
    key = APIKeyFactory(group=group)
    account = UpstreamAccountFactory(type=UpstreamAccount.Type.OAUTH, cache_ttl_override="1h")
    result = record(key, account, usage=Usage(cache_creation_5m_tokens=1_000, cache_creation_1h_tokens=1_000))
    # 2,000 tokens × $6/MTok (1h) = 0.012, instead of 0.00375 + 0.006.
    log = UsageLog.objects.get(pk=result.usage_log_id)
    assert (log.cache_creation_5m_tokens, log.cache_creation_1h_tokens) == (0, 2_000)
    assert log.cache_creation_cost == D("0.012") and log.cache_ttl_overridden is True


def test_a_ttl_override_on_an_api_key_account_does_not_apply():
    key = APIKeyFactory(group=GroupFactory())
    account = UpstreamAccountFactory(type=UpstreamAccount.Type.APIKEY, cache_ttl_override="1h")
    result = record(key, account, usage=Usage(cache_creation_5m_tokens=1_000))
    log = UsageLog.objects.get(pk=result.usage_log_id)
    assert (log.cache_creation_5m_tokens, log.cache_ttl_overridden) == (1_000, False)


def test_requests_in_one_hour_roll_up_into_one_row_per_dimension(setup):
    group, user, key, account = setup
    record(key, account, request_id="a", created_at=NOON)
    record(key, account, request_id="b", created_at=NOON + timedelta(minutes=20))
    record(key, account, request_id="c", created_at=NOON + timedelta(minutes=29), status_code=529)
    record(key, account, request_id="d", created_at=NOON + timedelta(minutes=30))  # 13:00, next hour

    rows = list(UsageRollup.objects.order_by("hour", "status_code"))
    assert [(row.hour, row.status_code, row.requests) for row in rows] == [
        (NOON.replace(minute=0), 200, 2),
        (NOON.replace(minute=0), 529, 1),
        (NOON.replace(hour=13, minute=0), 200, 1),
    ]
    first = rows[0]
    assert (first.user_id, first.api_key_id, first.account_id, first.group_id) == (
        user.pk,
        key.pk,
        account.pk,
        group.pk,
    )
    assert (first.requested_model, first.billing_model, first.pricing_source) == (
        "claude-sonnet-4-5",
        "claude-sonnet-4-5",
        "catalog",
    )
    assert first.input_tokens == 24_000
    assert (first.total_cost, first.actual_cost, first.account_cost) == (D("0.102"), D("0.153"), D("0.051"))


def test_a_request_without_account_or_group_rolls_up_under_zero():
    key = APIKeyFactory(group=None)
    result = record(key, None)
    rollup = UsageRollup.objects.get()
    assert (rollup.account_id, rollup.group_id, rollup.requests) == (0, 0, 1)
    assert result.breakdown.rate_multiplier == 1 and result.breakdown.rate_multiplier_source == "default"


def test_a_failure_half_way_leaves_no_row_and_no_charge(setup):
    _, user, key, _ = setup
    with pytest.raises(UpstreamAccount.DoesNotExist):
        usage_record(
            request_id="doomed",
            api_key_id=key.pk,
            account_id=987654,
            requested_model="claude-sonnet-4-5",
            usage=Usage(input_tokens=1_000),
        )
    user.refresh_from_db()
    key.refresh_from_db()
    assert user.balance == D("10") and key.quota_used_usd == 0
    assert not UsageLog.objects.exists() and not UsageRollup.objects.exists()


def test_ledger_and_rollups_agree(setup):
    _, _, key, account = setup
    for index in range(5):
        record(key, account, request_id=f"r{index}", created_at=NOON + timedelta(minutes=25 * index))
    ledger = UsageLog.objects.aggregate(Sum("actual_cost"), Sum("input_tokens"))
    rollups = UsageRollup.objects.aggregate(Sum("actual_cost"), Sum("input_tokens"))
    assert list(ledger.values()) == list(rollups.values())


def test_a_context_for_another_key_is_refused(setup):
    from billing.pricing import billing_context

    _, user, key, account = setup
    other = APIKeyFactory(user=user, group=key.group)
    with pytest.raises(ValueError, match="another key or account"):
        record(other, account, context=billing_context(api_key_id=key.pk, account_id=account.pk))
    assert not UsageLog.objects.exists()


# --- what a recording costs in statements --------------------------------------------------------


def statements(queries) -> list[str]:
    """Each statement's verb and table, e.g. "UPDATE accounts_apikey"."""
    shapes = []
    for query in queries.captured_queries:
        words = query["sql"].replace('"', "").split()
        if words[0] == "WITH":  # billing.holds.pending_settle: one statement, the pending record first
            shapes.append("SETTLE " + words[words.index("DELETE") + 2])
            continue
        table = words[2] if words[0] in ("INSERT", "DELETE") else words[1] if words[0] == "UPDATE" else ""
        shapes.append(f"{words[0]} {table}".strip())
    return shapes


# Real transactions, so usage_record's atomic block is a BEGIN … COMMIT rather than a savepoint
# inside the test's transaction: any SAVEPOINT seen here would be one of its own.
@pytest.mark.django_db(transaction=True)
def test_with_a_context_a_recording_reads_nothing_and_writes_each_row_once(setup):
    from billing.pricing import billing_context

    _, user, key, account = setup
    context = billing_context(api_key_id=key.pk, account_id=account.pk)
    with CaptureQueriesContext(connection) as queries:
        result = record(key, account, context=context)
    # No configuration reads, no savepoints, no re-reads: the ledger row, then every counter in
    # lock order, one statement each.
    assert statements(queries) == [
        "BEGIN",
        "INSERT billing_usagelog",
        "SETTLE billing_pendingrequest",
        "UPDATE accounts_apikey",
        "INSERT billing_usagerollup",
        "UPDATE accounts_user",
        "UPDATE accounts_upstreamaccount",
        "COMMIT",
    ]
    assert result.charged_to == "balance" and result.key_status == "active"
    key.refresh_from_db()
    user.refresh_from_db()
    assert key.quota_used_usd == D("0.0765") and user.balance == D("10") - D("0.0765")


@pytest.mark.django_db(transaction=True)
def test_with_a_context_a_subscription_recording_reads_nothing_either():
    from billing.pricing import billing_context

    group = SubscriptionGroupFactory(timezone="Asia/Tokyo")
    user = UserFactory()
    subscription = SubscriptionFactory(user=user, group=group, starts_at=NOON - timedelta(days=1))
    key = APIKeyFactory(user=user, group=group)
    account = UpstreamAccountFactory()
    context = billing_context(api_key_id=key.pk, account_id=account.pk)
    assert (context.subscription_starts_at, context.subscription_timezone) == (
        NOON - timedelta(days=1),
        "Asia/Tokyo",
    )
    with CaptureQueriesContext(connection) as queries:
        record(key, account, requested_model="gpt-4o", context=context)
    assert statements(queries) == [
        "BEGIN",
        "INSERT billing_usagelog",
        "SETTLE billing_pendingrequest",
        "UPDATE accounts_apikey",
        "INSERT billing_usagerollup",
        "UPDATE accounts_subscription",
        "UPDATE accounts_upstreamaccount",
        "COMMIT",
    ]
    subscription.refresh_from_db()
    # The daily window starts at Tokyo's midnight of 25 Nov (15:00 UTC on the 24th).
    assert subscription.daily_window_start == datetime(2026, 11, 24, 15, tzinfo=UTC)
    assert subscription.daily_usage_usd == UsageLog.objects.get().actual_cost > 0


def test_the_context_carries_the_counter_configuration_as_stored():
    from accounts.snapshots import AccountQuota
    from billing.pricing import billing_context

    key = APIKeyFactory(group=GroupFactory(), timezone="Europe/Berlin")
    account = UpstreamAccountFactory(
        quota_daily_reset_mode="fixed",
        quota_daily_reset_hour=6,
        quota_weekly_reset_mode="fixed",
        quota_weekly_reset_hour=3,
        quota_weekly_reset_weekday=4,
        quota_timezone="America/New_York",
    )
    context = billing_context(api_key_id=key.pk, account_id=account.pk)
    assert context.key_timezone == "Europe/Berlin"
    assert context.account_quota == AccountQuota.read(account.pk)
    assert (
        context.account_quota.period("daily"),
        context.account_quota.period("weekly"),
        context.account_quota.timezone,
    ) == (("fixed", 6, 0), ("fixed", 3, 4), "America/New_York")
    assert context.subscription_starts_at is None and context.subscription_timezone is None
