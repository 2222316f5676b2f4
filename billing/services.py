"""Recording usage (docs/recording.md): price a request once, write it to the ledger once, charge it once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from accounts.services.keys import KeyChargeResult, api_key_usage_charge
from accounts.services.subscriptions import subscription_usage_charge
from accounts.services.upstream import upstream_account_quota_charge
from accounts.services.users import user_balance_charge
from accounts.snapshots import AccountQuota
from billing.cost import CostBreakdown, Usage, compute_cost
from billing.models import BREAKDOWN_COLUMNS, RequestOutcome, UsageLog, UsageRollup, UsageSource
from billing.pricing import BillingContext, billing_context, pick_billing_model, resolve_price
from billing.rollup_epoch import BACKFILL_AFTER, rollup_epoch_bump

ZERO = Decimal(0)


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
    rollup, balance or subscription, account, COMMIT (on PostgreSQL; see tests/billing/test_record.py).
    """
    now = created_at or timezone.now()
    if context is None:
        context = billing_context(api_key_id=api_key_id, account_id=account_id)
    elif (context.api_key_id, context.account_id) != (api_key_id, account_id):
        raise ValueError("the BillingContext belongs to another key or account")
    billing_model = pick_billing_model(
        source=context.billing_model_source,
        requested_model=requested_model,
        mapped_model=mapped_model,
        upstream_model=upstream_model,
    )
    resolution = resolve_price(context=context, model=billing_model)
    breakdown = compute_cost(
        price=resolution.price,
        usage=usage,
        pricing_source=resolution.pricing_source,
        rate_multiplier=context.rate_multiplier,
        rate_multiplier_source=context.rate_multiplier_source,
        account_rate_multiplier=context.account_rate_multiplier,
        cache_ttl_override=context.cache_ttl_override,
        billing_model=billing_model,
    )
    row = UsageLog(
        request_id=request_id,
        user_id=context.user_id,
        api_key_id=api_key_id,
        account_id=account_id,
        group_id=context.group_id,
        channel_id=resolution.channel_id,
        subscription_id=context.subscription_id if context.charges_subscription else None,
        requested_model=requested_model,
        upstream_model=upstream_model or mapped_model or requested_model,
        billing_model_source=context.billing_model_source,
        breakdown={**breakdown_extra(breakdown), "usage_source": str(usage_source)},
        outcome=outcome,
        usage_source=usage_source,
        stream=stream,
        duration_ms=duration_ms,
        first_token_ms=first_token_ms,
        status_code=status_code,
        client_ip=client_ip or None,
        user_agent=user_agent[:512],
        cache_ttl_overridden=breakdown.cache_ttl_overridden,
        created_at=now,
        **{name: getattr(breakdown, name) for name in BREAKDOWN_COLUMNS},
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
        # Rows are locked from their UPDATE to the commit, so the most widely shared row goes
        # last: a key is one client's, its rollup row the key's, a balance or subscription the
        # user's (all their keys), and an account serves every key of its groups.
        charged_to, key_result, balance, subscription_windows, account_quota = "", None, None, None, None
        amount = breakdown.actual_cost
        if amount > 0:
            key_result = api_key_usage_charge(
                key_id=api_key_id, amount_usd=amount, now=now, timezone=context.key_timezone
            )
        usage_rollup_add(log=row)
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


def breakdown_extra(breakdown: CostBreakdown) -> dict:
    """The breakdown fields a UsageLog does not keep as columns (see UsageLog.cost_breakdown)."""
    data = breakdown.as_dict()
    data.pop("cache_ttl_overridden", None)  # derived, and a column of its own
    for name in BREAKDOWN_COLUMNS:
        data.pop(name)
    return data


# -- SQL ----------------------------------------------------------------------------------------
# Both statements are plain INSERT … ON CONFLICT, which PostgreSQL and SQLite (the embedded
# default) share, so the demo data of `make run` goes through exactly the production path.

_LOG_FIELDS = [field for field in UsageLog._meta.concrete_fields if not field.primary_key]


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


def _insert_once(row: UsageLog) -> int | None:
    """Insert the ledger row unless (request_id, api_key) exists; its id, or None for a replay.

    ON CONFLICT DO NOTHING instead of catching IntegrityError: no savepoint round trips, and a
    replay racing the original waits for it to commit, then sees the conflict.
    """
    values = [field.get_db_prep_save(getattr(row, field.attname), connection) for field in _LOG_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(connection.vendor), values)
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


def usage_rollup_add(*, log: UsageLog) -> None:
    """Add one ledger row to its hourly rollup (insert, or increment the existing one).

    usage_record calls it in the ledger row's transaction; anything else that writes ledger
    rows (reconcile corrections, test factories) must call it in theirs.
    """
    hour_field = UsageRollup._meta.get_field("hour")
    money = UsageRollup._meta.get_field("total_cost")
    values = [
        hour_field.get_db_prep_save(rollup_hour(log.created_at), connection),
        log.user_id,
        log.api_key_id,
        log.account_id or 0,
        log.group_id or 0,
        log.requested_model,
        log.upstream_model,
        log.billing_model,
        log.pricing_source,
        log.status_code,
        1,
        log.input_tokens,
        log.output_tokens,
        log.cache_creation_5m_tokens,
        log.cache_creation_1h_tokens,
        log.cache_read_tokens,
        log.image_output_tokens,
        *(money.get_db_prep_save(getattr(log, name), connection) for name in _ROLLUP_SUMS[-3:]),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_rollup_sql(connection.vendor), values)
