"""Reads for a user's usage breakdown (docs/console.md#user-usage-breakdown): by group, model and key.

Read from the hourly rollups through their (user_id, hour) index: three aggregate queries and
two for the names, however many rows the user has.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import F, Sum
from django.utils import timezone

from accounts.models import APIKey, Group
from billing.models import UsageRollup
from billing.selectors import period_range
from common.money import quantize_usd
from console.dashboard import MODEL_SOURCES, InvalidChoice

# Sort keys shared by the three tables; "-" first means descending.
SORTS = ("name", "requests", "tokens", "charged", "account_cost")
DEFAULT_SORT = "-charged"
DIMENSIONS = ("group", "model", "key")


def valid_sort(value: str | None) -> str:
    if not value:
        return DEFAULT_SORT
    if value.removeprefix("-") not in SORTS:
        raise InvalidChoice(f"sort must be one of {', '.join(SORTS)}, optionally with a leading -")
    return value


@dataclass(frozen=True, slots=True)
class BreakdownRow:
    dimension: str  # group, model or key
    id: int | None  # the group's or key's id; None for a model
    label: str
    detail: str  # a key's masked secret; empty otherwise
    requests: int
    input_tokens: int
    output_tokens: int
    cache_tokens: int
    actual_cost: Decimal
    account_cost: Decimal

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_tokens

    def sort_value(self, key: str):
        return {
            "name": self.label.lower(),
            "requests": self.requests,
            "tokens": self.total_tokens,
            "charged": self.actual_cost,
            "account_cost": self.account_cost,
        }[key]


@dataclass(frozen=True, slots=True)
class Breakdown:
    groups: list[BreakdownRow]
    models: list[BreakdownRow]
    keys: list[BreakdownRow]

    @property
    def requests(self) -> int:
        return sum(row.requests for row in self.groups)

    @property
    def actual_cost(self) -> Decimal:
        return sum((row.actual_cost for row in self.groups), Decimal(0))

    @property
    def account_cost(self) -> Decimal:
        return sum((row.account_cost for row in self.groups), Decimal(0))

    @property
    def total_tokens(self) -> int:
        return sum(row.total_tokens for row in self.groups)

    def rows(self):
        yield from self.groups
        yield from self.models
        yield from self.keys


_SUMS = {
    "n": Sum("requests"),
    "input": Sum("input_tokens"),
    "output": Sum("output_tokens"),
    "cached": Sum(F("cache_creation_5m_tokens") + F("cache_creation_1h_tokens") + F("cache_read_tokens")),
    "actual": Sum("actual_cost"),
    "account": Sum("account_cost"),
}


def _row(dimension: str, id_: int | None, label: str, detail: str, sums: dict) -> BreakdownRow:
    return BreakdownRow(
        dimension=dimension,
        id=id_,
        label=label,
        detail=detail,
        requests=sums["n"],
        input_tokens=sums["input"],
        output_tokens=sums["output"],
        cache_tokens=sums["cached"],
        actual_cost=quantize_usd(sums["actual"]),
        account_cost=quantize_usd(sums["account"]),
    )


def _sorted(rows: list[BreakdownRow], sort: str) -> list[BreakdownRow]:
    key = sort.removeprefix("-")
    # Ties keep a stable order: by name, whichever way the column sorts.
    rows = sorted(rows, key=lambda row: row.label.lower())
    return sorted(rows, key=lambda row: row.sort_value(key), reverse=sort.startswith("-"))


def user_breakdown(
    *,
    user_id: int,
    period: str,
    source: str = "requested",
    sort: str = DEFAULT_SORT,
    now: datetime | None = None,
) -> Breakdown:
    """One user's usage in `period` by group, by model (named by `source`) and by key."""
    if source not in MODEL_SOURCES:
        raise InvalidChoice(f"model source must be one of {', '.join(MODEL_SOURCES)}")
    start, _ = period_range(period, now=now or timezone.now())
    rollups = UsageRollup.objects.filter(user_id=user_id, hour__gte=start).order_by()
    by_group = list(rollups.values("group_id").annotate(**_SUMS))
    by_key = list(rollups.values("api_key_id").annotate(**_SUMS))
    columns = MODEL_SOURCES[source]
    by_model = list(rollups.values(*columns).annotate(**_SUMS))
    group_names = dict(
        Group.objects.filter(pk__in=[row["group_id"] for row in by_group if row["group_id"]]).values_list(
            "id", "name"
        )
    )
    keys = {
        key.pk: key
        for key in APIKey.objects.filter(pk__in=[row["api_key_id"] for row in by_key]).only(
            "id", "name", "key_prefix", "key_last4"
        )
    }
    groups = [
        _row(
            "group",
            row["group_id"] or None,
            group_names.get(row["group_id"], f"group #{row['group_id']} (deleted)")
            if row["group_id"]
            else "No group",
            "",
            row,
        )
        for row in by_group
    ]
    key_rows = []
    for row in by_key:
        key = keys.get(row["api_key_id"])
        if key:
            key_rows.append(_row("key", key.pk, key.name, key.masked, row))
        else:
            key_rows.append(_row("key", None, f"key #{row['api_key_id']} (deleted)", "", row))
    models = []
    for row in by_model:
        requested, upstream = row.get("requested_model", ""), row.get("upstream_model", "") or "(none)"
        label = {"requested": requested, "upstream": upstream}.get(source, f"{requested} → {upstream}")
        models.append(_row("model", None, label, "", row))
    return Breakdown(groups=_sorted(groups, sort), models=_sorted(models, sort), keys=_sorted(key_rows, sort))


def breakdown_csv_rows(breakdown: Breakdown):
    for row in breakdown.rows():
        yield (
            row.dimension,
            row.label,
            row.detail,
            row.requests,
            row.input_tokens,
            row.output_tokens,
            row.cache_tokens,
            row.actual_cost,
            row.account_cost,
        )


BREAKDOWN_CSV_HEADER = [
    "dimension",
    "name",
    "key",
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_tokens",
    "charged_usd",
    "account_cost_usd",
]
