"""The key counter engine: quota and 5h / 1d / 7d windows in one atomic UPDATE
(docs/windows.md#key-windows, docs/windows.md#key-quota)."""

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
from accounts.models import APIKey, timezone_name
from accounts.services.keys import _key_charge_orm, api_key_usage_charge
from common.money import quantize_usd
from tests.concurrency import run_in_threads, run_naive_increments
from tests.factories import APIKeyFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 18, 15, 52, 56, tzinfo=UTC)
HOUR = timedelta(hours=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_the_first_charge_starts_every_window():
    key = APIKeyFactory(timezone="UTC")
    result = api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1.5"), now=NOW)
    key.refresh_from_db()
    assert result.status == "active" and not result.became_exhausted
    assert key.quota_used_usd == Decimal("1.5")
    assert (key.usage_5h_usd, key.usage_1d_usd, key.usage_7d_usd) == (Decimal("1.5"),) * 3
    assert key.window_5h_start == NOW
    assert key.window_1d_start == key.window_7d_start == utc(2026, 5, 18)
    assert key.last_used_at == NOW


def test_day_windows_start_at_midnight_in_the_key_timezone():
    key = APIKeyFactory(timezone="Asia/Tokyo")
    # 20:00 UTC is 05:00 the next morning in Tokyo, whose midnight is 15:00 UTC.
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1"), now=utc(2026, 5, 18, 20))
    key.refresh_from_db()
    assert key.window_1d_start == key.window_7d_start == utc(2026, 5, 18, 15)
    assert key.window_5h_start == utc(2026, 5, 18, 20)


def test_an_empty_key_timezone_means_the_settings_one(settings):
    settings.TIME_ZONE = "America/New_York"
    key = APIKeyFactory(timezone="")
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1"), now=utc(2026, 5, 18, 3))
    key.refresh_from_db()
    assert key.window_1d_start == utc(2026, 5, 17, 4)  # 00:00 EDT on the 17th


def test_charges_add_up_inside_a_window_and_an_expired_window_restarts():
    key = APIKeyFactory(timezone="UTC")
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1"), now=NOW)
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("2"), now=NOW + 4 * HOUR)
    key.refresh_from_db()
    assert key.usage_5h_usd == Decimal("3")
    # Exactly five hours after its start the 5h window has ended; the day goes on.
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("4"), now=NOW + 5 * HOUR)
    key.refresh_from_db()
    assert (key.usage_5h_usd, key.window_5h_start) == (Decimal("4"), NOW + 5 * HOUR)
    assert (key.usage_1d_usd, key.window_1d_start) == (Decimal("7"), utc(2026, 5, 18))
    # Past midnight the day window restarts at the new midnight; the 5h and 7d windows go on.
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("8"), now=utc(2026, 5, 19, 0, 30))
    key.refresh_from_db()
    assert (key.usage_5h_usd, key.window_5h_start) == (Decimal("12"), NOW + 5 * HOUR)
    assert (key.usage_1d_usd, key.window_1d_start) == (Decimal("8"), utc(2026, 5, 19))
    assert (key.usage_7d_usd, key.window_7d_start) == (Decimal("15"), utc(2026, 5, 18))
    assert key.quota_used_usd == Decimal("15")


def test_a_charge_that_reaches_the_quota_flips_the_key_once():
    key = APIKeyFactory(quota_usd=Decimal("2"))
    first = api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1.5"), now=NOW)
    assert (first.status, first.became_exhausted) == ("active", False)
    second = api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("0.5"), now=NOW)
    assert (second.status, second.became_exhausted, second.quota_used_usd) == (
        "quota_exhausted",
        True,
        Decimal("2"),
    )
    third = api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("0.1"), now=NOW)
    assert (third.status, third.became_exhausted, third.quota_used_usd) == (
        "quota_exhausted",
        False,
        Decimal("2.1"),
    )


def test_an_unlimited_key_never_exhausts():
    key = APIKeyFactory(quota_usd=Decimal("0"))
    result = api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1000"), now=NOW)
    assert result.status == "active" and not result.became_exhausted


@pytest.mark.parametrize("status", ["disabled", "expired"])
def test_a_key_that_is_not_active_keeps_its_status_when_it_crosses_the_quota(status):
    key = APIKeyFactory(quota_usd=Decimal("1"), status=status)
    result = api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("5"), now=NOW)
    assert (result.status, result.became_exhausted) == (status, False)
    key.refresh_from_db()
    assert key.quota_used_usd == Decimal("5")


def test_last_used_at_is_written_at_most_every_thirty_seconds():
    key = APIKeyFactory()
    for seconds in (0, 10, 29):
        api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("0.01"), now=NOW + timedelta(seconds=seconds))
    key.refresh_from_db()
    assert key.last_used_at == NOW
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("0.01"), now=NOW + timedelta(seconds=31))
    key.refresh_from_db()
    assert key.last_used_at == NOW + timedelta(seconds=31)


def test_the_amount_is_quantised_to_eight_places_before_it_is_applied():
    key = APIKeyFactory()
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("0.123456785"), now=NOW)
    key.refresh_from_db()
    assert key.quota_used_usd == key.usage_5h_usd == Decimal("0.12345679")


def test_a_negative_charge_is_refused():
    key = APIKeyFactory()
    with pytest.raises(ValueError, match="negative"):
        api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("-1"), now=NOW)


def test_charging_an_unknown_key_raises():
    with pytest.raises(APIKey.DoesNotExist):
        api_key_usage_charge(key_id=987654, amount_usd=Decimal("1"), now=NOW)


def test_every_counter_moves_in_a_single_update_statement():
    key = APIKeyFactory(quota_usd=Decimal("5"))
    with CaptureQueriesContext(connection) as queries:
        api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1"), now=NOW)
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1
    for column in (
        "quota_used_usd",
        "usage_5h_usd",
        "usage_1d_usd",
        "usage_7d_usd",
        "status",
        "last_used_at",
    ):
        assert f'"{column}" = ' in updates[0]
    assert "CASE WHEN" in updates[0]
    # No read of the counters before the write: the one earlier SELECT reads only the timezone.
    selects_before = []
    for q in queries.captured_queries:
        if q["sql"].startswith("UPDATE"):
            break
        if q["sql"].startswith("SELECT"):
            selects_before.append(q["sql"])
    assert len(selects_before) == 1 and '"timezone"' in selects_before[0]
    assert "quota_used_usd" not in selects_before[0]


# --- the SQL equals the pure window math over any sequence of charges ----------------------------


@dataclass
class ReferenceKey:
    """The same rules, in Python, built on accounts.windows."""

    quota_usd: Decimal
    tz: str
    quota_used_usd: Decimal = Decimal(0)
    status: str = "active"
    used: dict = field(default_factory=lambda: dict.fromkeys(windows.KEY_WINDOW_LENGTHS, Decimal(0)))
    start: dict = field(default_factory=lambda: dict.fromkeys(windows.KEY_WINDOW_LENGTHS))
    last_used_at: datetime | None = None

    def charge(self, amount: Decimal, now: datetime) -> bool:
        self.quota_used_usd += amount
        for kind in windows.KEY_WINDOW_LENGTHS:
            if windows.key_window_expired(kind, self.start[kind], now):
                self.used[kind] = amount
                self.start[kind] = windows.key_window_start_for(kind, now, self.tz)
            else:
                self.used[kind] += amount
        crossed = self.status == "active" and self.quota_usd > 0 and self.quota_used_usd >= self.quota_usd
        if crossed:
            self.status = "quota_exhausted"
        if self.last_used_at is None or self.last_used_at < now - timedelta(seconds=30):
            self.last_used_at = now
        return crossed


charges = st.lists(
    st.tuples(
        # Gaps from a second to three days, so windows both continue and expire, across DST changes;
        # whole hours and window lengths often, so charges land exactly on window ends too.
        st.one_of(
            st.integers(min_value=1, max_value=3 * 24 * 3600),
            st.sampled_from([1800, 3600, 5 * 3600, 24 * 3600, 7 * 24 * 3600]),
        ),
        st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(50), places=8),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    tz=st.sampled_from(["UTC", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe", "Europe/London"]),
    quota=st.sampled_from([Decimal(0), Decimal("25"), Decimal("80.5")]),
    steps=charges,
)
def test_the_database_agrees_with_the_pure_window_math(start, tz, quota, steps):
    key = APIKeyFactory(timezone=tz, quota_usd=quota)
    reference = ReferenceKey(quota_usd=quota, tz=tz)
    now = start
    for gap, amount in steps:
        now += timedelta(seconds=gap)
        result = api_key_usage_charge(key_id=key.pk, amount_usd=amount, now=now)
        assert result.became_exhausted == reference.charge(amount, now)
    key.refresh_from_db()
    assert key.quota_used_usd == reference.quota_used_usd
    assert key.status == reference.status
    assert key.last_used_at == reference.last_used_at
    for kind, _label, _limit, used, window_start in APIKey.WINDOWS:
        assert getattr(key, used) == reference.used[kind], kind
        assert getattr(key, window_start) == reference.start[kind], kind
        # And the page's display rule reads the same usage the reference holds for "now".
        assert windows.key_window_effective_usage(
            kind, getattr(key, used), getattr(key, window_start), now
        ) == windows.key_window_effective_usage(kind, reference.used[kind], reference.start[kind], now)


# --- configuration passed in, and the portable statement, change nothing ------------------------


def test_a_charge_given_the_timezone_is_one_update_and_nothing_else():
    key = APIKeyFactory(timezone="Asia/Tokyo", quota_usd=Decimal("5"))
    with CaptureQueriesContext(connection) as queries:
        result = api_key_usage_charge(
            key_id=key.pk, amount_usd=Decimal("1"), now=utc(2026, 5, 18, 20), timezone="Asia/Tokyo"
        )
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    assert (result.status, result.quota_used_usd) == ("active", Decimal("1"))
    key.refresh_from_db()
    assert key.window_1d_start == utc(2026, 5, 18, 15)  # Tokyo's midnight, from the zone passed in


def test_charging_an_unknown_key_with_its_timezone_given_still_raises():
    with pytest.raises(APIKey.DoesNotExist):
        api_key_usage_charge(key_id=987654, amount_usd=Decimal("1"), now=NOW, timezone="UTC")


def counters(key: APIKey) -> dict:
    columns = ["status", "quota_used_usd", "last_used_at"]
    columns += [name for _kind, _label, _limit, used, start in APIKey.WINDOWS for name in (used, start)]
    return APIKey.objects.values(*columns).get(pk=key.pk)


@settings(max_examples=25, deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    tz=st.sampled_from(["", "UTC", "America/New_York", "Australia/Lord_Howe", "Europe/London"]),
    quota=st.sampled_from([Decimal(0), Decimal("25"), Decimal("80.5")]),
    steps=charges,
)
def test_a_passed_timezone_and_the_portable_orm_statement_store_what_reading_it_stores(
    start, tz, quota, steps
):
    # Three twins: the timezone read by the service, passed in as billing does, and the ORM
    # statement other databases run (here compiled for PostgreSQL) instead of the precompiled SQL.
    read, passed, portable = (APIKeyFactory(timezone=tz, quota_usd=quota) for _ in range(3))
    now = start
    for gap, amount in steps:
        now += timedelta(seconds=gap)
        by_reading = api_key_usage_charge(key_id=read.pk, amount_usd=amount, now=now)
        assert api_key_usage_charge(key_id=passed.pk, amount_usd=amount, now=now, timezone=tz) == by_reading
        starts = {
            kind: windows.key_window_start_for(kind, now, timezone_name(tz))
            for kind in windows.KEY_WINDOW_LENGTHS
        }
        row = _key_charge_orm(key_id=portable.pk, amount=quantize_usd(amount), now=now, starts=starts)
        assert row == (by_reading.status, by_reading.quota_used_usd, quota, *by_reading.windows.values())
    assert counters(read) == counters(passed) == counters(portable)


# --- concurrency ---------------------------------------------------------------------------------

THREADS = 20
CHARGES_PER_THREAD = 5


def run_threads(work) -> list[BaseException]:
    return run_in_threads(THREADS, work)


@pytest.mark.django_db(transaction=True)
def test_twenty_threads_charging_one_key_lose_nothing():
    key = APIKeyFactory(timezone="UTC", quota_usd=Decimal("0"))

    def work(index: int) -> None:
        for n in range(CHARGES_PER_THREAD):
            # Spread over 6 hours, so the 5h window restarts while other threads are charging.
            when = NOW + timedelta(minutes=(index * CHARGES_PER_THREAD + n) * 3)
            api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("0.01234567") * (index + 1), now=when)

    assert run_threads(work) == []
    key.refresh_from_db()
    total = sum(Decimal("0.01234567") * (i + 1) * CHARGES_PER_THREAD for i in range(THREADS))
    assert key.quota_used_usd == total
    # Every charge falls on 2026-05-18, so the day and week windows hold them all.
    assert key.usage_1d_usd == key.usage_7d_usd == total


@pytest.mark.django_db(transaction=True)
def test_twenty_threads_at_the_same_instant_share_every_window_and_flip_the_key_once():
    key = APIKeyFactory(timezone="UTC", quota_usd=Decimal("1.00000000"))
    flips: list[int] = []

    def work(index: int) -> None:
        for _ in range(CHARGES_PER_THREAD):
            result = api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("0.03"), now=NOW)
            if result.became_exhausted:
                flips.append(index)

    assert run_threads(work) == []
    key.refresh_from_db()
    total = Decimal("0.03") * THREADS * CHARGES_PER_THREAD
    assert key.quota_used_usd == key.usage_5h_usd == key.usage_1d_usd == key.usage_7d_usd == total
    assert key.window_5h_start == NOW and key.window_1d_start == utc(2026, 5, 18)
    assert key.status == "quota_exhausted"
    assert len(flips) == 1  # exactly one charge crossed the quota


@pytest.mark.django_db(transaction=True)
def test_the_harness_sees_a_race_a_naive_read_modify_write_loses_key_charges():
    # The control for the two tests above: the same harness and row, charged by reading the
    # counter into Python (written here, never in the product). It must lose updates.
    key = APIKeyFactory(timezone="UTC", quota_usd=Decimal("0"))
    amount = Decimal("0.03")
    failures = run_naive_increments(THREADS, model=APIKey, pk=key.pk, field="quota_used_usd", amount=amount)
    assert failures == []
    key.refresh_from_db()
    assert key.quota_used_usd == amount < THREADS * amount
