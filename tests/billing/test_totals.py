"""The usage page's totals come from the hourly rollups when the range is on the hour, and
they must equal the ledger's sums exactly, for every filter; otherwise they come from the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.cost import Usage
from billing.selectors import (
    UsageFilters,
    period_range,
    usage_totals,
    usage_totals_from_ledger,
    usage_totals_from_rollups,
)
from billing.services import usage_record
from tests.factories import APIKeyFactory, GroupFactory, UpstreamAccountFactory, UserFactory

pytestmark = pytest.mark.django_db

START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


@pytest.fixture
def ledger():
    """Forty requests over two days, across two keys, accounts, models, statuses and sources."""
    groups = [GroupFactory(rate_multiplier=Decimal("1.1")), GroupFactory(rate_multiplier=Decimal("2"))]
    users = [UserFactory(), UserFactory()]
    keys = [APIKeyFactory(user=users[i], group=groups[i]) for i in range(2)]
    accounts = [UpstreamAccountFactory(rate_multiplier=Decimal("0.9")), UpstreamAccountFactory()]
    models = ["claude-sonnet-4-5", "claude-haiku-4-5", "acme-unpriced"]
    for n in range(40):
        usage_record(
            request_id=f"r{n}",
            api_key_id=keys[n % 2].pk,
            account_id=accounts[n % 3 % 2].pk,
            requested_model=models[n % 3],
            upstream_model=f"{models[n % 3]}-up",
            usage=Usage(input_tokens=1_000 + 17 * n, output_tokens=3 * n, cache_read_tokens=100 * (n % 4)),
            status_code=429 if n % 7 == 0 else 200,
            created_at=START + timedelta(minutes=73 * n),
        )
    return {"keys": keys, "users": users, "groups": groups, "accounts": accounts}


def filter_cases(ledger) -> list[UsageFilters]:
    return [
        UsageFilters(),
        UsageFilters(start=START + timedelta(hours=5), end=START + timedelta(hours=30)),
        UsageFilters(user_id=ledger["users"][0].pk),
        UsageFilters(api_key_id=ledger["keys"][1].pk),
        UsageFilters(account_id=ledger["accounts"][0].pk),
        UsageFilters(group_id=ledger["groups"][1].pk),
        UsageFilters(model="claude-haiku-4-5"),
        UsageFilters(model="claude-sonnet-4-5-up", model_field="upstream"),
        UsageFilters(model="acme-unpriced", model_field="billing"),
        UsageFilters(pricing_source="missing"),
        UsageFilters(pricing_source="catalog", status="ok"),
        UsageFilters(status="error", start=START + timedelta(hours=10)),
    ]


def test_rollup_totals_equal_ledger_totals_for_every_filter(ledger):
    for filters in filter_cases(ledger):
        from_ledger = usage_totals_from_ledger(filters=filters)
        assert usage_totals_from_rollups(filters=filters) == from_ledger, filters
        assert from_ledger.requests > 0, filters


def test_every_preset_is_on_the_hour_in_a_whole_hour_timezone(settings):
    settings.TIME_ZONE = "America/New_York"
    timezone.activate("America/New_York")
    try:
        for period in ("today", "7d", "30d"):
            start, end = period_range(period)
            assert start.astimezone(UTC).minute == 0 and end is None
    finally:
        timezone.deactivate()


def test_a_half_hour_timezone_totals_from_the_ledger(ledger):
    # Midnight in Kolkata is 18:30 UTC: the rollups cannot split an hour, the ledger can.
    usage_record(
        request_id="after-kolkata-midnight",
        api_key_id=ledger["keys"][0].pk,
        account_id=None,
        requested_model="claude-sonnet-4-5",
        usage=Usage(input_tokens=5_000),
        created_at=datetime(2026, 11, 20, 18, 45, tzinfo=UTC),
    )
    timezone.activate("Asia/Kolkata")
    try:
        start, end = period_range("custom", date_from=START.date(), date_to=START.date())
    finally:
        timezone.deactivate()
    filters = UsageFilters(start=start, end=end)
    assert start.astimezone(UTC).minute == 30
    assert usage_totals(filters=filters) == usage_totals_from_ledger(filters=filters)
    assert usage_totals_from_rollups(filters=filters) != usage_totals_from_ledger(filters=filters)
