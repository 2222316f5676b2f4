"""Property and example tests for accounts.windows: pure math, no database."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.snapshots import AccountQuota
from accounts.windows import (
    effective_used,
    is_period_expired,
    key_window_effective_usage,
    key_window_end,
    key_window_expired,
    key_window_start_for,
    next_reset,
    period_end,
    subscription_effective_usage,
    subscription_window_end,
    subscription_window_expired,
    subscription_window_start,
)

# Lord_Howe moves by 30 minutes, Kathmandu sits at +5:45, Santiago changes at midnight,
# Apia skipped 2011-12-30 entirely.
ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/Santiago",
    "Pacific/Apia",
]
MIDNIGHT_EXISTS = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata"]
HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
WEEK = timedelta(days=7)
TICK = timedelta(microseconds=1)
QUARTER = timedelta(minutes=15)

zones = st.sampled_from(ZONES)
instants = st.datetimes(
    min_value=datetime(1995, 1, 1),
    max_value=datetime(2060, 12, 31),
    timezones=st.sampled_from([ZoneInfo(name) for name in ZONES]),
    allow_imaginary=False,
)
amounts = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(10_000), places=8)
hours = st.integers(0, 23)
weekdays = st.integers(0, 6)
periods = st.sampled_from(["daily", "weekly"])


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def later(t: datetime, elapsed: timedelta) -> datetime:
    """Elapsed time, not wall time: aware + timedelta in a local zone would add wall time."""
    return t.astimezone(UTC) + elapsed


def wall(instant: datetime, tz: str) -> datetime:
    return instant.astimezone(ZoneInfo(tz)).replace(tzinfo=None)


def is_boundary(t: datetime, tz: str, hour: int, weekday: int | None = None) -> bool:
    """True when the local clock reaches `hour`:00 of some date exactly at t (the documented rule)."""
    before, after = wall(t - TICK, tz), wall(t, tz)
    for offset in range(3):  # a skipped date (Apia) jumps past a whole day
        day = before.date() + timedelta(days=offset)
        target = datetime.combine(day, time(hour))
        if before < target <= after and (weekday is None or day.weekday() == weekday):
            return True
    return False


def first_boundary_by_scan(start: datetime, tz: str, hour: int, weekday: int | None) -> datetime:
    """Oracle: walk quarter-hours (every offset and jump in ZONES is a multiple of 15 minutes)."""
    t = datetime.fromtimestamp(start.timestamp() // 900 * 900, UTC)
    while True:
        t += QUARTER
        if is_boundary(t, tz, hour, weekday):
            return t


def fixed(period: str, hour: int, weekday: int, tz: str) -> dict:
    return {"mode": "fixed", "period": period, "reset_hour": hour, "reset_weekday": weekday, "tz": tz}


def rolling(period: str) -> dict:
    return {"mode": "rolling", "period": period, "reset_hour": 0, "reset_weekday": 0, "tz": "UTC"}


# --- Upstream account quota periods ------------------------------------------------------------


@given(start=instants, period=periods)
def test_a_rolling_period_lasts_exactly_24h_or_168h(start: datetime, period: str) -> None:
    end = period_end(start, **rolling(period))
    assert end == later(start, DAY if period == "daily" else WEEK)
    assert end.tzinfo is UTC


@given(start=instants, period=periods, hour=hours, weekday=weekdays, tz=zones)
def test_a_fixed_period_ends_at_the_first_reset_boundary_after_start(
    start: datetime, period: str, hour: int, weekday: int, tz: str
) -> None:
    end = period_end(start, **fixed(period, hour, weekday, tz))
    on_weekday = weekday if period == "weekly" else None

    assert end.tzinfo is UTC
    assert start < end <= later(start, (DAY if period == "daily" else WEEK) + HOUR)
    assert is_boundary(end, tz, hour, on_weekday)
    assert end == first_boundary_by_scan(start, tz, hour, on_weekday)
    # A start exactly on a boundary runs to the next one.
    assert period_end(end, **fixed(period, hour, weekday, tz)) > end


@given(
    start=instants,
    period=periods,
    hour=hours,
    weekday=weekdays,
    tz=zones,
    mode=st.sampled_from(["fixed", "rolling"]),
)
def test_a_period_expires_exactly_at_its_end(
    start: datetime, period: str, hour: int, weekday: int, tz: str, mode: str
) -> None:
    rule = {**fixed(period, hour, weekday, tz), "mode": mode}
    end = period_end(start, **rule)
    assert not is_period_expired(start, end - TICK, **rule)
    assert is_period_expired(start, end, **rule)
    assert is_period_expired(None, start, **rule)


@given(
    start=instants,
    elapsed=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)),
    used=amounts,
    period=periods,
    hour=hours,
    weekday=weekdays,
    tz=zones,
    mode=st.sampled_from(["fixed", "rolling"]),
)
def test_the_display_rule_shows_zero_iff_the_period_expired(
    start: datetime,
    elapsed: timedelta,
    used: Decimal,
    period: str,
    hour: int,
    weekday: int,
    tz: str,
    mode: str,
) -> None:
    rule = {**fixed(period, hour, weekday, tz), "mode": mode}
    now = later(start, elapsed)
    shown = effective_used(used, start, now, **rule)
    assert (shown == 0) == is_period_expired(start, now, **rule)
    assert shown in (0, used)
    assert effective_used(used, None, now, **rule) == 0


@given(
    start=st.none() | instants,
    elapsed=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)),
    period=periods,
    hour=hours,
    weekday=weekdays,
    tz=zones,
)
def test_a_fixed_next_reset_is_always_after_now(
    start: datetime | None, elapsed: timedelta, period: str, hour: int, weekday: int, tz: str
) -> None:
    now = later(start or utc(2024, 6, 1), elapsed)
    rule = fixed(period, hour, weekday, tz)
    shown = next_reset(start, now, **rule)
    assert shown is not None
    assert now < shown <= now + (DAY if period == "daily" else WEEK) + HOUR
    assert is_boundary(shown, tz, hour, weekday if period == "weekly" else None)


@given(
    start=st.none() | instants,
    elapsed=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)),
    period=periods,
)
def test_a_rolling_next_reset_is_the_end_of_a_live_period_or_none(
    start: datetime | None, elapsed: timedelta, period: str
) -> None:
    now = later(start or utc(2024, 6, 1), elapsed)
    shown = next_reset(start, now, **rolling(period))
    if is_period_expired(start, now, **rolling(period)):
        assert shown is None
    else:
        assert shown == period_end(start, **rolling(period))
        assert shown > now


@settings(max_examples=200)
@given(
    start=instants,
    idle=st.timedeltas(min_value=timedelta(days=31), max_value=timedelta(days=3650)),
    used=amounts,
    period=periods,
    hour=hours,
    weekday=weekdays,
    tz=zones,
)
def test_an_idle_gap_of_months_expires_the_period(
    start: datetime, idle: timedelta, used: Decimal, period: str, hour: int, weekday: int, tz: str
) -> None:
    now = later(start, idle)
    for rule in (fixed(period, hour, weekday, tz), rolling(period)):
        assert is_period_expired(start, now, **rule)
        assert effective_used(used, start, now, **rule) == 0
    shown = next_reset(start, now, **fixed(period, hour, weekday, tz))
    assert now < shown <= now + WEEK + HOUR


def test_a_skipped_reset_hour_resolves_to_the_spring_forward_jump() -> None:
    # 2024-03-10 in New York: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    end = period_end(utc(2024, 3, 9, 17), **fixed("daily", 2, 0, "America/New_York"))
    assert end == utc(2024, 3, 10, 7)
    # The next day's 02:00 exists again: 02:00 EDT, 23 hours later.
    assert period_end(end, **fixed("daily", 2, 0, "America/New_York")) == utc(2024, 3, 11, 6)


def test_a_repeated_reset_hour_counts_at_its_first_occurrence() -> None:
    rule = fixed("daily", 1, 0, "America/New_York")
    # 2024-11-03: 01:00 EDT (05:00 UTC) comes first, 01:00 EST (06:00 UTC) second.
    assert period_end(utc(2024, 11, 2, 16), **rule) == utc(2024, 11, 3, 5)
    # Started between the two: the repeat is not a reset, the period runs to the next day.
    assert period_end(utc(2024, 11, 3, 5, 30), **rule) == utc(2024, 11, 4, 6)


def test_lord_howe_half_hour_jump_resets_at_0230() -> None:
    # 2024-10-06: 02:00 +10:30 jumps to 02:30 +11 (15:30 UTC the day before).
    end = period_end(utc(2024, 10, 5, 12), **fixed("daily", 2, 0, "Australia/Lord_Howe"))
    assert end == utc(2024, 10, 5, 15, 30)
    assert wall(end, "Australia/Lord_Howe") == datetime(2024, 10, 6, 2, 30)


def test_a_skipped_date_resets_at_the_jump() -> None:
    # Apia went from 2011-12-29 23:59:59 -10 straight to 2011-12-31 00:00 +14 (10:00 UTC).
    end = period_end(utc(2011, 12, 29, 23), **fixed("daily", 12, 0, "Pacific/Apia"))
    assert end == utc(2011, 12, 30, 10)


def test_a_weekly_period_runs_to_the_next_reset_weekday() -> None:
    rule = fixed("weekly", 9, 0, "Asia/Kolkata")  # Monday 09:00 IST = 03:30 UTC
    assert period_end(utc(2024, 6, 5, 12), **rule) == utc(2024, 6, 10, 3, 30)  # from a Wednesday
    assert period_end(utc(2024, 6, 10, 3, 30), **rule) == utc(2024, 6, 17, 3, 30)  # from the boundary itself
    assert period_end(utc(2024, 6, 10, 3, 29), **rule) == utc(2024, 6, 10, 3, 30)


def test_next_reset_for_a_period_that_never_started() -> None:
    now = utc(2024, 6, 5, 12)
    assert next_reset(None, now, **rolling("daily")) is None
    assert next_reset(None, now, **fixed("daily", 0, 0, "Europe/London")) == utc(2024, 6, 5, 23)
    assert next_reset(utc(2024, 6, 5, 1), now, **rolling("daily")) == utc(2024, 6, 6, 1)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        period_end(datetime(2024, 1, 1), **rolling("daily"))
    with pytest.raises(ValueError, match="empty"):
        period_end(utc(2024, 1, 1), **fixed("daily", 0, 0, ""))
    with pytest.raises(ValueError, match="out of range"):
        period_end(utc(2024, 1, 1), **fixed("daily", 24, 0, "UTC"))
    with pytest.raises(ValueError, match="mode"):
        period_end(utc(2024, 1, 1), **{**rolling("daily"), "mode": "monthly"})


# --- AccountQuota -----------------------------------------------------------------------------


def account(**overrides: object) -> SimpleNamespace:
    fields: dict[str, object] = {
        "quota_limit_usd": Decimal(0),
        "quota_used_usd": Decimal(0),
        "quota_daily_limit_usd": Decimal(0),
        "quota_daily_used_usd": Decimal(0),
        "quota_daily_start": None,
        "quota_daily_reset_mode": "rolling",
        "quota_daily_reset_hour": 0,
        "quota_weekly_limit_usd": Decimal(0),
        "quota_weekly_used_usd": Decimal(0),
        "quota_weekly_start": None,
        "quota_weekly_reset_mode": "rolling",
        "quota_weekly_reset_hour": 0,
        "quota_weekly_reset_weekday": 0,
        "quota_timezone": "UTC",
    }
    return SimpleNamespace(**(fields | overrides))


NOW = utc(2024, 6, 5, 12)


def test_quota_state_reads_the_model_attribute_names() -> None:
    state = AccountQuota.of(
        account(quota_weekly_reset_mode="fixed", quota_weekly_reset_hour=7, quota_weekly_reset_weekday=3)
    )
    assert state.rule("weekly") == fixed("weekly", 7, 3, "UTC")
    assert state.rule("daily") == rolling("daily")


def test_the_total_quota_is_exceeded_at_the_limit() -> None:
    assert AccountQuota.of(account(quota_limit_usd=Decimal(5), quota_used_usd=Decimal(5))).is_exceeded(NOW)
    assert not AccountQuota.of(
        account(quota_limit_usd=Decimal(5), quota_used_usd=Decimal("4.99999999"))
    ).is_exceeded(NOW)


def test_a_zero_limit_means_no_limit() -> None:
    obj = account(quota_used_usd=Decimal(99), quota_daily_used_usd=Decimal(99), quota_daily_start=NOW - HOUR)
    assert not AccountQuota.of(obj).is_exceeded(NOW)


def test_a_daily_quota_counts_only_while_its_period_is_live() -> None:
    live = account(
        quota_daily_limit_usd=Decimal(3), quota_daily_used_usd=Decimal(3), quota_daily_start=NOW - HOUR
    )
    assert AccountQuota.of(live).is_exceeded(NOW)
    stale = account(
        quota_daily_limit_usd=Decimal(3), quota_daily_used_usd=Decimal(3), quota_daily_start=NOW - DAY
    )
    assert not AccountQuota.of(stale).is_exceeded(NOW)
    assert AccountQuota.of(stale).used("daily", NOW) == 0


def test_a_weekly_quota_on_a_fixed_reset_counts_until_the_reset() -> None:
    obj = account(
        quota_weekly_limit_usd=Decimal(10),
        quota_weekly_used_usd=Decimal(12),
        quota_weekly_start=utc(2024, 6, 3, 8),  # Monday
        quota_weekly_reset_mode="fixed",
        quota_weekly_reset_hour=8,
        quota_weekly_reset_weekday=0,
    )
    state = AccountQuota.of(obj)
    assert state.is_exceeded(utc(2024, 6, 10, 7, 59))
    assert not state.is_exceeded(utc(2024, 6, 10, 8))
    assert state.next_reset("weekly", utc(2024, 6, 10, 7)) == utc(2024, 6, 10, 8)
    assert state.used("weekly", utc(2024, 6, 10, 8)) == 0


# --- API key windows --------------------------------------------------------------------------


@given(now=instants, tz=zones)
def test_a_5h_window_starts_at_first_use(now: datetime, tz: str) -> None:
    start = key_window_start_for("5h", now, tz)
    # Compare in UTC: PEP 495 makes a repeated-hour instant unequal to every other zone's instant.
    assert start == now.astimezone(UTC) and start.tzinfo is UTC
    assert key_window_end("5h", start) == later(now, timedelta(hours=5))


@given(now=instants, tz=zones, kind=st.sampled_from(["1d", "7d"]))
def test_1d_and_7d_windows_start_at_local_midnight_of_the_day_of_use(
    now: datetime, tz: str, kind: str
) -> None:
    start = key_window_start_for(kind, now, tz)
    length = DAY if kind == "1d" else WEEK
    assert start <= now < start + length
    assert key_window_end(kind, start) == start + length
    if is_boundary(start, tz, 0):
        assert wall(now, tz) - wall(start, tz) < DAY + HOUR  # the same local day
    else:
        # Only the last hour of a 25-hour day: the midnight window already ended.
        assert kind == "1d" and is_boundary(start - DAY, tz, 0)


@given(
    start=instants, elapsed=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)), used=amounts
)
def test_a_key_window_shows_zero_iff_expired(start: datetime, elapsed: timedelta, used: Decimal) -> None:
    now = later(start, elapsed)
    for kind, length in (("5h", timedelta(hours=5)), ("1d", DAY), ("7d", WEEK)):
        expired = key_window_expired(kind, start, now)
        assert expired == (elapsed >= length)
        assert (key_window_effective_usage(kind, used, start, now) == 0) == expired
    assert key_window_expired("1d", None, now)


def test_a_1d_key_window_in_the_last_hour_of_a_25h_day_steps_on() -> None:
    # New York, 2024-11-03 lasts 25h: midnight (04:00 UTC) + 24h is 23:00 EST.
    tz = "America/New_York"
    assert key_window_start_for("1d", utc(2024, 11, 4, 3, 59), tz) == utc(2024, 11, 3, 4)
    assert key_window_start_for("1d", utc(2024, 11, 4, 4, 30), tz) == utc(2024, 11, 4, 4)
    assert key_window_start_for("7d", utc(2024, 11, 4, 4, 30), tz) == utc(2024, 11, 3, 4)


def test_a_1d_key_window_starts_at_the_local_not_utc_midnight() -> None:
    # 01:00 UTC on June 6 is still June 5 in New York (midnight = 04:00 UTC).
    assert key_window_start_for("1d", utc(2024, 6, 6, 1), "America/New_York") == utc(2024, 6, 5, 4)
    assert key_window_start_for("1d", utc(2024, 6, 6, 1), "Asia/Kolkata") == utc(2024, 6, 5, 18, 30)


# --- Subscription windows ---------------------------------------------------------------------


@given(
    starts_at=instants,
    elapsed=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2000)),
    term=st.timedeltas(min_value=timedelta(hours=1), max_value=timedelta(days=2000)),
    kind=st.sampled_from(["weekly", "monthly"]),
    tz=zones,
)
def test_weekly_and_monthly_windows_step_from_the_start_and_stop_at_expiry(
    starts_at: datetime, elapsed: timedelta, term: timedelta, kind: str, tz: str
) -> None:
    step = WEEK if kind == "weekly" else timedelta(days=30)
    now, expires_at = later(starts_at, elapsed), later(starts_at, term)
    start = subscription_window_start(kind, now, starts_at=starts_at, tz=tz)
    assert (start - starts_at) % step == timedelta(0)
    assert starts_at <= start <= now < start + step
    end = subscription_window_end(kind, start, expires_at=expires_at, tz=tz)
    assert end == min(start + step, expires_at)
    expired = subscription_window_expired(kind, start, now, expires_at=expires_at, tz=tz)
    assert expired == (now >= expires_at)


@given(now=instants, tz=st.sampled_from(MIDNIGHT_EXISTS))
def test_a_daily_subscription_window_runs_midnight_to_midnight(now: datetime, tz: str) -> None:
    far = now + timedelta(days=400)
    start = subscription_window_start("daily", now, starts_at=now - WEEK, tz=tz)
    end = subscription_window_end("daily", start, expires_at=far, tz=tz)
    assert start <= now < end
    assert wall(start, tz).time() == time(0) and wall(end, tz).time() == time(0)
    assert wall(end, tz).date() == wall(start, tz).date() + timedelta(days=1)
    # A DST change that day makes it 23h / 25h long (23.5h / 24.5h on Lord Howe).
    assert end - start == DAY - (
        end.astimezone(ZoneInfo(tz)).utcoffset() - start.astimezone(ZoneInfo(tz)).utcoffset()  # type: ignore[operator]
    )


@given(now=instants, tz=zones, used=amounts)
def test_a_daily_subscription_window_shows_zero_once_the_day_is_over(
    now: datetime, tz: str, used: Decimal
) -> None:
    far = now + timedelta(days=400)
    start = subscription_window_start("daily", now, starts_at=now - WEEK, tz=tz)
    end = subscription_window_end("daily", start, expires_at=far, tz=tz)
    assert start <= now < end and is_boundary(start, tz, 0) and is_boundary(end, tz, 0)
    assert subscription_effective_usage("daily", used, start, now, expires_at=far, tz=tz) == used
    assert subscription_effective_usage("daily", used, start, end, expires_at=far, tz=tz) == 0


@pytest.mark.parametrize(
    ("tz", "day", "hours_long"),
    [
        ("America/New_York", date(2024, 3, 10), 23),
        ("America/New_York", date(2024, 11, 3), 25),
        ("America/New_York", date(2024, 6, 5), 24),
        ("Australia/Lord_Howe", date(2024, 10, 6), 23.5),
        ("Australia/Lord_Howe", date(2024, 4, 7), 24.5),
        ("Europe/London", date(2024, 3, 31), 23),
    ],
)
def test_daily_subscription_windows_on_dst_days(tz: str, day: date, hours_long: float) -> None:
    noon = datetime.combine(day, time(12), tzinfo=ZoneInfo(tz))
    start = subscription_window_start("daily", noon, starts_at=noon - WEEK, tz=tz)
    end = subscription_window_end("daily", start, expires_at=noon + WEEK, tz=tz)
    assert wall(start, tz) == datetime.combine(day, time(0))
    assert end - start == timedelta(hours=hours_long)
    assert not subscription_window_expired("daily", start, end - TICK, expires_at=noon + WEEK, tz=tz)
    assert subscription_window_expired("daily", start, end, expires_at=noon + WEEK, tz=tz)


def test_a_daily_subscription_window_where_midnight_is_skipped_starts_at_the_jump() -> None:
    # Santiago, 2024-09-08: 00:00 -04 jumps to 01:00 -03 (04:00 UTC).
    now = utc(2024, 9, 8, 15)
    start = subscription_window_start("daily", now, starts_at=now - WEEK, tz="America/Santiago")
    assert start == utc(2024, 9, 8, 4)
    assert subscription_window_end("daily", start, expires_at=now + WEEK, tz="America/Santiago") == utc(
        2024, 9, 9, 3
    )


def test_a_monthly_window_never_steps_past_expiry() -> None:
    starts_at, expires_at = utc(2024, 1, 1), utc(2024, 3, 15)
    start = subscription_window_start("monthly", utc(2024, 3, 10), starts_at=starts_at, tz="UTC")
    assert start == utc(2024, 3, 1)  # Jan 1 + 2 × 30 days
    assert subscription_window_end("monthly", start, expires_at=expires_at, tz="UTC") == expires_at
    assert (
        subscription_effective_usage(
            "monthly", Decimal(7), start, expires_at, expires_at=expires_at, tz="UTC"
        )
        == 0
    )
    assert (
        subscription_effective_usage(
            "monthly", Decimal(7), None, utc(2024, 3, 10), expires_at=expires_at, tz="UTC"
        )
        == 0
    )


def test_a_weekly_window_before_the_subscription_starts_is_the_first_one() -> None:
    starts_at = utc(2024, 6, 1)
    assert subscription_window_start("weekly", utc(2024, 5, 30), starts_at=starts_at, tz="UTC") == starts_at
