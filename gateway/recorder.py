"""What the gateway writes, on its database threads, after a response (docs/gateway.md#stream-accounting).

- `record`: the request's one ledger row, through billing.services.usage_record, with the
  BillingContext composed from the snapshots the request was admitted on (no query before the
  transaction's statements), the outcome and where the usage came from;
- `account_rate_limited` / `account_failed`: the marks failover puts on an account.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from accounts.services.upstream import upstream_account_mark_error, upstream_account_mark_rate_limited
from billing.cost import Usage
from billing.pricing import billing_context_from
from billing.services import UsageRecordResult, usage_record

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


def record(entry: Entry) -> UsageRecordResult:
    context = billing_context_from(key=entry.key, channel=entry.channel, account=entry.account)
    return usage_record(
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


def account_rate_limited(*, account_id: int, until: datetime) -> None:
    upstream_account_mark_rate_limited(account_id=account_id, until=until)


def account_failed(*, account_id: int, message: str) -> None:
    upstream_account_mark_error(account_id=account_id, message=message)
