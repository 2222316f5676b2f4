"""The subscription window engine: daily / weekly / monthly in one atomic UPDATE
(docs/windows.md#subscription-windows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts import windows
from accounts.models import Subscription, timezone_name
from accounts.services.subscriptions import WINDOW_KINDS, _charge_orm, subscription_usage_charge
from common.money import quantize_usd
from tests.concurrency import run_in_threads, run_naive_increments
from tests.factories import SubscriptionFactory, SubscriptionGroupFactory

pytestmark = pytest.mark.django_db

STARTS = datetime(2026, 5, 18, 7, 52, 56, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def subscription(tz: str = "UTC", days: int = 30, **kwargs) -> Subscription:
    group = SubscriptionGroupFactory(timezone=tz)
    return SubscriptionFactory(group=group, starts_at=STARTS, expires_at=STARTS + days * DAY, **kwargs)


def charge(sub: Subscription, amount: str, now: datetime) -> Subscription:
    subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal(amount), now=now)
    sub.refresh_from_db()
    return sub


def test_the_windows_stay_empty_until_the_first_use_activates_them():
    sub = subscription()
    assert (sub.daily_window_start, sub.weekly_window_start, sub.monthly_window_start) == (None, None, None)
    sub = charge(sub, "1.25", STARTS + 3 * HOUR)
    assert sub.daily_window_start == utc(2026, 5, 18)  # calendar midnight
    assert sub.weekly_window_start == sub.monthly_window_start == STARTS  # term-aligned
    assert (sub.daily_usage_usd, sub.weekly_usage_usd, sub.monthly_usage_usd) == (Decimal("1.25"),) * 3


def test_the_daily_window_resets_at_midnight_in_the_group_timezone():
    sub = subscription(tz="America/New_York")
    sub = charge(sub, "1", utc(2026, 5, 19, 3, 30))  # 23:30 EDT on the 18th
    assert sub.daily_window_start == utc(2026, 5, 18, 4)
    sub = charge(sub, "2", utc(2026, 5, 19, 3, 59))
    assert sub.daily_usage_usd == Decimal("3")
    sub = charge(sub, "4", utc(2026, 5, 19, 4, 0))  # 00:00 EDT: a new day
    assert (sub.daily_usage_usd, sub.daily_window_start) == (Decimal("4"), utc(2026, 5, 19, 4))
    assert sub.weekly_usage_usd == sub.monthly_usage_usd == Decimal("7")


def test_an_empty_group_timezone_means_the_settings_one(settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    sub = subscription(tz="")
    sub = charge(sub, "1", utc(2026, 5, 18, 16))  # 01:00 on the 19th in Tokyo
    assert sub.daily_window_start == utc(2026, 5, 18, 15)


def test_weekly_and_monthly_windows_step_from_the_start_of_the_term():
    sub = subscription(days=90)
    sub = charge(sub, "1", STARTS + 2 * DAY)
    # A first use on day 9 lands in the second weekly step, not at day 9 itself.
    sub = charge(sub, "2", STARTS + 9 * DAY)
    assert (sub.weekly_usage_usd, sub.weekly_window_start) == (Decimal("2"), STARTS + 7 * DAY)
    assert (sub.monthly_usage_usd, sub.monthly_window_start) == (Decimal("3"), STARTS)
    sub = charge(sub, "4", STARTS + 30 * DAY)
    assert (sub.monthly_usage_usd, sub.monthly_window_start) == (Decimal("4"), STARTS + 30 * DAY)
    assert (sub.weekly_usage_usd, sub.weekly_window_start) == (Decimal("4"), STARTS + 28 * DAY)


def test_no_window_outlives_the_term():
    sub = subscription(days=10)
    sub = charge(sub, "1", STARTS + 8 * DAY)  # weekly step 2 would run to day 14
    assert sub.weekly_window_start == STARTS + 7 * DAY
    # The term ends on day 10, and the window with it: usage after that starts over.
    sub = charge(sub, "2", STARTS + 10 * DAY)
    assert (sub.daily_usage_usd, sub.weekly_usage_usd, sub.monthly_usage_usd) == (Decimal("2"),) * 3
    shown = [w.used_usd for w in Subscription.objects.select_related("group").get(pk=sub.pk).usage_windows]
    assert shown == [Decimal(0)] * 3  # and a page shows an ended term's windows as 0


def test_every_window_moves_in_a_single_update_statement():
    sub = subscription()
    with CaptureQueriesContext(connection) as queries:
        subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal("1"), now=STARTS)
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1 and "CASE WHEN" in updates[0]
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 1 and "usage_usd" not in selects[0]


def test_a_negative_charge_is_refused():
    sub = subscription()
    with pytest.raises(ValueError, match="negative"):
        subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal("-0.5"), now=STARTS)


# --- the SQL equals the pure window math over any sequence of charges ----------------------------


@dataclass
class ReferenceSubscription:
    starts_at: datetime
    expires_at: datetime
    tz: str
    used: dict = field(default_factory=lambda: dict.fromkeys(["daily", "weekly", "monthly"], Decimal(0)))
    start: dict = field(default_factory=lambda: dict.fromkeys(["daily", "weekly", "monthly"]))

    def charge(self, amount: Decimal, now: datetime) -> None:
        for kind in self.used:
            rule = {"expires_at": self.expires_at, "tz": self.tz}
            if windows.subscription_window_expired(kind, self.start[kind], now, **rule):
                self.used[kind] = amount
                self.start[kind] = windows.subscription_window_start(
                    kind, now, starts_at=self.starts_at, tz=self.tz
                )
            else:
                self.used[kind] += amount


@settings(max_examples=30, deadline=None)
@given(
    starts_at=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    term_days=st.integers(min_value=1, max_value=60),
    tz=st.sampled_from(["UTC", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Apia"]),
    steps=st.lists(
        st.tuples(
            st.one_of(
                st.integers(min_value=1, max_value=9 * 24 * 3600),
                st.sampled_from([3600, 24 * 3600, 7 * 24 * 3600, 30 * 24 * 3600]),
            ),
            st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(40), places=8),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_the_database_agrees_with_the_pure_window_math(starts_at, term_days, tz, steps):
    expires_at = starts_at + timedelta(days=term_days)
    group = SubscriptionGroupFactory(timezone=tz)
    sub = SubscriptionFactory(group=group, starts_at=starts_at, expires_at=expires_at)
    reference = ReferenceSubscription(starts_at=starts_at, expires_at=expires_at, tz=tz)
    now = starts_at
    for gap, amount in steps:
        now += timedelta(seconds=gap)
        subscription_usage_charge(subscription_id=sub.pk, amount_usd=amount, now=now)
        reference.charge(amount, now)
    sub.refresh_from_db()
    for kind, _label, _limit, used, start in Subscription.WINDOWS:
        assert (getattr(sub, used), getattr(sub, start)) == (reference.used[kind], reference.start[kind]), (
            kind
        )


# --- configuration passed in, and the portable statement, change nothing ------------------------


def test_a_charge_given_the_start_and_timezone_is_one_update_and_nothing_else():
    sub = subscription(tz="Asia/Tokyo")
    with CaptureQueriesContext(connection) as queries:
        subscription_usage_charge(
            subscription_id=sub.pk,
            amount_usd=Decimal("1"),
            now=STARTS,
            starts_at=STARTS,
            timezone="Asia/Tokyo",
        )
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    sub.refresh_from_db()
    assert sub.daily_usage_usd == Decimal("1")
    assert sub.daily_window_start == utc(2026, 5, 17, 15)  # Tokyo's midnight, from the zone passed in


def test_the_start_and_the_timezone_come_together_or_not_at_all():
    sub = subscription()
    with pytest.raises(ValueError, match="both"):
        subscription_usage_charge(
            subscription_id=sub.pk, amount_usd=Decimal("1"), now=STARTS, starts_at=STARTS
        )


def test_charging_an_unknown_subscription_with_its_configuration_given_still_raises():
    with pytest.raises(Subscription.DoesNotExist):
        subscription_usage_charge(
            subscription_id=987654, amount_usd=Decimal("1"), now=STARTS, starts_at=STARTS, timezone=""
        )


def window_counters(sub: Subscription) -> dict:
    columns = [name for _kind, _label, _limit, used, start in Subscription.WINDOWS for name in (used, start)]
    return Subscription.objects.values(*columns).get(pk=sub.pk)


@settings(max_examples=25, deadline=None)
@given(
    starts_at=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    term_days=st.integers(min_value=1, max_value=60),
    tz=st.sampled_from(["", "UTC", "America/New_York", "Australia/Lord_Howe", "Pacific/Apia"]),
    steps=st.lists(
        st.tuples(
            st.one_of(
                st.integers(min_value=1, max_value=9 * 24 * 3600),
                st.sampled_from([3600, 24 * 3600, 7 * 24 * 3600, 30 * 24 * 3600]),
            ),
            st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(40), places=8),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_passed_configuration_and_the_portable_orm_statement_store_what_reading_it_stores(
    starts_at, term_days, tz, steps
):
    # Three twins: configuration read by the service, passed in as billing does, and the ORM
    # statement other databases run (here compiled for PostgreSQL) instead of the precompiled SQL.
    group = SubscriptionGroupFactory(timezone=tz)
    expires_at = starts_at + timedelta(days=term_days)
    read, passed, portable = (
        SubscriptionFactory(group=group, starts_at=starts_at, expires_at=expires_at) for _ in range(3)
    )
    now = starts_at
    for gap, amount in steps:
        now += timedelta(seconds=gap)
        subscription_usage_charge(subscription_id=read.pk, amount_usd=amount, now=now)
        by_passing = subscription_usage_charge(
            subscription_id=passed.pk, amount_usd=amount, now=now, starts_at=starts_at, timezone=tz
        )
        current = {
            kind: windows.subscription_window_start(kind, now, starts_at=starts_at, tz=timezone_name(tz))
            for kind in WINDOW_KINDS
        }
        changed = _charge_orm(
            subscription_id=portable.pk, amount=quantize_usd(amount), now=now, current=current
        )
        assert dict(zip(by_passing, changed, strict=True)) == by_passing, "both forms answer the same windows"
    assert window_counters(read) == window_counters(passed) == window_counters(portable)


# --- concurrency ---------------------------------------------------------------------------------

THREADS = 20
CHARGES_PER_THREAD = 5


@pytest.mark.django_db(transaction=True)
def test_twenty_threads_charging_one_subscription_lose_nothing():
    sub = subscription(tz="Europe/Berlin")
    now = STARTS + 26 * HOUR

    def work(index: int) -> None:
        for _ in range(CHARGES_PER_THREAD):
            subscription_usage_charge(
                subscription_id=sub.pk, amount_usd=Decimal("0.00123457") * (index + 1), now=now
            )

    failures = run_in_threads(THREADS, work)
    assert failures == []
    sub.refresh_from_db()
    total = sum(Decimal("0.00123457") * (i + 1) * CHARGES_PER_THREAD for i in range(THREADS))
    assert sub.daily_usage_usd == sub.weekly_usage_usd == sub.monthly_usage_usd == total
    assert sub.daily_window_start == utc(2026, 5, 18, 22)  # midnight of the 19th in Berlin (CEST)
    assert sub.weekly_window_start == sub.monthly_window_start == STARTS


@pytest.mark.django_db(transaction=True)
def test_the_harness_sees_a_race_a_naive_read_modify_write_loses_window_charges():
    # The control: the same harness adding to a window's usage by read-modify-write.
    sub = subscription(tz="Europe/Berlin")
    amount = Decimal("0.00123457")
    failures = run_naive_increments(
        THREADS, model=Subscription, pk=sub.pk, field="daily_usage_usd", amount=amount
    )
    assert failures == []
    sub.refresh_from_db()
    assert sub.daily_usage_usd == amount < THREADS * amount
