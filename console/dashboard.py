"""Reads for the operator dashboard (docs/console.md#dashboard). Usage figures come from the hourly rollups.

The dashboard sums rollup rows into *buckets*: today's hours and the closed days before today.
A bucket that ended more than SETTLE ago no longer changes (the gateway records a row at the
moment it finishes), so its sums are cached (CACHE_TTL) and the next request only sums the
hours that are still open. Every chart, the KPIs and the top lists are built from those bucket
sums, so a page costs a fixed number of queries however many rollup rows, keys or accounts
there are: the query count is tested with thousands of rows, the time with ten million ledger
rows (bench/dashboard.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.core.cache import cache
from django.db.models import DecimalField, F, Max, Q, Sum, Value
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import APIKey, Group, UpstreamAccount, User
from accounts.selectors.upstream import WARN_AT, QuotaMeter, upstream_account_quota_badge
from billing.models import UsageRollup
from billing.rollup_epoch import BACKFILL_AFTER, rollup_epoch
from billing.selectors import PERIOD_DAYS, UnpricedModel, local_midnight, reconcile_latest_drift
from channels.pricing import PricingSource
from common.money import quantize_usd

ZERO = Decimal(0)
HOUR = timedelta(hours=1)
TOP_LIMIT = 8
WARNING_LIMIT = 10
# A bucket that ended this long ago is closed: its sums are cached. Any row recorded into it
# later is a backfill (older than BACKFILL_AFTER), which moves the rollup epoch in the keys.
SETTLE = timedelta(minutes=10)
assert SETTLE >= BACKFILL_AFTER
CACHE_TTL = 24 * 60 * 60
CACHE_PREFIX = "dashboard:v3"
# The period switcher: today by hour, the last 7 or 30 days (today included) by day.
PERIODS = {"today": "Today", "7d": "7 days", "30d": "30 days"}
DEFAULT_PERIOD = "7d"
# The top-models toggle: which rollup columns name a row. "mapping" is "requested → upstream".
MODEL_SOURCES: dict[str, tuple[str, ...]] = {
    "requested": ("requested_model",),
    "upstream": ("upstream_model",),
    "mapping": ("requested_model", "upstream_model"),
}
DEFAULT_MODEL_SOURCE = "requested"
MODEL_SOURCE_CHOICES = [("requested", "Requested"), ("upstream", "Upstream"), ("mapping", "Mapping")]
_MONEY = DecimalField(max_digits=20, decimal_places=8)


class InvalidChoice(ValueError):
    """A period or model source the dashboard does not know: the view answers 400."""


def valid_period(value: str | None) -> str:
    if not value:
        return DEFAULT_PERIOD
    if value not in PERIODS:
        raise InvalidChoice(f"period must be one of {', '.join(PERIODS)}")
    return value


def valid_model_source(value: str | None) -> str:
    if not value:
        return DEFAULT_MODEL_SOURCE
    if value not in MODEL_SOURCES:
        raise InvalidChoice(f"model source must be one of {', '.join(MODEL_SOURCES)}")
    return value


@dataclass(slots=True)
class Sums:
    """The rollup sums of one bucket (an hour or a day), whole and by dimension.

    Each dimension maps its key to (requests, tokens, actual cost): models by
    (requested, upstream), users, keys and groups by id (group 0 = none). Costs are whole
    units of $0.00000001 (the ledger's scale), so sums stay exact and cached buckets are
    plain integers, quick to unpickle and add; _money() turns them back into dollars.
    """

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_tokens: int = 0
    actual_cost: int = 0
    account_cost: int = 0
    models: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    users: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    keys: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    groups: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    # Models recorded with no price: billing model -> (requests, start of the last hour, epoch seconds).
    unpriced: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_tokens

    def add(self, other: Sums) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_tokens += other.cache_tokens
        self.actual_cost += other.actual_cost
        self.account_cost += other.account_cost
        for name in ("models", "users", "keys", "groups"):
            mine = getattr(self, name)
            for key, row in getattr(other, name).items():
                have = mine.get(key)
                mine[key] = row if have is None else (have[0] + row[0], have[1] + row[1], have[2] + row[2])
        for model, (requests, last) in other.unpriced.items():
            have = self.unpriced.get(model)
            self.unpriced[model] = (
                (requests, last) if have is None else (have[0] + requests, max(have[1], last))
            )


def merged(parts: Iterable[Sums]) -> Sums:
    total = Sums()
    for part in parts:
        total.add(part)
    return total


@dataclass(frozen=True, slots=True)
class PeriodFigures:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_tokens: int = 0
    actual_cost: Decimal = ZERO
    account_cost: Decimal = ZERO
    active_keys: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_tokens

    @classmethod
    def of(cls, parts: list[Sums]) -> PeriodFigures:
        """The figures of several buckets, without merging their dimensions (only the keys' ids)."""
        return cls(
            requests=sum(part.requests for part in parts),
            input_tokens=sum(part.input_tokens for part in parts),
            output_tokens=sum(part.output_tokens for part in parts),
            cache_tokens=sum(part.cache_tokens for part in parts),
            actual_cost=_money(sum(part.actual_cost for part in parts)),
            account_cost=_money(sum(part.account_cost for part in parts)),
            active_keys=len({key for part in parts for key, row in part.keys.items() if row[0] > 0}),
        )


@dataclass(frozen=True, slots=True)
class Kpis:
    today: PeriodFigures
    week: PeriodFigures


@dataclass(frozen=True, slots=True)
class TrendPoint:
    start: datetime  # the bucket's start, local
    label: str  # the chart's axis label
    title: str  # the table's row heading
    requests: int
    tokens: int
    actual_cost: Decimal


@dataclass(frozen=True, slots=True)
class TopModel:
    requested: str
    upstream: str
    requests: int
    tokens: int
    actual_cost: Decimal

    def label(self, source: str) -> str:
        if source == "upstream":
            return self.upstream or "(none)"
        if source == "mapping":
            return f"{self.requested} → {self.upstream or '(none)'}"
        return self.requested


@dataclass(frozen=True, slots=True)
class Ranked:
    """One row of a top list: a user, a key or a group."""

    id: int
    label: str
    detail: str
    requests: int
    tokens: int
    actual_cost: Decimal


@dataclass(frozen=True, slots=True)
class AccountNearQuota:
    account: UpstreamAccount
    meters: tuple[QuotaMeter, ...]  # only the dimensions at or above WARN_AT


def _money(units: int) -> Decimal:
    """Dollars from whole units of $0.00000001."""
    return quantize_usd(Decimal(units).scaleb(-8))


def _units(amount: Decimal | None) -> int:
    """Whole units of $0.00000001 of a sum of ledger amounts (which have 8 places at most)."""
    return int((amount or ZERO).scaleb(8))


def _token_sum() -> F:
    return (
        F("input_tokens")
        + F("output_tokens")
        + F("cache_creation_5m_tokens")
        + F("cache_creation_1h_tokens")
        + F("cache_read_tokens")
    )


def _cache_sum() -> F:
    return F("cache_creation_5m_tokens") + F("cache_creation_1h_tokens") + F("cache_read_tokens")


_DIMENSIONS = (
    ("models", ("requested_model", "upstream_model")),
    ("users", ("user_id",)),
    ("keys", ("api_key_id",)),
)


def sum_buckets(*, start: datetime, end: datetime, by_day: bool) -> dict[date | datetime, Sums]:
    """The rollups in [start, end) summed by UTC hour or by local day: four queries.

    The group query carries every total, so the bucket's totals are the sum of its groups.
    """
    rows = UsageRollup.objects.filter(hour__gte=start, hour__lt=end).order_by()
    if by_day:
        rows = rows.annotate(bucket=TruncDate("hour", tzinfo=timezone.get_current_timezone()))
    else:
        rows = rows.annotate(bucket=F("hour"))
    buckets: dict[date | datetime, Sums] = {}
    for row in rows.values("bucket", "group_id").annotate(
        n=Sum("requests"),
        input=Sum("input_tokens"),
        output=Sum("output_tokens"),
        cached=Sum(_cache_sum()),
        actual=Sum("actual_cost"),
        account=Sum("account_cost"),
    ):
        sums = buckets.setdefault(row["bucket"], Sums())
        sums.requests += row["n"]
        sums.input_tokens += row["input"]
        sums.output_tokens += row["output"]
        sums.cache_tokens += row["cached"]
        actual = _units(row["actual"])
        sums.actual_cost += actual
        sums.account_cost += _units(row["account"])
        sums.groups[row["group_id"]] = (row["n"], row["input"] + row["output"] + row["cached"], actual)
    for name, columns in _DIMENSIONS:
        query = rows.values("bucket", *columns).annotate(
            n=Sum("requests"), tokens=Sum(_token_sum()), actual=Sum("actual_cost")
        )
        for row in query:
            key = tuple(row[column] for column in columns) if len(columns) > 1 else row[columns[0]]
            getattr(buckets.setdefault(row["bucket"], Sums()), name)[key] = (
                row["n"],
                row["tokens"],
                _units(row["actual"]),
            )
    for row in (
        rows.filter(pricing_source=PricingSource.MISSING)
        .values("bucket", "billing_model")
        .annotate(n=Sum("requests"), last=Max("hour"))
    ):
        buckets.setdefault(row["bucket"], Sums()).unpriced[row["billing_model"]] = (
            row["n"],
            int(row["last"].timestamp()),
        )
    return buckets


def _hour_key(epoch: int):
    return lambda hour: f"{CACHE_PREFIX}:{epoch}:hour:{int(hour.timestamp())}"


def _day_key(epoch: int):
    zone = timezone.get_current_timezone_name()
    return lambda day: f"{CACHE_PREFIX}:{epoch}:day:{zone}:{day.isoformat()}"


def _collect(
    buckets: list, *, bounds, cache_key, by_day: bool, settled_before: datetime, now: datetime
) -> dict:
    """Each bucket's Sums: closed ones from the cache when there, the rest summed (and closed ones cached)."""
    closed = [b for b in buckets if bounds(b)[1] <= settled_before]
    found = cache.get_many([cache_key(b) for b in closed]) if closed else {}
    result = {b: found[cache_key(b)] for b in closed if cache_key(b) in found}
    wanted = [b for b in buckets if b not in result]
    if wanted:
        start = min(bounds(b)[0] for b in wanted)
        end = min(max(bounds(b)[1] for b in wanted), now + HOUR)
        summed = sum_buckets(start=start, end=end, by_day=by_day)
        fresh = {}
        for bucket in wanted:
            result[bucket] = summed.get(bucket) or Sums()
            if bounds(bucket)[1] <= settled_before:
                fresh[cache_key(bucket)] = result[bucket]
        if fresh:
            cache.set_many(fresh, CACHE_TTL)
    return result


def today_hours(*, now: datetime) -> list[datetime]:
    """The UTC rollup hours of today (local) that have started, oldest first."""
    today = timezone.localdate(now)
    start, end = local_midnight(today), local_midnight(today + timedelta(days=1))
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if hour < start:  # a half-hour zone: the rollup hour that straddles midnight is yesterday's
        hour += HOUR
    hours = []
    while hour < end and hour <= now:
        hours.append(hour)
        hour += HOUR
    return hours


@dataclass(frozen=True, slots=True)
class Usage:
    """The bucket sums the dashboard needs: today's hours, and closed days back to the period's start."""

    hours: dict[datetime, Sums]
    days: dict[date, Sums]  # closed days, oldest first
    today: Sums
    epoch: int = 0
    settled_before: datetime | None = None


def dashboard_usage(*, period: str = DEFAULT_PERIOD, now: datetime | None = None) -> Usage:
    """Today's hours, and enough closed days for the period and the 7-day KPIs."""
    now = now or timezone.now()
    settled_before = now - SETTLE
    epoch = rollup_epoch()  # a backfill into a closed bucket moves it
    hours = _collect(
        today_hours(now=now),
        bounds=lambda hour: (hour, hour + HOUR),
        cache_key=_hour_key(epoch),
        by_day=False,
        settled_before=settled_before,
        now=now,
    )
    today = timezone.localdate(now)
    back = max(PERIOD_DAYS[period], PERIOD_DAYS["7d"])
    days = _collect(
        [today - timedelta(days=offset) for offset in range(back, 0, -1)],
        bounds=lambda day: (local_midnight(day), local_midnight(day + timedelta(days=1))),
        cache_key=_day_key(epoch),
        by_day=True,
        settled_before=settled_before,
        now=now,
    )
    ordered_hours = dict(sorted(hours.items()))
    return Usage(
        hours=ordered_hours,
        days=dict(sorted(days.items())),
        today=merged(ordered_hours.values()),
        epoch=epoch,
        settled_before=settled_before,
    )


def period_parts(usage: Usage, period: str) -> list[Sums]:
    """The buckets of a period: its closed days and today."""
    days = list(usage.days.values())[-PERIOD_DAYS[period] :] if PERIOD_DAYS[period] else []
    return [*days, usage.today]


def period_sums(usage: Usage, period: str) -> Sums:
    """The period merged: its closed days (merged once and cached like a day) and today."""
    days = list(usage.days.items())[-PERIOD_DAYS[period] :] if PERIOD_DAYS[period] else []
    if (
        len(days) > 1
        and usage.settled_before
        and local_midnight(days[-1][0] + timedelta(days=1)) <= usage.settled_before
    ):
        zone = timezone.get_current_timezone_name()
        key = f"{CACHE_PREFIX}:{usage.epoch}:days:{zone}:{days[0][0].isoformat()}:{days[-1][0].isoformat()}"
        closed = cache.get(key)
        if closed is None:
            closed = merged(sums for _, sums in days)
            cache.set(key, closed, CACHE_TTL)
    else:
        closed = merged(sums for _, sums in days)
    return merged([closed, usage.today])


def dashboard_kpis(*, now: datetime | None = None, usage: Usage | None = None) -> Kpis:
    """Today's and the last 7 days' figures (the usage page's "today" / "7d")."""
    usage = usage or dashboard_usage(now=now)
    return Kpis(today=PeriodFigures.of([usage.today]), week=PeriodFigures.of(period_parts(usage, "7d")))


def dashboard_trend(
    *, period: str = DEFAULT_PERIOD, now: datetime | None = None, usage: Usage | None = None
) -> list[TrendPoint]:
    """Today by hour (the hours so far), or each day of the period, oldest first, zeros included."""
    now = now or timezone.now()
    usage = usage or dashboard_usage(period=period, now=now)
    if period == "today":
        points = []
        for hour, sums in usage.hours.items():
            local = timezone.localtime(hour)
            points.append(
                TrendPoint(
                    local,
                    f"{local:%H:%M}",
                    f"{local:%H:%M}–{local + HOUR:%H:%M}",
                    sums.requests,
                    sums.total_tokens,
                    _money(sums.actual_cost),
                )
            )
        return points
    today = timezone.localdate(now)
    days = list(usage.days.items())[-PERIOD_DAYS[period] :]
    return [
        TrendPoint(
            local_midnight(day),
            f"{day:%a %d}" if period == "7d" else f"{day:%d %b}",
            f"{day:%a %d %b}",
            sums.requests,
            sums.total_tokens,
            _money(sums.actual_cost),
        )
        for day, sums in [*days, (today, usage.today)]
    ]


def _ranked(rows: dict, limit: int) -> list[tuple]:
    """(key, requests, tokens, cost) of the `limit` costliest, ties by requests then key."""
    ordered = sorted(rows.items(), key=lambda item: (-item[1][2], -item[1][0], item[0]))
    return [(key, requests, tokens, cost) for key, (requests, tokens, cost) in ordered[:limit]]


def top_models(
    *,
    source: str = DEFAULT_MODEL_SOURCE,
    period: str = DEFAULT_PERIOD,
    now: datetime | None = None,
    sums: Sums | None = None,
) -> list[TopModel]:
    """The period's models by actual cost, named by `source` (see MODEL_SOURCES)."""
    source = valid_model_source(source)
    if sums is None:
        sums = period_sums(dashboard_usage(period=period, now=now), period)
    named: dict[tuple[str, str], tuple[int, int, int]] = {}
    for (requested, upstream), row in sums.models.items():
        key = (requested if source != "upstream" else "", upstream if source != "requested" else "")
        have = named.get(key)
        named[key] = row if have is None else (have[0] + row[0], have[1] + row[1], have[2] + row[2])
    return [
        TopModel(requested, upstream, requests, tokens, _money(cost))
        for (requested, upstream), requests, tokens, cost in _ranked(named, TOP_LIMIT)
    ]


def top_users(*, sums: Sums, limit: int = TOP_LIMIT) -> list[Ranked]:
    """The costliest users of `sums`, with their emails (one query)."""
    ranked = _ranked(sums.users, limit)
    emails = dict(User.objects.filter(pk__in=[key for key, *_ in ranked]).values_list("id", "email"))
    return [
        Ranked(user_id, emails.get(user_id, f"user #{user_id}"), "", requests, tokens, _money(cost))
        for user_id, requests, tokens, cost in ranked
    ]


def top_keys(*, sums: Sums, limit: int = TOP_LIMIT) -> list[Ranked]:
    """The costliest API keys of `sums`, named with their owner (one query)."""
    ranked = _ranked(sums.keys, limit)
    keys = {
        key.pk: key
        for key in APIKey.objects.filter(pk__in=[key for key, *_ in ranked])
        .select_related("user")
        .only("id", "name", "key_prefix", "key_last4", "user__email")
    }
    rows = []
    for key_id, requests, tokens, cost in ranked:
        key = keys.get(key_id)
        label = f"{key.name} (…{key.key_last4})" if key else f"key #{key_id} (deleted)"
        rows.append(Ranked(key_id, label, key.user.email if key else "", requests, tokens, _money(cost)))
    return rows


def group_costs(*, sums: Sums) -> list[Ranked]:
    """Every group of `sums` by cost, with its name (one query); id 0 is usage with no group."""
    ranked = _ranked(sums.groups, len(sums.groups))
    names = dict(Group.objects.filter(pk__in=[key for key, *_ in ranked if key]).values_list("id", "name"))
    return [
        Ranked(
            group_id,
            "No group" if not group_id else names.get(group_id, f"group #{group_id} (deleted)"),
            "",
            requests,
            tokens,
            _money(cost),
        )
        for group_id, requests, tokens, cost in ranked
    ]


def accounts_in_error(*, limit: int = WARNING_LIMIT) -> tuple[list[UpstreamAccount], int]:
    """Up to `limit` accounts with status=error, and how many there are."""
    errors = UpstreamAccount.objects.filter(status=UpstreamAccount.Status.ERROR)
    shown = list(errors.only("id", "name", "error_message").order_by("name", "id")[:limit])
    return shown, (len(shown) if len(shown) < limit else errors.count())


def _at_warn(used: str, limit: str) -> Q:
    return Q(**{f"{limit}__gt": 0, f"{used}__gte": F(limit) * Value(WARN_AT, output_field=_MONEY)})


def accounts_near_quota(*, now: datetime | None = None) -> list[AccountNearQuota]:
    """Quota-bearing accounts with a period at or above 80 % of its limit, by the display rule.

    The database narrows to accounts whose stored counters reach 80 %; the display rule then
    drops periods that have expired (an expired period reads 0 until its next charge).
    """
    now = now or timezone.now()
    candidates = (
        UpstreamAccount.objects.filter(type__in=UpstreamAccount.QUOTA_TYPES)
        .filter(
            _at_warn("quota_used_usd", "quota_limit_usd")
            | _at_warn("quota_daily_used_usd", "quota_daily_limit_usd")
            | _at_warn("quota_weekly_used_usd", "quota_weekly_limit_usd")
        )
        .defer("credentials_encrypted", "notes")
        .order_by("name", "id")
    )
    near = []
    for account in candidates:
        meters = tuple(
            m for m in upstream_account_quota_badge(account, now=now).meters if m.fraction >= WARN_AT
        )
        if meters:
            near.append(AccountNearQuota(account, meters))
    return near


def keys_near_quota(*, limit: int = WARNING_LIMIT) -> tuple[list[APIKey], int]:
    """Up to `limit` keys with a quota used to 80 % or more (fullest first), and how many there are."""
    near = APIKey.objects.filter(_at_warn("quota_used_usd", "quota_usd"))
    shown = list(
        near.select_related("user")
        .only("id", "name", "key_prefix", "key_last4", "status", "quota_usd", "quota_used_usd", "user__email")
        .annotate(fullness=F("quota_used_usd") / F("quota_usd"))
        .order_by("-fullness", "id")[:limit]
    )
    return shown, (len(shown) if len(shown) < limit else near.count())


def _chart(kind: str, labels: list[str], values: list, *, unit: str = "usd", **extra) -> dict:
    """What static/js/dashboard.js needs to draw one chart (passed with json_script).

    Amounts travel as strings (exact decimals; the chart parses them, the tables show them).
    """
    return {"kind": kind, "labels": labels, "values": [str(value) for value in values], "unit": unit, **extra}


def dashboard_charts(
    *, period: str = DEFAULT_PERIOD, source: str = DEFAULT_MODEL_SOURCE, now: datetime | None = None
) -> dict:
    """The period's trend, model mix, top users, top keys and cost per group, with chart data."""
    now = now or timezone.now()
    usage = dashboard_usage(period=period, now=now)
    sums = period_sums(usage, period)
    trend = dashboard_trend(period=period, now=now, usage=usage)
    models = top_models(source=source, sums=sums)
    users, keys, groups = top_users(sums=sums), top_keys(sums=sums), group_costs(sums=sums)
    return {
        "usage": usage,
        "kpis": dashboard_kpis(usage=usage),
        "period": period,
        "period_label": PERIODS[period],
        "period_choices": list(PERIODS.items()),
        "model_source": source,
        "model_source_choices": MODEL_SOURCE_CHOICES,
        "trend": trend,
        "top_models": models,
        "top_users": users,
        "top_keys": keys,
        "group_costs": groups,
        "charts": {
            "trend": _chart(
                "trend",
                [point.label for point in trend],
                [point.actual_cost for point in trend],
                tokens=[point.tokens for point in trend],
                titles=[point.title for point in trend],
            ),
            "models": _chart(
                "doughnut", [model.label(source) for model in models], [model.actual_cost for model in models]
            ),
            "users": _chart("bar", [user.label for user in users], [user.actual_cost for user in users]),
            "keys": _chart("bar", [key.label for key in keys], [key.actual_cost for key in keys]),
            "groups": _chart(
                "bar", [group.label for group in groups], [group.actual_cost for group in groups]
            ),
        },
    }


def unpriced_models(usage: Usage) -> list[UnpricedModel]:
    """Models recorded with no price in the last 7 days (today and the six before), most requests
    first, each with the start of the last hour it was seen in (from the rollups)."""
    week = merged(Sums(unpriced=part.unpriced) for part in period_parts(usage, "7d")).unpriced
    ordered = sorted(week.items(), key=lambda item: (-item[1][0], item[0]))
    return [
        UnpricedModel(model, requests, datetime.fromtimestamp(last, UTC))
        for model, (requests, last) in ordered
    ]


def dashboard_warnings(*, usage: Usage, now: datetime | None = None) -> dict:
    """Unpriced models, accounts in error, accounts and keys near a quota, and the drift the
    latest nightly reconcile found (docs/jobs.md#reconcile-runs)."""
    now = now or timezone.now()
    error_accounts, error_count = accounts_in_error()
    near_keys, near_key_count = keys_near_quota()
    drift_batch, drift_count = reconcile_latest_drift()
    return {
        "drift_batch": drift_batch if drift_count else None,
        "drift_count": drift_count,
        "unpriced_models": unpriced_models(usage),
        "error_accounts": error_accounts,
        "error_account_count": error_count,
        "accounts_near_quota": accounts_near_quota(now=now),
        "keys_near_quota": near_keys,
        "key_near_quota_count": near_key_count,
        "key_near_quota_more": near_key_count - len(near_keys),
    }
