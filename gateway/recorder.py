"""What the gateway writes, on its database threads, after a response (docs/gateway.md#stream-accounting).

- `record`: the request's one ledger row, through billing.services.usage_record, with the
  BillingContext composed from the snapshots the request was admitted on (no query before the
  transaction's statements), the outcome and where the usage came from;
- `account_rate_limited` / `account_failed`: the marks failover puts on an account.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from accounts.services.upstream import upstream_account_mark_error, upstream_account_mark_rate_limited
from accounts.snapshots import KeySnapshot, snapshots_changed
from billing.cost import Usage
from billing.pricing import billing_context_from
from billing.services import UsageRecordResult, usage_record
from gateway.checks import key_window_refusal, subscription_window_refusal

NO_USAGE = Usage(input_tokens=0, output_tokens=0)


@dataclass(frozen=True, slots=True)
class Entry:
    request_id: str
    key: Any  # KeySnapshot
    channel: Any  # ChannelSnapshot | None
    account: Any  # UpstreamAccountSnapshot
    requested_model: str
    mapped_model: str
    upstream_model: str
    usage: Usage
    usage_source: str
    outcome: str
    stream: bool
    status_code: int
    duration_ms: int
    first_token_ms: int | None
    client_ip: str
    user_agent: str


def record(entry: Entry) -> tuple[UsageRecordResult, KeySnapshot]:
    """Record the request; the key snapshot with the counters the charge left (docs/gateway.md#auth-snapshot)."""
    context = billing_context_from(key=entry.key, channel=entry.channel, account=entry.account)
    result = usage_record(
        request_id=entry.request_id,
        api_key_id=entry.key.id,
        account_id=entry.account.id,
        requested_model=entry.requested_model,
        mapped_model=entry.mapped_model if entry.mapped_model != entry.requested_model else "",
        upstream_model=entry.upstream_model,
        usage=entry.usage,
        context=context,
        stream=entry.stream,
        duration_ms=entry.duration_ms,
        first_token_ms=entry.first_token_ms,
        status_code=entry.status_code,
        client_ip=entry.client_ip or None,
        user_agent=entry.user_agent,
        outcome=entry.outcome,
        usage_source=entry.usage_source,
    )
    fresh = refreshed(entry.key, result)
    announce_spent(entry, fresh, result)
    return result, fresh


def refreshed(key: KeySnapshot, result: UsageRecordResult) -> KeySnapshot:
    """`key` with every counter the charge returned (the rest as the snapshot had it)."""
    if result.duplicate:
        return key
    changes: dict[str, Any] = {}
    if result.key_charge is not None:
        changes.update(status=result.key_charge.status, quota_used_usd=result.key_charge.quota_used_usd)
        changes.update(result.key_charge.windows)
    if result.balance_usd is not None:
        changes["user"] = dataclasses.replace(key.user, balance=result.balance_usd)
    if result.subscription_windows is not None and key.subscription is not None:
        changes["subscription"] = dataclasses.replace(key.subscription, **result.subscription_windows)
    return dataclasses.replace(key, **changes) if changes else key


def announce_spent(entry: Entry, fresh: KeySnapshot, result: UsageRecordResult) -> None:
    """A charge that spent a limit drops the snapshots that would let the next request through, in
    every process (the counters as the database has them, from the charge's RETURNING)."""
    now = timezone.now()
    key_ids, user_ids, subscription_ids, account_ids = [], [], [], []
    if (
        fresh.status != "active"
        or (fresh.quota_usd > 0 and fresh.quota_used_usd >= fresh.quota_usd)
        or key_window_refusal(fresh, now) is not None
    ):
        key_ids.append(fresh.id)
    group = fresh.group
    if group is not None and group.is_subscription:
        if fresh.subscription is not None and subscription_window_refusal(fresh, now) is not None:
            subscription_ids.append(fresh.subscription.id)
    elif fresh.user.balance <= 0:
        user_ids.append(fresh.user_id)
    quota = result.account_quota
    if quota is not None and entry.account.quota_applies and quota.is_exceeded(now):
        account_ids.append(entry.account.id)
    if key_ids or user_ids or subscription_ids or account_ids:
        snapshots_changed(
            key_ids=key_ids, user_ids=user_ids, subscription_ids=subscription_ids, account_ids=account_ids
        )


def account_rate_limited(*, account_id: int, until: datetime) -> None:
    upstream_account_mark_rate_limited(account_id=account_id, until=until)


def account_failed(*, account_id: int, message: str) -> None:
    upstream_account_mark_error(account_id=account_id, message=message)
