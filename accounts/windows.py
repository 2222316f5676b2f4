"""Window math for quotas, key rate limits and subscriptions (docs/windows.md).

Pure functions: aware datetimes in, aware UTC datetimes out, no database. The
atomic counter services rebuild the same rules as SQL CASE expressions, and
pages use them for the display rule (an expired window shows 0 without a write).

Every window here is "expired when now >= end". Lengths measured in hours
(rolling quotas, key windows, subscription weeks/months) are added in UTC, so a
DST change never stretches them. Calendar boundaries (fixed quota resets, local
midnight) are computed in the configured IANA zone with these rules:

- A boundary is the first instant at which the local wall clock reaches the
  boundary's wall time. So an hour repeated by a fall-back change counts at its
  first occurrence only, and an hour skipped by a spring-forward change counts
  at the jump itself: 02:00 in America/New_York on 2024-03-10 resolves to
  03:00 EDT (07:00 UTC), and 02:00 in Australia/Lord_Howe on 2024-10-06 to
  02:30. A skipped date (Pacific/Apia, 2011-12-30) resolves to the jump too.
- Boundaries are found from the local date of the instant, so the cost is a
  few zone conversions however long a window sat idle.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Literal, TypedDict
from zoneinfo import ZoneInfo

type Mode = Literal["rolling", "fixed"]
type Period = Literal["daily", "weekly"]
type KeyWindow = Literal["5h", "1d", "7d"]
type SubscriptionWindow = Literal["daily", "weekly", "monthly"]
type Zone = str | tzinfo

ZERO = Decimal(0)
DAY = timedelta(hours=24)
WEEK = timedelta(hours=168)
PERIOD_LENGTHS: dict[str, timedelta] = {"daily": DAY, "weekly": WEEK}
KEY_WINDOW_LENGTHS: dict[str, timedelta] = {"5h": timedelta(hours=5), "1d": DAY, "7d": WEEK}
SUBSCRIPTION_STEPS: dict[str, timedelta] = {"weekly": WEEK, "monthly": timedelta(hours=30 * 24)}


def zone(tz: Zone) -> tzinfo:
    """An IANA name or a tzinfo. Empty is refused: callers resolve "empty = settings.TIME_ZONE"."""
    if isinstance(tz, tzinfo):
        return tz
    if not tz:
        raise ValueError("timezone is empty; resolve the settings.TIME_ZONE default before calling")
    return ZoneInfo(tz)


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: window math needs aware datetimes")
    return dt.astimezone(UTC)


def _wall(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _local_instant(day: date, hour: int, tz: tzinfo) -> datetime:
    """The first instant at which the wall clock in tz reaches `day` at `hour`:00."""
    wall = datetime.combine(day, time(hour))
    guess = wall.replace(tzinfo=tz).astimezone(UTC)  # fold=0: first occurrence of a repeated hour
    if _wall(guess, tz) == wall:
        return guess
    # The wall time was skipped. fold=1 reads it with the offset after the jump, which lands before
    # the jump, and fold=0 lands at or after it; bisect on whole seconds (transitions are whole).
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    hi = int(guess.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(datetime.fromtimestamp(mid, UTC), tz) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _boundaries(instant: datetime, hour: int, weekday: int | None, tz: tzinfo) -> Iterable[datetime]:
    """Boundaries on local dates near the instant's: enough to bracket it on both sides."""
    today = instant.astimezone(tz).date()
    span = 2 if weekday is None else 9
    for offset in range(-span, span + 1):
        day = today + timedelta(days=offset)
        if weekday is None or day.weekday() == weekday:
            yield _local_instant(day, hour, tz)


def _boundary_after(instant: datetime, hour: int, weekday: int | None, tz: tzinfo) -> datetime:
    return min(b for b in _boundaries(instant, hour, weekday, tz) if b > instant)


def _boundary_at_or_before(instant: datetime, hour: int, weekday: int | None, tz: tzinfo) -> datetime:
    return max(b for b in _boundaries(instant, hour, weekday, tz) if b <= instant)


# --- Upstream account quotas (docs/windows.md#account-quotas) -----------------------------------


def period_end(
    start: datetime, *, mode: Mode, period: Period, reset_hour: int, reset_weekday: int, tz: Zone
) -> datetime:
    """When the quota period that began at `start` ends.

    rolling: 24h / 168h after start. fixed: the first reset boundary strictly after start, so a
    start exactly on a boundary runs to the next one. `reset_weekday` is ignored for daily.
    """
    start = _utc(start)
    if period not in PERIOD_LENGTHS:
        raise ValueError(f"unknown quota period {period!r}")
    if mode == "rolling":
        return start + PERIOD_LENGTHS[period]
    if mode != "fixed":
        raise ValueError(f"unknown reset mode {mode!r}")
    if not 0 <= reset_hour <= 23 or not 0 <= reset_weekday <= 6:
        raise ValueError(f"reset hour {reset_hour} / weekday {reset_weekday} out of range")
    return _boundary_after(start, reset_hour, reset_weekday if period == "weekly" else None, zone(tz))


def is_period_expired(
    start: datetime | None,
    now: datetime,
    *,
    mode: Mode,
    period: Period,
    reset_hour: int,
    reset_weekday: int,
    tz: Zone,
) -> bool:
    """A period that never started counts as expired: the next increment starts it fresh."""
    if start is None:
        return True
    end = period_end(
        start, mode=mode, period=period, reset_hour=reset_hour, reset_weekday=reset_weekday, tz=tz
    )
    return _utc(now) >= end


def next_reset(
    start: datetime | None,
    now: datetime,
    *,
    mode: Mode,
    period: Period,
    reset_hour: int,
    reset_weekday: int,
    tz: Zone,
) -> datetime | None:
    """The reset time a page should show.

    A live period shows its end. Otherwise a rolling period has no reset until the next use
    starts one (None), and a fixed one shows the next boundary after now.
    """

    def end(at: datetime) -> datetime:
        return period_end(
            at, mode=mode, period=period, reset_hour=reset_hour, reset_weekday=reset_weekday, tz=tz
        )

    if start is not None and _utc(now) < end(start):
        return end(start)
    return None if mode == "rolling" else end(now)


def effective_used(
    used: Decimal,
    start: datetime | None,
    now: datetime,
    *,
    mode: Mode,
    period: Period,
    reset_hour: int,
    reset_weekday: int,
    tz: Zone,
) -> Decimal:
    """The display rule: an expired period's usage reads 0; the row is reset on the next increment."""
    expired = is_period_expired(
        start, now, mode=mode, period=period, reset_hour=reset_hour, reset_weekday=reset_weekday, tz=tz
    )
    return ZERO if expired else used


class PeriodRule(TypedDict):
    mode: Mode
    period: Period
    reset_hour: int
    reset_weekday: int
    tz: Zone


# --- API key windows (docs/windows.md#key-windows) ----------------------------------------------


def key_window_start_for(kind: KeyWindow, now: datetime, tz: Zone) -> datetime:
    """The start to write when a key window (re)starts at `now`.

    5h starts at now. 1d and 7d start at local midnight of now's date; on a 25-hour day the 1d
    window from midnight has already ended in the last hour, so the start steps on by 24h to keep
    now inside the window without overlapping the previous one (reconcile sums by window).
    """
    now = _utc(now)
    length = KEY_WINDOW_LENGTHS[kind]
    if kind == "5h":
        return now
    midnight = _boundary_at_or_before(now, 0, None, zone(tz))
    return midnight + (now - midnight) // length * length


def key_window_end(kind: KeyWindow, start: datetime) -> datetime:
    return _utc(start) + KEY_WINDOW_LENGTHS[kind]


def key_window_expired(kind: KeyWindow, start: datetime | None, now: datetime) -> bool:
    return start is None or _utc(now) >= key_window_end(kind, start)


def key_window_effective_usage(
    kind: KeyWindow, used: Decimal, start: datetime | None, now: datetime
) -> Decimal:
    return ZERO if key_window_expired(kind, start, now) else used


# --- Subscription windows (docs/windows.md#subscription-windows) --------------------------------


def subscription_window_start(
    kind: SubscriptionWindow, now: datetime, *, starts_at: datetime, tz: Zone
) -> datetime:
    """The start of the window containing now.

    daily: local midnight (so 23h / 25h on DST days). weekly / monthly: starts_at + k steps of
    7×24h / 30×24h, the latest not after now; before starts_at the first window is returned.
    """
    now = _utc(now)
    if kind == "daily":
        return _boundary_at_or_before(now, 0, None, zone(tz))
    starts_at, step = _utc(starts_at), SUBSCRIPTION_STEPS[kind]
    return starts_at + max(0, (now - starts_at) // step) * step


def subscription_window_end(
    kind: SubscriptionWindow, window_start: datetime, *, expires_at: datetime, tz: Zone
) -> datetime:
    """The next local midnight, or start + step; never past expires_at, so no window outlives its term."""
    window_start = _utc(window_start)
    if kind == "daily":
        end = _boundary_after(window_start, 0, None, zone(tz))
    else:
        end = window_start + SUBSCRIPTION_STEPS[kind]
    return min(end, _utc(expires_at))


def subscription_window_expired(
    kind: SubscriptionWindow,
    window_start: datetime | None,
    now: datetime,
    *,
    expires_at: datetime,
    tz: Zone,
) -> bool:
    if window_start is None:
        return True
    return _utc(now) >= subscription_window_end(kind, window_start, expires_at=expires_at, tz=tz)


def subscription_effective_usage(
    kind: SubscriptionWindow,
    used: Decimal,
    window_start: datetime | None,
    now: datetime,
    *,
    expires_at: datetime,
    tz: Zone,
) -> Decimal:
    expired = subscription_window_expired(kind, window_start, now, expires_at=expires_at, tz=tz)
    return ZERO if expired else used
