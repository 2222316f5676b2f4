"""Models own their one-row rules: the database refuses a row that breaks one, whoever writes it.

Each case writes a violating value with a plain UPDATE (no form, no service, no full_clean) and
expects PostgreSQL to name the constraint; the boundary value next to it is accepted.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F

from tests.factories import (
    APIKeyFactory,
    BalanceHistoryFactory,
    GroupAccountFactory,
    GroupFactory,
    ModelPricingFactory,
    PricingIntervalFactory,
    SubscriptionFactory,
    UpstreamAccountFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal


def user_group_rate():
    user = UserFactory()
    return user.group_rates.create(group=GroupFactory(), rate_multiplier=D("1.5"))


# (make a valid row, {field: refused value}, {field: accepted boundary value}, constraint)
CASES = [
    (
        UserFactory,
        {"total_recharged": D("-0.01")},
        {"total_recharged": D(0)},
        "user_total_recharged_non_negative",
    ),
    (UserFactory, {"console_role": "owner"}, {"console_role": "operator"}, "user_console_role_known"),
    (UserFactory, {"balance_held": D("-0.01")}, {"balance_held": D(0)}, "user_balance_held_non_negative"),
    (BalanceHistoryFactory, {"amount": D("-1")}, {"amount": D(0)}, "balance_history_amount_non_negative"),
    (
        GroupFactory,
        {"rate_multiplier": D(0)},
        {"rate_multiplier": D("0.000001")},
        "group_rate_multiplier_positive",
    ),
    (
        GroupFactory,
        {"image_price_2k": D("-0.1")},
        {"image_price_2k": None},
        "group_image_prices_non_negative",
    ),
    (
        GroupFactory,
        {"image_price_4k": D("-0.1")},
        {"image_price_4k": D(0)},
        "group_image_prices_non_negative",
    ),
    (GroupFactory, {"fallback_group": F("pk")}, {"fallback_group": None}, "group_fallback_not_itself"),
    (
        GroupFactory,
        {"fallback_group_on_invalid_request": F("pk")},
        {"fallback_group_on_invalid_request": None},
        "group_fallback_not_itself",
    ),
    (user_group_rate, {"rate_multiplier": D(0)}, {"rate_multiplier": D("0.01")}, "user_group_rate_positive"),
    (
        UpstreamAccountFactory,
        {"rate_multiplier": D(0)},
        {"rate_multiplier": D("0.000001")},
        "upstream_rate_multiplier_positive",
    ),
    (
        UpstreamAccountFactory,
        {"rate_multiplier": D("-0.5")},
        {"rate_multiplier": D("1")},
        "upstream_rate_multiplier_positive",
    ),
    *(
        (UpstreamAccountFactory, {field: D("-1")}, {field: D(0)}, "upstream_quota_non_negative")
        for field in (
            "quota_limit_usd",
            "quota_used_usd",
            "quota_daily_limit_usd",
            "quota_daily_used_usd",
            "quota_weekly_limit_usd",
            "quota_weekly_used_usd",
            "quota_held_usd",
        )
    ),
    (UpstreamAccountFactory, {"priority": -1}, {"priority": 0}, "upstream_priority_in_range"),
    (UpstreamAccountFactory, {"priority": 10_001}, {"priority": 10_000}, "upstream_priority_in_range"),
    (GroupAccountFactory, {"priority": -1}, {"priority": 0}, "group_account_priority_in_range"),
    (GroupAccountFactory, {"priority": 10_001}, {"priority": 10_000}, "group_account_priority_in_range"),
    (
        UpstreamAccountFactory,
        {"quota_daily_reset_hour": 24},
        {"quota_daily_reset_hour": 23},
        "upstream_quota_reset_in_range",
    ),
    (
        UpstreamAccountFactory,
        {"quota_weekly_reset_hour": 24},
        {"quota_weekly_reset_hour": 0},
        "upstream_quota_reset_in_range",
    ),
    (
        UpstreamAccountFactory,
        {"quota_weekly_reset_weekday": 7},
        {"quota_weekly_reset_weekday": 6},
        "upstream_quota_reset_in_range",
    ),
    *(
        (APIKeyFactory, {field: D("-0.00000001")}, {field: D(0)}, "apikey_amounts_non_negative")
        for field in (
            "quota_usd",
            "quota_used_usd",
            "rate_limit_5h_usd",
            "rate_limit_1d_usd",
            "rate_limit_7d_usd",
            "usage_5h_usd",
            "usage_1d_usd",
            "usage_7d_usd",
            "held_usd",
        )
    ),
    (
        SubscriptionFactory,
        {"expires_at": F("starts_at")},
        {"expires_at": F("starts_at") + timedelta(seconds=1)},
        "subscription_ends_after_it_starts",
    ),
    *(
        (SubscriptionFactory, {field: D("-1")}, {field: D(0)}, "subscription_usage_non_negative")
        for field in ("daily_usage_usd", "weekly_usage_usd", "monthly_usage_usd", "held_usd")
    ),
    *(
        (ModelPricingFactory, {field: D("-0.000001")}, {field: None}, "pricing_card_prices_non_negative")
        for field in (
            "input_price",
            "output_price",
            "cache_write_price",
            "cache_write_1h_price",
            "cache_read_price",
            "image_output_price",
            "per_request_price",
        )
    ),
    (
        PricingIntervalFactory,
        {"min_tokens": 1000, "max_tokens": 1000},
        {"min_tokens": 1000, "max_tokens": 1001},
        "pricing_interval_max_above_min",
    ),
    (
        PricingIntervalFactory,
        {"min_tokens": 0, "max_tokens": 0},
        {"min_tokens": 5000, "max_tokens": None},
        "pricing_interval_max_above_min",
    ),
    *(
        (PricingIntervalFactory, {field: D("-1")}, {field: D(0)}, "pricing_interval_prices_non_negative")
        for field in (
            "input_price",
            "output_price",
            "cache_write_price",
            "cache_read_price",
            "per_request_price",
            "input_multiplier",
            "output_multiplier",
            "cache_write_multiplier",
            "cache_read_multiplier",
        )
    ),
]


def case_id(case) -> str:
    return f"{case[3]}:{','.join(case[1])}"


@pytest.mark.parametrize(
    ("make", "refused", "accepted", "constraint"), CASES, ids=[case_id(c) for c in CASES]
)
def test_the_database_refuses_a_row_that_breaks_a_one_row_rule(make, refused, accepted, constraint):
    row = make()
    rows = type(row).objects.filter(pk=row.pk)
    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        rows.update(**refused)
    assert rows.update(**accepted) == 1


def test_full_clean_says_which_rule_a_row_breaks_before_the_database_has_to():
    group = GroupFactory()
    group.fallback_group = group
    with pytest.raises(ValidationError, match="A group cannot fall back to itself."):
        group.full_clean()
    account = UpstreamAccountFactory.build(quota_limit_usd=D("-5"))
    with pytest.raises(ValidationError, match="Quota limits and used amounts cannot be negative."):
        account.full_clean()


# --- Migrations that add a rule to rows written before it -------------------------------------


def _migrate_with_rows(before: str, make_rows) -> None:
    """Migrate accounts back to `before`, write rows with that state's models, migrate forward
    to the latest state (where the rest of the suite expects the database to be)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", before)])
    try:
        make_rows(executor.loader.project_state([("accounts", before)]).apps)
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_priorities_out_of_range_are_brought_to_the_nearest_bound_before_the_rule_applies():
    from accounts.models import GroupAccount, UpstreamAccount

    def make_rows(apps):
        Account = apps.get_model("accounts", "UpstreamAccount")
        Group = apps.get_model("accounts", "Group")
        low = Account.objects.create(name="low", platform="anthropic", type="apikey", priority=-5)
        high = Account.objects.create(name="high", platform="anthropic", type="apikey", priority=20_000)
        Account.objects.create(name="kept", platform="anthropic", type="apikey", priority=70)
        group = Group.objects.create(name="g", platform="anthropic")
        apps.get_model("accounts", "GroupAccount").objects.create(group=group, account=low, priority=-1)
        apps.get_model("accounts", "GroupAccount").objects.create(group=group, account=high, priority=99_999)

    _migrate_with_rows("0007_upstream_rate_multiplier_positive", make_rows)
    assert dict(UpstreamAccount.objects.values_list("name", "priority")) == {
        "low": 0,
        "high": 10_000,
        "kept": 70,
    }
    assert sorted(GroupAccount.objects.values_list("priority", flat=True)) == [0, 10_000]


@pytest.mark.django_db(transaction=True)
def test_a_zero_account_multiplier_stops_the_migration_and_names_the_account():
    from accounts.models import UpstreamAccount

    def make_rows(apps):
        apps.get_model("accounts", "UpstreamAccount").objects.create(
            name="free-tier", platform="anthropic", type="apikey", rate_multiplier=D(0)
        )

    with pytest.raises(
        RuntimeError, match=r"rate multiplier of 0, which is no longer allowed: free-tier \(id \d+\)"
    ):
        _migrate_with_rows("0006_console_role", make_rows)
    # Nothing was guessed: the row is as it was, and the rule applies once it is fixed.
    UpstreamAccount.objects.filter(name="free-tier").update(rate_multiplier=D("0.5"))
    _migrate_with_rows("0006_console_role", lambda apps: None)
    assert UpstreamAccount.objects.get(name="free-tier").rate_multiplier == D("0.5")
