"""Reads of the usage ledger: the filtered log, its totals, the CSV rows, unpriced models."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, Max, QuerySet, Sum
from django.db.models.fields.json import KT
from django.utils import timezone

from accounts.models import Group, User
from billing.cost import CostBreakdown, Usage, compute_cost
from billing.models import UsageLog, UsageRollup
from channels.pricing import BillingMode, ChannelCard, PriceMatch, PricingSource, price_lookup
from common.money import quantize_usd

ZERO = Decimal(0)
MODEL_FIELDS = {"requested": "requested_model", "upstream": "upstream_model", "billing": "billing_model"}
# Days before today that each preset reaches back: "7d" is today and the six days before it.
PERIOD_DAYS = {"today": 0, "7d": 6, "30d": 29}
DEFAULT_PERIOD = "7d"


@dataclass(frozen=True)
class UsageFilters:
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive
    user_id: int | None = None
    api_key_id: int | None = None
    account_id: int | None = None
    group_id: int | None = None
    model: str = ""
    model_field: str = "requested"
    pricing_source: str = ""
    status: str = ""  # "ok" (below 400) or "error" (400 and above)


@dataclass(frozen=True)
class UsageTotals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    image_output_tokens: int = 0
    total_cost: Decimal = ZERO
    actual_cost: Decimal = ZERO

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_tokens + self.cache_read_tokens


@dataclass(frozen=True)
class UnpricedModel:
    model: str
    requests: int
    last_seen: datetime


def local_midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def period_range(
    period: str, *, date_from: date | None = None, date_to: date | None = None, now: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """[start, end) of a preset or a custom range of whole days in the current timezone."""
    if period in PERIOD_DAYS:
        today = timezone.localdate(now or timezone.now())
        return local_midnight(today - timedelta(days=PERIOD_DAYS[period])), None
    start = local_midnight(date_from) if date_from else None
    # The calendar's last day has no next midnight: a range that ends there has no end.
    end = local_midnight(date_to + timedelta(days=1)) if date_to and date_to < date.max else None
    return start, end


def usage_logs(*, filters: UsageFilters) -> QuerySet[UsageLog]:
    """The filtered log, newest first. Every filter is one indexed equality (see UsageLog.Meta)."""
    return _filtered(UsageLog.objects.all(), filters, time_field="created_at").order_by("-created_at", "-id")


def _filtered(rows: QuerySet, filters: UsageFilters, *, time_field: str) -> QuerySet:
    """The same filters on the ledger and on the rollups, which share their dimension columns."""
    if filters.start is not None:
        rows = rows.filter(**{f"{time_field}__gte": filters.start})
    if filters.end is not None:
        rows = rows.filter(**{f"{time_field}__lt": filters.end})
    for field in ("user_id", "api_key_id", "account_id", "group_id"):
        if getattr(filters, field) is not None:
            rows = rows.filter(**{field: getattr(filters, field)})
    if filters.model:
        rows = rows.filter(**{MODEL_FIELDS.get(filters.model_field, "requested_model"): filters.model})
    if filters.pricing_source:
        rows = rows.filter(pricing_source=filters.pricing_source)
    if filters.status == "ok":
        rows = rows.filter(status_code__lt=400)
    elif filters.status == "error":
        rows = rows.filter(status_code__gte=400)
    return rows


def usage_page_rows(logs: QuerySet[UsageLog]) -> QuerySet[UsageLog]:
    """What a page of the log shows: the row and the names around it, in one query."""
    return logs.select_related("user", "api_key", "account", "group").defer(
        "user_agent",
        "user__password",
        "user__notes",
        "api_key__ip_allowlist",
        "api_key__ip_denylist",
        "account__credentials_encrypted",
        "account__notes",
        "group__model_routing",
        "group__description",
    )


def usage_rollups(*, filters: UsageFilters) -> QuerySet[UsageRollup]:
    """The rollup rows covering the filtered set; exact only for hour-aligned ranges."""
    return _filtered(UsageRollup.objects.all(), filters, time_field="hour").order_by()


def _on_the_hour(moment: datetime | None) -> bool:
    return moment is None or moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0) == moment


def usage_totals(*, filters: UsageFilters) -> UsageTotals:
    """Requests, tokens by kind and costs of the whole filtered set, in one aggregate query.

    Read from the hourly rollups whenever the range starts and ends on the hour (every preset
    and whole-day range in a whole-hour timezone), which is exact because usage_record writes a
    row and its rollup in one transaction; otherwise from the ledger itself.
    """
    if _on_the_hour(filters.start) and _on_the_hour(filters.end):
        return usage_totals_from_rollups(filters=filters)
    return usage_totals_from_ledger(filters=filters)


_TOKEN_SUMS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
    "image_output_tokens",
    "total_cost",
    "actual_cost",
)
# Everything compute_cost reads from a row (besides its group's platform).
_PRICED_BY = (
    "billing_model",
    "input_tokens",
    "output_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
    "image_output_tokens",
    "billing_mode",
    "unit_count",
    "rate_multiplier",
    "account_rate_multiplier",
    "rate_source",
    "ttl_override",
    "size_tier",
)


def usage_totals_from_ledger(*, filters: UsageFilters) -> UsageTotals:
    sums = (
        usage_logs(filters=filters)
        .order_by()
        .aggregate(requests=Count("id"), **{name: Sum(name) for name in _TOKEN_SUMS})
    )
    return _totals(sums)


def usage_totals_from_rollups(*, filters: UsageFilters) -> UsageTotals:
    sums = usage_rollups(filters=filters).aggregate(
        requests=Sum("requests"), **{name: Sum(name) for name in _TOKEN_SUMS}
    )
    return _totals(sums)


def _totals(sums: dict) -> UsageTotals:
    return UsageTotals(
        requests=sums["requests"] or 0,
        input_tokens=sums["input_tokens"] or 0,
        output_tokens=sums["output_tokens"] or 0,
        cache_creation_tokens=(sums["cache_creation_5m_tokens"] or 0)
        + (sums["cache_creation_1h_tokens"] or 0),
        cache_read_tokens=sums["cache_read_tokens"] or 0,
        image_output_tokens=sums["image_output_tokens"] or 0,
        # SQLite sums decimals as floats; quantising keeps the embedded default's totals readable.
        total_cost=quantize_usd(Decimal(sums["total_cost"] or 0)),
        actual_cost=quantize_usd(Decimal(sums["actual_cost"] or 0)),
    )


CSV_COLUMNS: list[tuple[str, str]] = [
    # (header, value path)
    ("created_at", "created_at"),
    ("request_id", "request_id"),
    ("user_email", "user__email"),
    ("api_key_id", "api_key_id"),
    ("api_key_name", "api_key__name"),
    ("account", "account__name"),
    ("group", "group__name"),
    ("requested_model", "requested_model"),
    ("upstream_model", "upstream_model"),
    ("billing_model", "billing_model"),
    ("billing_mode", "billing_mode"),
    ("pricing_source", "pricing_source"),
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_creation_5m_tokens", "cache_creation_5m_tokens"),
    ("cache_creation_1h_tokens", "cache_creation_1h_tokens"),
    ("cache_read_tokens", "cache_read_tokens"),
    ("image_output_tokens", "image_output_tokens"),
    ("unit_count", "unit_count"),
    ("input_cost", "input_cost"),
    ("output_cost", "output_cost"),
    ("image_output_cost", "image_output_cost"),
    ("cache_creation_cost", "cache_creation_cost"),
    ("cache_read_cost", "cache_read_cost"),
    ("unit_cost", "unit_cost"),
    ("total_cost", "total_cost"),
    ("rate_multiplier", "rate_multiplier"),
    ("actual_cost", "actual_cost"),
    ("account_cost", "account_cost"),
    ("status_code", "status_code"),
    ("stream", "stream"),
    ("duration_ms", "duration_ms"),
    ("first_token_ms", "first_token_ms"),
    ("cache_ttl_overridden", "cache_ttl_overridden"),
    ("client_ip", "client_ip"),
    ("user_agent", "user_agent"),
]


def usage_csv_rows(logs: QuerySet[UsageLog], *, chunk_size: int = 2000) -> Iterator[tuple]:
    """The filtered rows as tuples in CSV_COLUMNS order, fetched chunk by chunk.

    On PostgreSQL .iterator() reads through a server-side cursor, so a million rows stream
    through a few thousand at a time instead of being loaded at once.
    """
    paths = [path for _, path in CSV_COLUMNS]
    return logs.values_list(*paths).iterator(chunk_size=chunk_size)


def unpriced_models_seen(*, days: int = 7, now: datetime | None = None) -> list[UnpricedModel]:
    """Models recorded with pricing_source=missing in the last `days` days, most requests first.

    The dashboard lists them as a warning: every such request was billed $0.
    """
    since = (now or timezone.now()) - timedelta(days=days)
    rows = (
        UsageLog.objects.filter(pricing_source=PricingSource.MISSING, created_at__gte=since)
        .values("billing_model")
        .annotate(requests=Count("id"), last_seen=Max("created_at"))
        .order_by("-requests", "billing_model")
    )
    return [UnpricedModel(row["billing_model"], row["requests"], row["last_seen"]) for row in rows]


def usage_models_seen(*, days: int = 30, now: datetime | None = None, limit: int = 200) -> list[str]:
    """Model names (requested, upstream and billing) used recently, for the filter's suggestions.

    Read from the hourly rollups, which hold far fewer rows than the ledger.
    """
    since = (now or timezone.now()) - timedelta(days=days)
    triples = (
        UsageRollup.objects.filter(hour__gte=since)
        .order_by()
        .values_list("requested_model", "upstream_model", "billing_model")
        .distinct()
    )
    names = {name for triple in triples for name in triple if name}
    return sorted(names)[:limit]


# -- the price preview (docs/pricing.md#price-preview) ----------------------------------------------

PREVIEW_DAYS = 30
PREVIEW_CHUNK_ROWS = 2000
PREVIEW_TOP_ROWS = 10
PREVIEW_TOP_USERS = 20
PREVIEW_PRICED_KEPT = 10_000  # distinct inputs remembered at once (repeats are common in unit modes)
# The row's columns the preview reads, then three keys of its stored breakdown: nothing else.
_PREVIEW_COLUMNS = (
    "pk",
    "user_id",
    "group_id",
    "billing_model",
    "input_tokens",
    "output_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
    "image_output_tokens",
    "billing_mode",
    "unit_count",
    "rate_multiplier",
    "account_rate_multiplier",
    "actual_cost",
)


@dataclass(frozen=True)
class PreviewLine:
    """One model's or one user's requests: charged as recorded, and under the edited cards."""

    label: str
    requests: int
    old_cost: Decimal
    new_cost: Decimal

    @property
    def difference(self) -> Decimal:
        return self.new_cost - self.old_cost


@dataclass(frozen=True)
class PreviewRow:
    """A ledger row whose charge changes, with the sentence it was billed with and the new one."""

    usage_log_id: int
    created_at: datetime
    user_email: str
    model: str
    old_cost: Decimal
    new_cost: Decimal
    old_sentence: str
    new_sentence: str

    @property
    def difference(self) -> Decimal:
        return self.new_cost - self.old_cost


@dataclass(frozen=True)
class PricePreview:
    since: datetime
    until: datetime
    requests: int
    changed_requests: int
    old_total: Decimal
    new_total: Decimal
    by_model: list[PreviewLine]
    by_user: list[PreviewLine]  # the PREVIEW_TOP_USERS that change most
    users: int  # every user with requests in the period
    top_rows: list[PreviewRow]

    @property
    def difference(self) -> Decimal:
        return self.new_total - self.old_total


class _Tally:
    __slots__ = ("new", "old", "requests")

    def __init__(self) -> None:
        self.requests, self.old, self.new = 0, ZERO, ZERO

    def add(self, old: Decimal, new: Decimal) -> None:
        self.requests += 1
        self.old += old
        self.new += new

    def line(self, label: str) -> PreviewLine:
        return PreviewLine(label, self.requests, self.old, self.new)


def _by_change(line: PreviewLine) -> tuple:
    return (-abs(line.difference), -line.old_cost, line.label)


def _preview_usage(values: dict) -> Usage:
    """The row's counts as it was billed (cache writes already in the bucket they were billed in)."""
    units, mode = values["unit_count"], values["billing_mode"]
    return Usage(
        input_tokens=values["input_tokens"],
        output_tokens=values["output_tokens"],
        cache_creation_5m_tokens=values["cache_creation_5m_tokens"],
        cache_creation_1h_tokens=values["cache_creation_1h_tokens"],
        cache_read_tokens=values["cache_read_tokens"],
        image_output_tokens=values["image_output_tokens"],
        request_count=units if mode == BillingMode.PER_REQUEST and units else 1,
        image_count=units if mode == BillingMode.IMAGE else 0,
        image_size_tier=values["size_tier"] or None,
    )


def channel_price_preview(
    *,
    group_ids: Sequence[int],
    cards: Mapping[str, tuple[ChannelCard, ...]],
    now: datetime | None = None,
    days: int = PREVIEW_DAYS,
) -> PricePreview:
    """What the last `days` of the groups' ledger rows would have been charged under `cards`
    ({platform: cards in order}, as a channel snapshot holds them), next to what they were.

    Each row keeps its billing model, counts, rate multipliers and cache TTL override as
    recorded; only the price changes, found by the lookup billing uses (`price_lookup`) and costed
    by `compute_cost` (once per distinct set of inputs: rows that repeat one price the same). The
    ledger is read in chunks through a cursor, keeping only sums per model and per user, the
    PREVIEW_TOP_ROWS rows that change most and at most PREVIEW_PRICED_KEPT priced inputs, so
    memory does not grow with the row count. Nothing is written.
    """
    until = now or timezone.now()
    since = until - timedelta(days=days)
    platforms = dict(Group.objects.filter(pk__in=list(group_ids)).values_list("pk", "platform"))
    rows = (
        UsageLog.objects.filter(group_id__in=list(platforms), created_at__gte=since, created_at__lt=until)
        .order_by()
        .values(
            *_PREVIEW_COLUMNS,
            rate_source=KT("breakdown__rate_multiplier_source"),
            ttl_override=KT("breakdown__cache_ttl_override"),
            size_tier=KT("breakdown__size_tier"),
        )
    )
    matches: dict[tuple[str, str], PriceMatch] = {}
    models: dict[str, _Tally] = {}
    users: dict[int, _Tally] = {}
    total = _Tally()
    changed = 0
    top: list[tuple[Decimal, int, str, dict]] = []  # a min-heap of the largest changes
    priced: dict[tuple, Decimal] = {}  # rows with the same inputs price the same: once
    for values in rows.iterator(chunk_size=PREVIEW_CHUNK_ROWS):
        model, platform = values["billing_model"], platforms[values["group_id"]]
        inputs = (platform, *(values[name] for name in _PRICED_BY))
        new = priced.get(inputs)
        if new is None:
            new = _preview_cost(values, platform, cards, matches).actual_cost
            if len(priced) >= PREVIEW_PRICED_KEPT:
                priced.clear()
            priced[inputs] = new
        old = values["actual_cost"]
        total.add(old, new)
        models.setdefault(model, _Tally()).add(old, new)
        users.setdefault(values["user_id"], _Tally()).add(old, new)
        change = abs(new - old)
        if change:
            changed += 1
            entry = (change, -values["pk"], platform, values)
            if len(top) < PREVIEW_TOP_ROWS:
                heapq.heappush(top, entry)
            elif entry[:2] > top[0][:2]:
                heapq.heapreplace(top, entry)

    emails = dict(User.objects.filter(pk__in=list(users)).values_list("pk", "email"))
    by_user = sorted(
        (tally.line(emails.get(pk, f"user {pk}")) for pk, tally in users.items()), key=_by_change
    )
    return PricePreview(
        since=since,
        until=until,
        requests=total.requests,
        changed_requests=changed,
        old_total=total.old,
        new_total=total.new,
        by_model=sorted((tally.line(model) for model, tally in models.items()), key=_by_change),
        by_user=by_user[:PREVIEW_TOP_USERS],
        users=len(by_user),
        top_rows=_preview_rows(sorted(top, key=lambda entry: entry[:2], reverse=True), cards, emails),
    )


def _preview_cost(
    values: dict, platform: str, cards: Mapping[str, tuple[ChannelCard, ...]], matches: dict
) -> CostBreakdown:
    """One row priced as billing prices a request: the channel's lookup rule, then compute_cost."""
    model = values["billing_model"]
    match = matches.get((platform, model))
    if match is None:
        match = matches[(platform, model)] = price_lookup(cards=cards.get(platform, ()), model=model)
    return compute_cost(
        price=match.price,
        usage=_preview_usage(values),
        pricing_source=match.source,
        rate_multiplier=values["rate_multiplier"],
        rate_multiplier_source=values["rate_source"] or "group",
        account_rate_multiplier=values["account_rate_multiplier"],
        cache_ttl_override=values["ttl_override"] or None,
        billing_model=model,
    )


def _preview_rows(
    top: list[tuple[Decimal, int, str, dict]],
    cards: Mapping[str, tuple[ChannelCard, ...]],
    emails: dict[int, str],
) -> list[PreviewRow]:
    logs = UsageLog.objects.in_bulk([-entry[1] for entry in top])
    matches: dict[tuple[str, str], PriceMatch] = {}
    rows = []
    for _, pk, platform, values in top:
        log = logs[-pk]
        new = _preview_cost(values, platform, cards, matches)
        rows.append(
            PreviewRow(
                usage_log_id=log.pk,
                created_at=log.created_at,
                user_email=emails.get(log.user_id, f"user {log.user_id}"),
                model=log.billing_model,
                old_cost=log.actual_cost,
                new_cost=new.actual_cost,
                old_sentence=log.explain(),
                new_sentence=new.explain(),
            )
        )
    return rows
