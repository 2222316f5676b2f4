"""Recording usage (docs/recording.md): price a request once, write it to the ledger once, charge it once."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache, partial
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import orjson
from django.db import connection, models, transaction
from django.db.models import Field
from django.utils import timezone
from psycopg.types.json import Jsonb

from accounts.models import APIKey, Subscription, UpstreamAccount, User
from accounts.services.keys import KeyChargeResult, api_key_usage_charge, api_key_usage_charge_statement
from accounts.services.subscriptions import subscription_usage_charge, subscription_usage_charge_statement
from accounts.services.upstream import upstream_account_quota_charge, upstream_account_quota_charge_statement
from accounts.services.users import user_balance_charge, user_balance_charge_statement
from accounts.snapshots import AccountQuota
from billing.cost import CostBreakdown, Usage
from billing.holds import TakenHolds, holds_lower, holds_lower_statement, pending_settle, pending_take_many
from billing.models import BREAKDOWN_COLUMNS, RequestOutcome, UsageLog, UsageRollup, UsageSource
from billing.pricing import BillingContext, billing_context, price_request
from billing.rollup_epoch import BACKFILL_AFTER, rollup_epoch_bump
from common.money import quantize_usd
from common.prepared import prepared_cursor
from common.statements import BuiltStatement, run_at_once

ZERO = Decimal(0)

# A ledger row's values by UsageLog attname, as _priced_row builds them, before any preparation.
LedgerRow = dict[str, Any]


@dataclass(frozen=True)
class UsageRecordResult:
    """What usage_record did. A duplicate charged nothing and carries the original row's id."""

    usage_log_id: int | None
    duplicate: bool
    breakdown: CostBreakdown  # as this call priced it (a duplicate's original row keeps its own)
    charged_usd: Decimal  # actual_cost taken from the balance or the subscription
    charged_to: str  # "balance", "subscription", or "" when nothing was charged
    account_charged_usd: Decimal
    key_became_exhausted: bool = False
    key_status: str = ""
    # Each counter as this recording's charge left it (None: not charged), from the UPDATEs'
    # RETURNING: what the gateway refreshes its cached snapshots with.
    key_charge: KeyChargeResult | None = None
    balance_usd: Decimal | None = None
    subscription_windows: dict[str, Any] | None = None
    account_quota: AccountQuota | None = None


def usage_record(
    *,
    request_id: str,
    api_key_id: int,
    account_id: int | None,
    requested_model: str,
    usage: Usage,
    mapped_model: str = "",
    upstream_model: str = "",
    context: BillingContext | None = None,
    stream: bool = False,
    duration_ms: int = 0,
    first_token_ms: int | None = None,
    status_code: int = 200,
    client_ip: str | None = None,
    user_agent: str = "",
    created_at: datetime | None = None,
    outcome: str = RequestOutcome.COMPLETED,
    usage_source: str = UsageSource.REPORTED,
) -> UsageRecordResult:
    """Price one finished request and record it, in one transaction (docs/pricing.md,
    docs/recording.md#one-transaction).

    `mapped_model` is the name after the channel's mapping and `upstream_model` what was sent
    upstream; either may be empty when no mapping applied. `outcome` says how the request ended
    and `usage_source` where its counts came from (the gateway's stream accounting); both are
    stored on the row, and the source in its breakdown too. `context` is the gateway's cached
    BillingContext for (key, account); without it, it is loaded here.

    A second call with the same (request_id, key) changes nothing and returns duplicate=True.
    Counters move in one fixed order (key, rollup, balance or subscription, account), so
    concurrent recordings queue on row locks and never deadlock one another. With the context's
    counter configuration that is one statement per row and no reads: BEGIN, the ledger row, key,
    rollup, balance or subscription, account, COMMIT (on PostgreSQL; see tests/billing/test_record.py),
    plus one statement settling the request's pending record and holds (billing.holds.pending_settle).
    """
    now = created_at or timezone.now()
    context, breakdown, row = _priced_row(
        request_id=request_id,
        api_key_id=api_key_id,
        account_id=account_id,
        requested_model=requested_model,
        usage=usage,
        mapped_model=mapped_model,
        upstream_model=upstream_model,
        context=context,
        stream=stream,
        duration_ms=duration_ms,
        first_token_ms=first_token_ms,
        status_code=status_code,
        client_ip=client_ip,
        user_agent=user_agent,
        created_at=now,
        outcome=outcome,
        usage_source=usage_source,
    )

    with transaction.atomic():
        row_id = _insert_once(row)
        if row_id is None:
            original = UsageLog.objects.filter(request_id=request_id, api_key_id=api_key_id)
            return UsageRecordResult(
                usage_log_id=original.values_list("pk", flat=True).first(),
                duplicate=True,
                breakdown=breakdown,
                charged_usd=ZERO,
                charged_to="",
                account_charged_usd=ZERO,
            )
        # The request's holds end with its charge, in this transaction (docs/gateway.md#holds-and-settle).
        pending_settle(request_id=request_id, api_key_id=api_key_id)
        # Rows are locked from their UPDATE to the commit, so the most widely shared row goes
        # last: a key is one client's, its rollup row the key's, a balance or subscription the
        # user's (all their keys), and an account serves every key of its groups.
        charged_to, key_result, balance, subscription_windows, account_quota = "", None, None, None, None
        amount = breakdown.actual_cost
        if amount > 0:
            key_result = api_key_usage_charge(
                key_id=api_key_id, amount_usd=amount, now=now, timezone=context.key_timezone
            )
        _rollup_add(row)
        if now < timezone.now() - BACKFILL_AFTER:  # into a closed hour: cached sums are stale
            transaction.on_commit(rollup_epoch_bump)
        if amount > 0:
            if context.charges_subscription:
                subscription_windows = subscription_usage_charge(
                    subscription_id=context.subscription_id,
                    amount_usd=amount,
                    now=now,
                    starts_at=context.subscription_starts_at,
                    timezone=context.subscription_timezone,
                )
                charged_to = "subscription"
            else:
                balance = user_balance_charge(user_id=context.user_id, amount_usd=amount)
                charged_to = "balance"
        if account_id is not None and breakdown.account_cost > 0:
            account_quota = upstream_account_quota_charge(
                account_id=account_id,
                amount_usd=breakdown.account_cost,
                now=now,
                rules=context.account_quota,
            )

    return UsageRecordResult(
        usage_log_id=row_id,
        duplicate=False,
        breakdown=breakdown,
        charged_usd=amount if charged_to else ZERO,
        charged_to=charged_to,
        account_charged_usd=breakdown.account_cost if account_id is not None else ZERO,
        key_became_exhausted=bool(key_result and key_result.became_exhausted),
        key_status=str(key_result.status) if key_result else "",
        key_charge=key_result,
        balance_usd=balance,
        subscription_windows=subscription_windows,
        account_quota=account_quota,
    )


def _priced_row(
    *,
    request_id: str,
    api_key_id: int,
    account_id: int | None,
    requested_model: str,
    usage: Usage,
    mapped_model: str,
    upstream_model: str,
    context: BillingContext | None,
    stream: bool,
    duration_ms: int,
    first_token_ms: int | None,
    status_code: int,
    client_ip: str | None,
    user_agent: str,
    created_at: datetime,
    outcome: str,
    usage_source: str,
) -> tuple[BillingContext, CostBreakdown, LedgerRow]:
    """Price one request (docs/pricing.md) and build its ledger row's values. No query when
    `context` is given."""
    now = created_at
    if context is None:
        context = billing_context(api_key_id=api_key_id, account_id=account_id)
    elif (context.api_key_id, context.account_id) != (api_key_id, account_id):
        raise ValueError("the BillingContext belongs to another key or account")
    resolution, breakdown = price_request(
        context=context,
        usage=usage,
        requested_model=requested_model,
        mapped_model=mapped_model,
        upstream_model=upstream_model,
    )
    extra = breakdown_extra(breakdown)
    extra["usage_source"] = str(usage_source)
    # A dict, not a UsageLog: the row is only ever read back field by field, and building a model
    # instance (Model.__init__) was a tenth of the recorder thread's time per row.
    row = {
        "request_id": request_id,
        "user_id": context.user_id,
        "api_key_id": api_key_id,
        "account_id": account_id,
        "group_id": context.group_id,
        "channel_id": resolution.channel_id,
        "subscription_id": context.subscription_id if context.charges_subscription else None,
        "requested_model": requested_model,
        "upstream_model": upstream_model or mapped_model or requested_model,
        "billing_model_source": context.billing_model_source,
        "breakdown": extra,
        "outcome": outcome,
        "usage_source": usage_source,
        "stream": stream,
        "duration_ms": duration_ms,
        "first_token_ms": first_token_ms,
        "status_code": status_code,
        "client_ip": client_ip or None,
        "user_agent": user_agent[:512],
        "cache_ttl_overridden": breakdown.cache_ttl_overridden,
        "created_at": now,
    }
    for name in BREAKDOWN_COLUMNS:
        row[name] = getattr(breakdown, name)
    return context, breakdown, row


def breakdown_extra(breakdown: CostBreakdown) -> dict:
    """The breakdown fields a UsageLog does not keep as columns (see UsageLog.cost_breakdown)."""
    return breakdown.as_dict(leave_out=_KEPT_AS_COLUMNS)


# cache_ttl_overridden is derived, and a column of its own.
_KEPT_AS_COLUMNS = frozenset({*BREAKDOWN_COLUMNS, "cache_ttl_overridden"})


# -- SQL ----------------------------------------------------------------------------------------
# Both statements are plain INSERT … ON CONFLICT, which PostgreSQL and SQLite (the embedded
# default) share, so the demo data of `make run` goes through exactly the production path.
# (A batch's multi-row statements differ only in where their rows come from: see _rows_source.)

_LOG_FIELDS = [field for field in UsageLog._meta.concrete_fields if not field.primary_key]

# Why values skip get_db_prep_save: its calls, 42 values a row, were most of the recorder's time
# building a batch, and on PostgreSQL (Django 6.1) a str, bool, auto id, finite Decimal or aware
# datetime comes back unchanged. Anything else is prepared: JSON (Jsonb), IPs (Inet), integer
# fields (psycopg's Int2/Int4), every value on SQLite; except in a batch's JSON rows (json_as_is).


def _str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)  # CharField.to_python's own test


def _bool_or_none(value: Any) -> bool:
    return value is None or type(value) is bool


def _int_or_none(value: Any) -> bool:
    return value is None or type(value) is int  # not a bool: int(True) is 1


def _finite_decimal_or_none(value: Any) -> bool:
    return value is None or (type(value) is Decimal and value.is_finite())  # to_python refuses NaN


def _aware_datetime_or_none(value: Any) -> bool:
    return value is None or (type(value) is datetime and value.utcoffset() is not None)  # naive: made aware


_PREPARED_AS_IS_ON_POSTGRESQL: dict[type[Field], Callable[[Any], bool]] = {
    models.CharField: _str_or_none,
    models.BooleanField: _bool_or_none,
    models.DecimalField: _finite_decimal_or_none,
    models.DateTimeField: _aware_datetime_or_none,
}


@cache  # asked once per field, not per row (the rollup's hour and money come here per row)
def prepared_as_is(field: Field, vendor: str) -> Callable[[Any], bool] | None:
    """Which values `field`'s get_db_prep_save returns unchanged on `vendor`; None: assume none does."""
    if vendor != "postgresql":
        return None
    if type(field) is models.ForeignKey:  # prepared as its target: int(value), for an auto id
        return _int_or_none if type(field.target_field) in (models.AutoField, models.BigAutoField) else None
    return _PREPARED_AS_IS_ON_POSTGRESQL.get(type(field))


def _prepared(field: Field, value: Any, as_is: Callable[[Any], bool] | None) -> Any:
    """`value` as `field` prepares it for saving; `as_is` (from prepared_as_is) saves the work."""
    return value if as_is is not None and as_is(value) else field.get_db_prep_save(value, connection)


# In a batch row on PostgreSQL (_rows_params) a prepared value counts only through its JSON text:
# an integer field's Int4(7) is written 7 like the int (orjson writes int subclasses itself), a
# JSON column's Jsonb its document and an address's IPv4Address its string (both by _json_value).
# So these values go as they are, with the same text, and skip the preparation: ten calls of
# get_db_prep_save a row, each looking up the connection, were the largest part of building a
# batch's JSON rows.
_CANONICAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


def _dict_or_none(value: Any) -> bool:
    return value is None or type(value) is dict  # Jsonb(value).obj is value itself


def _canonical_ipv4_or_none(value: Any) -> bool:
    # Exactly the text ip_address accepts and str() writes back (ASCII digits, no leading zero,
    # no space); anything else, an invalid address among it, is prepared and refused as before.
    return value is None or (type(value) is str and _CANONICAL_IPV4.fullmatch(value) is not None)


_JSON_AS_IS_ON_POSTGRESQL: dict[type[Field], Callable[[Any], bool]] = {
    models.IntegerField: _int_or_none,
    models.SmallIntegerField: _int_or_none,
    models.BigIntegerField: _int_or_none,
    models.PositiveIntegerField: _int_or_none,
    models.PositiveSmallIntegerField: _int_or_none,
    models.PositiveBigIntegerField: _int_or_none,
    models.JSONField: _dict_or_none,
    models.GenericIPAddressField: _canonical_ipv4_or_none,
}


@cache
def json_as_is(field: Field, vendor: str) -> Callable[[Any], bool] | None:
    """Which values of `field` a batch row's JSON text writes as their prepared value would be
    written; None: assume none."""
    if vendor != "postgresql":
        return None
    return prepared_as_is(field, vendor) or _JSON_AS_IS_ON_POSTGRESQL.get(type(field))


def _never(value: Any) -> bool:
    return False


@cache
def _log_fields(vendor: str, *, json: bool) -> tuple[tuple[str, Field, Callable[[Any], bool]], ...]:
    """The ledger's fields with the test of which values skip preparation: for the one-row INSERT's
    parameters, or (`json`) for a batch's JSON rows."""
    as_is = json_as_is if json else prepared_as_is
    return tuple((field.attname, field, as_is(field, vendor) or _never) for field in _LOG_FIELDS)


def _log_values(row: LedgerRow, fields: tuple[tuple[str, Field, Callable[[Any], bool]], ...]) -> list:
    """The ledger INSERT's values for one row, in _LOG_FIELDS order; `fields` from _log_fields."""
    values = []
    for name, field, as_is in fields:
        value = row[name]
        values.append(value if as_is(value) else field.get_db_prep_save(value, connection))
    return values


@cache
def _insert_sql(vendor: str) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in _LOG_FIELDS)
    # Only quoted model metadata goes into the string; every value is a parameter.
    return (
        f"INSERT INTO {quote(UsageLog._meta.db_table)} ({columns}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(_LOG_FIELDS))}) "
        f"ON CONFLICT ({quote('request_id')}, {quote('api_key_id')}) DO NOTHING RETURNING {quote('id')}"
    )


def _insert_once(row: LedgerRow) -> int | None:
    """Insert the ledger row unless (request_id, api_key) exists; its id, or None for a replay.

    ON CONFLICT DO NOTHING instead of catching IntegrityError: no savepoint round trips, and a
    replay racing the original waits for it to commit, then sees the conflict.
    """
    with connection.cursor() as cursor:
        vendor = connection.vendor
        cursor.execute(_insert_sql(vendor), _log_values(row, _log_fields(vendor, json=False)))
        found = cursor.fetchone()
    return found[0] if found else None


_ROLLUP_KEYS = UsageRollup.DIMENSIONS
_ROLLUP_SUMS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
    "image_output_tokens",
    "total_cost",
    "actual_cost",
    "account_cost",
)


@cache
def _rollup_sql(vendor: str) -> str:
    quote = connection.ops.quote_name
    table = quote(UsageRollup._meta.db_table)
    columns = ", ".join(quote(name) for name in (*_ROLLUP_KEYS, *_ROLLUP_SUMS))
    increments = ", ".join(
        f"{quote(name)} = {table}.{quote(name)} + excluded.{quote(name)}" for name in _ROLLUP_SUMS
    )
    conflict = ", ".join(quote(name) for name in _ROLLUP_KEYS)
    placeholders = ", ".join(["%s"] * (len(_ROLLUP_KEYS) + len(_ROLLUP_SUMS)))
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) "  # noqa: S608
        f"ON CONFLICT ({conflict}) DO UPDATE SET {increments}"
    )


def rollup_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


_HOUR = UsageRollup._meta.get_field("hour")
_MONEY = UsageRollup._meta.get_field("total_cost")  # the rollup's money fields are alike


def _rollup_values(row: LedgerRow, vendor: str) -> list:
    """The rollup upsert's parameters for one ledger row: dimensions, then sums (money last, as Decimals)."""
    return [
        _prepared(_HOUR, rollup_hour(row["created_at"]), prepared_as_is(_HOUR, vendor)),
        row["user_id"],
        row["api_key_id"],
        row["account_id"] or 0,
        row["group_id"] or 0,
        row["requested_model"],
        row["upstream_model"],
        row["billing_model"],
        row["pricing_source"],
        row["status_code"],
        1,
        row["input_tokens"],
        row["output_tokens"],
        row["cache_creation_5m_tokens"],
        row["cache_creation_1h_tokens"],
        row["cache_read_tokens"],
        row["image_output_tokens"],
        row["total_cost"],
        row["actual_cost"],
        row["account_cost"],
    ]


def usage_rollup_add(*, log: UsageLog) -> None:
    """Add one ledger row to its hourly rollup (insert, or increment the existing one).

    usage_record calls it in the ledger row's transaction; anything else that writes ledger
    rows (reconcile corrections, test factories) must call it in theirs.
    """
    _rollup_add({field.attname: getattr(log, field.attname) for field in _LOG_FIELDS})


def _rollup_add(row: LedgerRow) -> None:
    vendor = connection.vendor
    values = _rollup_values(row, vendor)
    as_is = prepared_as_is(_MONEY, vendor)
    values[-3:] = [_prepared(_MONEY, value, as_is) for value in values[-3:]]
    with connection.cursor() as cursor:
        cursor.execute(_rollup_sql(vendor), values)


# -- batches --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One finished request for usage_record_batch: usage_record's arguments, as a value.

    `pending_id` names the request's pending record (the hold taken before relaying); the batch
    finds and settles it by (request_id, api_key_id) in the same transaction.
    """

    request_id: str
    api_key_id: int
    account_id: int | None
    requested_model: str
    usage: Usage
    mapped_model: str = ""
    upstream_model: str = ""
    context: BillingContext | None = None
    stream: bool = False
    duration_ms: int = 0
    first_token_ms: int | None = None
    status_code: int = 200
    client_ip: str | None = None
    user_agent: str = ""
    created_at: datetime | None = None
    outcome: str = RequestOutcome.COMPLETED
    usage_source: str = UsageSource.REPORTED
    pending_id: int | None = None


@dataclass(slots=True)
class _Priced:
    record: BatchRecord
    context: BillingContext
    breakdown: CostBreakdown
    row: LedgerRow
    row_id: int | None = None  # set when this call inserted the row
    duplicate_of: int | None = None  # index of an earlier record of the batch with the same ids


BATCH_MAX = 100  # records per transaction: the ledger INSERT carries ~45 parameters per row


def usage_record_batch(records: list[BatchRecord]) -> list[UsageRecordResult]:
    """Record several finished requests in ONE transaction; a result per record, in order
    (docs/recording.md#batches).

    The same rows and counters as calling usage_record for each record in order, with fewer
    statements: one multi-row ledger INSERT … ON CONFLICT (request_id, key) DO NOTHING RETURNING,
    then, over the rows it actually inserted, ONE conditional UPDATE per distinct key, balance,
    subscription and account with the sum of their charges, and one multi-row rollup upsert.
    Replays (ids already in the ledger, or twice in the batch) charge nothing and come back
    duplicate=True with the original row's id. Rows are locked in the order usage_record locks
    them (keys, rollups, balances, subscriptions, accounts), each class in ascending id order, so
    batches and single recordings queue on one another and never deadlock.

    Windows are charged at the batch's latest `created_at`: a window that ends between two
    records of one batch (a few milliseconds apart) takes both charges in the new window.
    Each record's counter results (key_charge, balance_usd, …) are the counters as the whole
    batch left them; key_became_exhausted is set on the last record of the key that crossed.
    """
    if len(records) > BATCH_MAX:
        raise ValueError(f"a batch holds at most {BATCH_MAX} records, not {len(records)}")
    if not records:
        return []
    now = timezone.now()
    priced: list[_Priced] = []
    first_of: dict[tuple[str, int], int] = {}
    for index, record in enumerate(records):
        context, breakdown, row = _priced_row(
            request_id=record.request_id,
            api_key_id=record.api_key_id,
            account_id=record.account_id,
            requested_model=record.requested_model,
            usage=record.usage,
            mapped_model=record.mapped_model,
            upstream_model=record.upstream_model,
            context=record.context,
            stream=record.stream,
            duration_ms=record.duration_ms,
            first_token_ms=record.first_token_ms,
            status_code=record.status_code,
            client_ip=record.client_ip,
            user_agent=record.user_agent,
            created_at=record.created_at or now,
            outcome=record.outcome,
            usage_source=record.usage_source,
        )
        item = _Priced(record=record, context=context, breakdown=breakdown, row=row)
        ids = (record.request_id, record.api_key_id)
        item.duplicate_of = first_of.get(ids)
        first_of.setdefault(ids, index)
        priced.append(item)

    with transaction.atomic():
        fresh = [item for item in priced if item.duplicate_of is None]
        # Ledger rows in a fixed order too: a batch waits on another's uncommitted row with the
        # same ids (then skips it), and two batches must not wait on each other.
        fresh.sort(key=lambda item: (item.record.api_key_id, item.record.request_id))
        inserted = _insert_many([item.row for item in fresh])
        for item in fresh:
            item.row_id = inserted.get((item.record.request_id, item.record.api_key_id))
        # The requests' holds end with their charges (docs/gateway.md#holds-and-settle): one
        # statement deletes the batch's pending records (a replay's too, if one is left), and
        # each held row is lowered inside the UPDATE that charges it.
        taken = pending_take_many(
            sorted({(item.record.request_id, item.record.api_key_id) for item in priced})
        )
        charged = [item for item in priced if item.row_id is not None]
        # Read before the first counter UPDATE: from then on the key's row is locked (every hold
        # on it waits) until COMMIT, so nothing else runs in between.
        originals = _original_ids([item for item in priced if item.row_id is None])
        counters = _charge_counters(charged, taken)

    return [_batch_result(item, priced, counters, originals) for item in priced]


@dataclass(slots=True)
class _Counters:
    keys: dict[int, KeyChargeResult]
    balances: dict[int, Decimal | None]
    subscriptions: dict[int, dict[str, Any]]
    accounts: dict[int, AccountQuota]
    last_of_key: dict[int, int]  # key id -> id() of the last record charged to it


def _charge_counters(charged: list[_Priced], taken: TakenHolds) -> _Counters:
    """One UPDATE per distinct counted row with the summed charges of `charged` and the summed
    holds of `taken` to lower, in lock order. A held row with nothing to charge is only lowered."""
    key_sums: dict[int, tuple[Decimal, _Priced]] = {}
    balance_sums: dict[int, Decimal] = {}
    subscription_sums: dict[int, tuple[Decimal, _Priced]] = {}
    account_sums: dict[int, tuple[Decimal, _Priced]] = {}
    for item in charged:
        amount = item.breakdown.actual_cost
        context = item.context
        if amount > 0:
            key_id = item.record.api_key_id
            key_sums[key_id] = (key_sums.get(key_id, (ZERO, item))[0] + quantize_usd(amount), item)
            if context.charges_subscription:
                sub = context.subscription_id
                subscription_sums[sub] = (
                    subscription_sums.get(sub, (ZERO, item))[0] + quantize_usd(amount),
                    item,
                )
            else:
                balance_sums[context.user_id] = balance_sums.get(context.user_id, ZERO) + quantize_usd(amount)
        account_id = item.record.account_id
        if account_id is not None and item.breakdown.account_cost > 0:
            account_sums[account_id] = (
                account_sums.get(account_id, (ZERO, item))[0] + quantize_usd(item.breakdown.account_cost),
                item,
            )
    now = max(item.row["created_at"] for item in charged) if charged else timezone.now()
    counters = _Counters(keys={}, balances={}, subscriptions={}, accounts={}, last_of_key={})
    steps: list[_Step] = []
    for key_id in sorted(key_sums.keys() | taken.keys.keys()):
        release = taken.keys.get(key_id, ZERO)
        if key_id not in key_sums:
            steps.append(_lower(APIKey, key_id, release))
            continue
        amount, last = key_sums[key_id]
        charge = {
            "key_id": key_id,
            "amount_usd": amount,
            "now": now,
            "timezone": last.context.key_timezone,
            "release_usd": release,
        }
        steps.append(
            _charge_step(
                api_key_usage_charge,
                api_key_usage_charge_statement,
                partial(counters.keys.__setitem__, key_id),
                charge,
            )
        )
        counters.last_of_key[key_id] = id(last)
    rows = [item.row for item in charged]
    if rows:
        steps.append(_Step(partial(_rollup_add_many, rows), partial(_rollup_many_statement, rows), _ignore))
    for user_id in sorted(balance_sums.keys() | taken.balances.keys()):
        release = taken.balances.get(user_id, ZERO)
        if user_id not in balance_sums:
            steps.append(_lower(User, user_id, release))
            continue
        charge = {"user_id": user_id, "amount_usd": balance_sums[user_id], "release_usd": release}
        steps.append(
            _charge_step(
                user_balance_charge,
                user_balance_charge_statement,
                partial(counters.balances.__setitem__, user_id),
                charge,
            )
        )
    for subscription_id in sorted(subscription_sums.keys() | taken.subscriptions.keys()):
        release = taken.subscriptions.get(subscription_id, ZERO)
        if subscription_id not in subscription_sums:
            steps.append(_lower(Subscription, subscription_id, release))
            continue
        amount, last = subscription_sums[subscription_id]
        charge = {
            "subscription_id": subscription_id,
            "amount_usd": amount,
            "now": now,
            "starts_at": last.context.subscription_starts_at,
            "timezone": last.context.subscription_timezone,
            "release_usd": release,
        }
        steps.append(
            _charge_step(
                subscription_usage_charge,
                subscription_usage_charge_statement,
                partial(counters.subscriptions.__setitem__, subscription_id),
                charge,
            )
        )
    for account_id in sorted(account_sums.keys() | taken.accounts.keys()):
        release = taken.accounts.get(account_id, ZERO)
        if account_id not in account_sums:
            steps.append(_lower(UpstreamAccount, account_id, release))
            continue
        amount, last = account_sums[account_id]
        charge = {
            "account_id": account_id,
            "amount_usd": amount,
            "now": now,
            "rules": last.context.account_quota,
            "release_usd": release,
        }
        steps.append(
            _charge_step(
                upstream_account_quota_charge,
                upstream_account_quota_charge_statement,
                partial(counters.accounts.__setitem__, account_id),
                charge,
            )
        )
    if connection.vendor == "postgresql":
        # Every statement built first, then all sent at once with the COMMIT: PostgreSQL runs them
        # back to back in this order (the lock order), and the key row the first one locks is free
        # when the server has run the string, not a round trip per statement later, each also
        # waiting for this thread to get the GIL back (docs/recording.md#batches). Nothing of the
        # batch is written after this.
        statements = [step.prepare() for step in steps]
        for step, result in zip(steps, run_at_once(statements, commit=True), strict=True):
            step.keep(result)
    else:
        for step in steps:
            step.keep(step.single())
    return counters


@dataclass(frozen=True, slots=True)
class _Step:
    """One counter statement of a batch: run alone (`single`, any database), or built for
    run_at_once (`prepare`, PostgreSQL); `keep` stores what it answered."""

    single: Callable[[], Any]
    prepare: Callable[[], BuiltStatement]
    keep: Callable[[Any], None]


def _ignore(result: Any) -> None:
    return None


def _charge_step(
    single: Callable[..., Any],
    statement: Callable[..., BuiltStatement],
    keep: Callable[[Any], None],
    arguments: dict[str, Any],
) -> _Step:
    """A counter function and its statement builder, both with the same arguments."""
    return _Step(partial(single, **arguments), partial(statement, **arguments), keep)


def _lower(model: type, row_id: int, amount: Decimal) -> _Step:
    """A held row the batch settles without charging it: only its held amount goes down."""
    arguments = {"model": model, "row_id": row_id, "amount": amount}
    return _charge_step(holds_lower, holds_lower_statement, _ignore, arguments)


def _original_ids(replays: list[_Priced]) -> dict[tuple[str, int], int]:
    """The ledger ids of rows recorded before this batch, for its replays (one query, if any)."""
    wanted = {
        (item.record.request_id, item.record.api_key_id) for item in replays if item.duplicate_of is None
    }
    if not wanted:
        return {}
    found = UsageLog.objects.filter(
        api_key_id__in={key for _, key in wanted}, request_id__in={rid for rid, _ in wanted}
    ).values_list("request_id", "api_key_id", "pk")
    return {(rid, key): pk for rid, key, pk in found if (rid, key) in wanted}


def _batch_result(
    item: _Priced, priced: list[_Priced], counters: _Counters, originals: dict[tuple[str, int], int]
) -> UsageRecordResult:
    record, context, breakdown = item.record, item.context, item.breakdown
    if item.row_id is None:
        if item.duplicate_of is not None:
            first = priced[item.duplicate_of]
            original = first.row_id or originals.get((record.request_id, record.api_key_id))
        else:
            original = originals.get((record.request_id, record.api_key_id))
        return UsageRecordResult(
            usage_log_id=original,
            duplicate=True,
            breakdown=breakdown,
            charged_usd=ZERO,
            charged_to="",
            account_charged_usd=ZERO,
        )
    amount = breakdown.actual_cost
    charged_to = ""
    if amount > 0:
        charged_to = "subscription" if context.charges_subscription else "balance"
    key_result = counters.keys.get(record.api_key_id) if amount > 0 else None
    account_id = record.account_id
    return UsageRecordResult(
        usage_log_id=item.row_id,
        duplicate=False,
        breakdown=breakdown,
        charged_usd=amount if charged_to else ZERO,
        charged_to=charged_to,
        account_charged_usd=breakdown.account_cost if account_id is not None else ZERO,
        key_became_exhausted=bool(
            key_result
            and key_result.became_exhausted
            and counters.last_of_key.get(record.api_key_id) == id(item)
        ),
        key_status=str(key_result.status) if key_result else "",
        key_charge=key_result,
        balance_usd=counters.balances.get(context.user_id) if charged_to == "balance" else None,
        subscription_windows=(
            counters.subscriptions.get(context.subscription_id) if charged_to == "subscription" else None
        ),
        account_quota=counters.accounts.get(account_id) if account_id is not None else None,
    )


# -- multi-row statements -------------------------------------------------------------------------
# On PostgreSQL a batch's INSERTs take their rows from ONE jsonb parameter: the rows as JSON arrays,
# each element read back and cast to its column's type (docs/recording.md#batches). The statement
# has one placeholder whatever the batch size, and the client's work is one orjson call: psycopg
# binds client-side with a regex and a quote per value (a VALUES list of 64 ledger rows, 2,688
# parameters, was parsed and quoted on every batch), and an array per column cost a dumper per
# element (about 0.3 ms a ledger row and 1.3 ms a batch on the slow machine of 2026-12-03).
# jsonb_array_elements returns the rows in order and the INSERT takes them in that order, as it
# takes a VALUES list's rows: the lock order the callers sort their rows into still holds.
# SQLite keeps the VALUES list.


def _statement_rows(count: int) -> int | None:
    """How many rows a multi-row statement's text spells out; None when it takes arrays instead."""
    return None if connection.vendor == "postgresql" else count


def _rows_source(fields: list[Field], count: int | None) -> str:
    """Where a multi-row INSERT takes its rows from: `count` VALUES rows, or (None) the elements of
    one jsonb array of rows, each value cast to its column's type as the values were cast before
    (explicitly: a varchar(n) value is cut at n, as the column's own assignment would refuse)."""
    if count is None:
        values = ", ".join(_json_element(index, field) for index, field in enumerate(fields))
        return f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r"  # noqa: S608 (model metadata only)
    one = f"({', '.join(['%s'] * len(fields))})"
    return f"VALUES {', '.join([one] * count)}"


def _json_element(index: int, field: Field) -> str:
    if isinstance(field, models.JSONField):
        # A JSON column keeps the document; Python's None is SQL NULL, as Django saves it.
        return f"NULLIF(r->{index}, 'null'::jsonb)"
    return f"(r->>{index})::{field.db_type(connection)}"


def _rows_params(rows: list[list]) -> list:
    """_rows_source's parameters for rows of prepared values: the rows as one JSON text, or every
    value row after row."""
    if connection.vendor == "postgresql":
        return [orjson.dumps(rows, default=_json_value).decode()]
    return [value for row in rows for value in row]


def _json_value(value: Any) -> Any:
    """A prepared value orjson does not write itself, as its column's text: money exactly (a
    Decimal's digits, never a float), an address, a JSON column's document."""
    if type(value) is Decimal:
        if not value.is_finite():
            raise ValueError(f"{value} is not an amount of money")
        return str(value)
    if isinstance(value, IPv4Address | IPv6Address):
        return str(value)
    if isinstance(value, Jsonb):
        # The document itself, written by orjson rather than the field's encoder: the ledger's
        # JSON (the breakdown) holds only strings, numbers, booleans, lists and dicts.
        return value.obj
    raise TypeError(f"{type(value).__name__} has no JSON form for a batch row")


@cache
def _insert_many_sql(vendor: str, count: int | None) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in _LOG_FIELDS)
    return (
        f"INSERT INTO {quote(UsageLog._meta.db_table)} ({columns}) "  # noqa: S608
        f"{_rows_source(_LOG_FIELDS, count)} "
        f"ON CONFLICT ({quote('request_id')}, {quote('api_key_id')}) DO NOTHING "
        f"RETURNING {quote('request_id')}, {quote('api_key_id')}, {quote('id')}"
    )


def _insert_many(rows: list[LedgerRow]) -> dict[tuple[str, int], int]:
    """Insert the ledger rows whose (request_id, key) is new; their ids by (request_id, key).

    The rows must have distinct (request_id, key) pairs (usage_record_batch drops the repeats).
    """
    if not rows:
        return {}
    vendor = connection.vendor
    sql = _insert_many_sql(vendor, _statement_rows(len(rows)))
    fields = _log_fields(vendor, json=vendor == "postgresql")
    # On PostgreSQL one statement whatever the batch's size (arrays): prepared and bound by the
    # server, so the ~45 columns' values are not quoted into its text in Python
    # (docs/recording.md#batches).
    with prepared_cursor() if vendor == "postgresql" else connection.cursor() as cursor:
        cursor.execute(sql, _rows_params([_log_values(row, fields) for row in rows]))
        return {(request_id, key_id): pk for request_id, key_id, pk in cursor.fetchall()}


_ROLLUP_FIELDS = [UsageRollup._meta.get_field(name) for name in (*_ROLLUP_KEYS, *_ROLLUP_SUMS)]


def _rollup_add_many(logs: list[LedgerRow]) -> None:
    """usage_rollup_add for several rows: summed per rollup row, one upsert, rows in a fixed order."""
    if not logs:
        return
    rows = _rollup_rows(logs)
    with connection.cursor() as cursor:
        cursor.execute(_rollup_many_sql(connection.vendor, _statement_rows(len(rows))), _rows_params(rows))


def _rollup_many_statement(logs: list[LedgerRow]) -> BuiltStatement:
    """_rollup_add_many's upsert on PostgreSQL, built but not run (common.statements)."""
    rows = _rollup_rows(logs)
    return BuiltStatement(_rollup_many_sql(connection.vendor, _statement_rows(len(rows))), _rows_params(rows))


def _rollup_rows(logs: list[LedgerRow]) -> list[list]:
    """The upsert's rows: `logs` summed per rollup row, in a fixed order."""
    vendor = connection.vendor
    sums: dict[tuple, list] = {}
    for log in logs:
        values = _rollup_values(log, vendor)
        dimensions, amounts = tuple(values[: len(_ROLLUP_KEYS)]), values[len(_ROLLUP_KEYS) :]
        total = sums.get(dimensions)
        sums[dimensions] = amounts if total is None else [a + b for a, b in zip(total, amounts, strict=True)]
    as_is = prepared_as_is(_MONEY, vendor)
    rows = []
    for dimensions in sorted(sums, key=repr):
        amounts = sums[dimensions]
        money_values = [_prepared(_MONEY, amount, as_is) for amount in amounts[-3:]]
        rows.append([*dimensions, *amounts[:-3], *money_values])
    return rows


@cache
def _rollup_many_sql(vendor: str, count: int | None) -> str:
    single = _rollup_sql(vendor)
    head, rest = single.split(" VALUES ", 1)
    conflict = rest.split(" ON CONFLICT ", 1)[1]
    return f"{head} {_rows_source(_ROLLUP_FIELDS, count)} ON CONFLICT {conflict}"
