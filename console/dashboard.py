"""Reads for the operator dashboard (docs/console.md#dashboard). Usage figures come from the hourly rollups.

Every function here is a fixed number of queries, however many rollup rows, keys or
accounts there are: the dashboard's query count is tested with thousands of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, DecimalField, F, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import APIKey, UpstreamAccount, User
from accounts.selectors.upstream import WARN_AT, QuotaMeter, upstream_account_quota_badge
from billing.models import UsageRollup
from billing.selectors import period_range, unpriced_models_seen
from common.money import format_usd, quantize_usd

ZERO = Decimal(0)
TREND_DAYS = 7
TOP_LIMIT = 8
WARNING_LIMIT = 10
# The top-models toggle: which rollup columns name a row. "mapping" is "requested → upstream".
MODEL_SOURCES: dict[str, tuple[str, ...]] = {
    "requested": ("requested_model",),
    "upstream": ("upstream_model",),
    "mapping": ("requested_model", "upstream_model"),
}
DEFAULT_MODEL_SOURCE = "requested"
MODEL_SOURCE_CHOICES = [("requested", "Requested"), ("upstream", "Upstream"), ("mapping", "Mapping")]
_MONEY = DecimalField(max_digits=20, decimal_places=8)


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


@dataclass(frozen=True, slots=True)
class Kpis:
    today: PeriodFigures
    week: PeriodFigures


@dataclass(frozen=True, slots=True)
class TrendDay:
    day: date
    requests: int
    tokens: int
    actual_cost: Decimal


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of a server-drawn SVG chart, in viewBox units."""

    label: str
    title: str
    x: int
    y: int
    width: int
    height: int

    @property
    def center(self) -> int:
        return self.x + self.width // 2


@dataclass(frozen=True, slots=True)
class TopModel:
    requested: str
    upstream: str
    requests: int
    tokens: int
    actual_cost: Decimal


@dataclass(frozen=True, slots=True)
class TopUser:
    user_id: int
    email: str
    requests: int
    tokens: int
    actual_cost: Decimal


@dataclass(frozen=True, slots=True)
class AccountNearQuota:
    account: UpstreamAccount
    meters: tuple[QuotaMeter, ...]  # only the dimensions at or above WARN_AT


def _token_sum() -> F:
    return (
        F("input_tokens")
        + F("output_tokens")
        + F("cache_creation_5m_tokens")
        + F("cache_creation_1h_tokens")
        + F("cache_read_tokens")
    )


def _money(value) -> Decimal:
    return quantize_usd(Decimal(value or 0))


def dashboard_kpis(*, now: datetime | None = None) -> Kpis:
    """Today's and the last 7 days' figures (the usage page's "today" / "7d"), in one query."""
    now = now or timezone.now()
    today_start, _ = period_range("today", now=now)
    week_start, _ = period_range("7d", now=now)
    sums = {}
    for name, start in (("today", today_start), ("week", week_start)):
        since = Q(hour__gte=start)
        sums |= {
            f"{name}_requests": Sum("requests", filter=since),
            f"{name}_input": Sum("input_tokens", filter=since),
            f"{name}_output": Sum("output_tokens", filter=since),
            f"{name}_cache": Sum(
                F("cache_creation_5m_tokens") + F("cache_creation_1h_tokens") + F("cache_read_tokens"),
                filter=since,
            ),
            f"{name}_actual": Sum("actual_cost", filter=since),
            f"{name}_account": Sum("account_cost", filter=since),
            f"{name}_keys": Count("api_key_id", distinct=True, filter=since & Q(requests__gt=0)),
        }
    row = UsageRollup.objects.filter(hour__gte=week_start).order_by().aggregate(**sums)
    figures = {
        name: PeriodFigures(
            requests=row[f"{name}_requests"] or 0,
            input_tokens=row[f"{name}_input"] or 0,
            output_tokens=row[f"{name}_output"] or 0,
            cache_tokens=row[f"{name}_cache"] or 0,
            actual_cost=_money(row[f"{name}_actual"]),
            account_cost=_money(row[f"{name}_account"]),
            active_keys=row[f"{name}_keys"] or 0,
        )
        for name in ("today", "week")
    }
    return Kpis(**figures)


def dashboard_trend(*, now: datetime | None = None) -> list[TrendDay]:
    """Requests, tokens and cost for each of the last 7 local days, oldest first, zeros included."""
    now = now or timezone.now()
    week_start, _ = period_range("7d", now=now)
    rows = (
        UsageRollup.objects.filter(hour__gte=week_start)
        .annotate(day=TruncDate("hour", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(requests=Sum("requests"), tokens=Sum(_token_sum()), actual_cost=Sum("actual_cost"))
        .order_by()
    )
    by_day = {row["day"]: row for row in rows}
    today = timezone.localdate(now)
    days = [today - timedelta(days=offset) for offset in range(TREND_DAYS - 1, -1, -1)]
    return [
        TrendDay(
            day=day,
            requests=by_day.get(day, {}).get("requests") or 0,
            tokens=by_day.get(day, {}).get("tokens") or 0,
            actual_cost=_money(by_day.get(day, {}).get("actual_cost")),
        )
        for day in days
    ]


def bar_chart(
    values: list[tuple[str, str, Decimal | int]], *, width: int = 700, height: int = 180, gap: int = 12
) -> list[Bar]:
    """Bars for (label, title, value) triples in a width × height viewBox; the tallest fills it.

    A non-zero value always gets at least 2 units, so a small day is visibly not zero.
    """
    peak = max((value for _, _, value in values), default=0)
    slot = width // max(len(values), 1)
    bars = []
    for index, (label, title, value) in enumerate(values):
        bar_height = int(Decimal(value) * height / Decimal(peak)) if peak else 0
        if value and bar_height < 2:
            bar_height = 2
        bars.append(
            Bar(
                label=label,
                title=title,
                x=index * slot + gap // 2,
                y=height - bar_height,
                width=slot - gap,
                height=bar_height,
            )
        )
    return bars


def top_models(*, source: str = DEFAULT_MODEL_SOURCE, now: datetime | None = None) -> list[TopModel]:
    """The last 7 days' models by actual cost, named by `source` (see MODEL_SOURCES)."""
    week_start, _ = period_range("7d", now=now or timezone.now())
    columns = MODEL_SOURCES.get(source, MODEL_SOURCES[DEFAULT_MODEL_SOURCE])
    rows = (
        UsageRollup.objects.filter(hour__gte=week_start)
        .values(*columns)
        .annotate(requests=Sum("requests"), tokens=Sum(_token_sum()), actual_cost=Sum("actual_cost"))
        .order_by("-actual_cost", "-requests", *columns)[:TOP_LIMIT]
    )
    return [
        TopModel(
            requested=row.get("requested_model", ""),
            upstream=row.get("upstream_model", ""),
            requests=row["requests"],
            tokens=row["tokens"] or 0,
            actual_cost=_money(row["actual_cost"]),
        )
        for row in rows
    ]


def top_users(*, now: datetime | None = None) -> list[TopUser]:
    """The last 7 days' users by actual cost, with their emails, in one query."""
    week_start, _ = period_range("7d", now=now or timezone.now())
    email = User.objects.filter(pk=OuterRef("user_id")).values("email")[:1]
    rows = (
        UsageRollup.objects.filter(hour__gte=week_start)
        .values("user_id")
        .annotate(requests=Sum("requests"), tokens=Sum(_token_sum()), actual_cost=Sum("actual_cost"))
        .annotate(email=Subquery(email))
        .order_by("-actual_cost", "-requests", "user_id")[:TOP_LIMIT]
    )
    return [
        TopUser(
            user_id=row["user_id"],
            email=row["email"] or f"user #{row['user_id']}",
            requests=row["requests"],
            tokens=row["tokens"] or 0,
            actual_cost=_money(row["actual_cost"]),
        )
        for row in rows
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


def dashboard_overview(*, now: datetime | None = None) -> dict:
    """Everything on the dashboard except the top models (which the toggle re-reads alone)."""
    now = now or timezone.now()
    trend = dashboard_trend(now=now)
    error_accounts, error_count = accounts_in_error()
    near_keys, near_key_count = keys_near_quota()
    return {
        "kpis": dashboard_kpis(now=now),
        "trend": trend,
        "cost_bars": bar_chart(
            [(f"{d.day:%a}", f"{d.day:%a %d %b}: {format_usd(d.actual_cost)}", d.actual_cost) for d in trend]
        ),
        "token_bars": bar_chart(
            [(f"{d.day:%a}", f"{d.day:%a %d %b}: {d.tokens:,} tokens", d.tokens) for d in trend]
        ),
        "top_users": top_users(now=now),
        "unpriced_models": unpriced_models_seen(days=TREND_DAYS, now=now),
        "error_accounts": error_accounts,
        "error_account_count": error_count,
        "accounts_near_quota": accounts_near_quota(now=now),
        "keys_near_quota": near_keys,
        "key_near_quota_count": near_key_count,
        "key_near_quota_more": near_key_count - len(near_keys),
    }
