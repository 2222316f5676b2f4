"""Recovery: settle the pending records a dead gateway process left (docs/gateway.md#pending-records).

A pending record whose lease has passed belongs to a process that stopped mid-request (`kill -9`,
a crash, a lost machine): a live request never outlasts the total timeout, and the lease is that
plus a margin (`GATEWAY_HOLD_LEASE_SECONDS`). `pending_recover` records each one through
billing.services.usage_record, whose transaction settles the record and its holds like any
recording: with the usage the stream had reported (`usage_source="observed"`), else the
admission estimate (`"estimate"`), outcome `gateway_stopped`. The ledger's (request_id, key)
uniqueness makes it safe to run anywhere and any number of times at once (Celery, every gateway
process at start-up): a request recorded twice is billed once.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.utils import timezone

from billing.cost import Usage
from billing.holds import holds_supported, pending_release
from billing.models import PendingRequest, RequestOutcome, UsageSource
from billing.services import usage_record

logger = logging.getLogger("gateway")

BATCH = 500


def pending_recover(*, now: datetime | None = None) -> int:
    """Record every pending record whose lease ended before `now`; how many were recorded."""
    if not holds_supported():
        return 0
    now = now or timezone.now()
    recorded = 0
    last_id = 0
    while True:
        stale = list(
            PendingRequest.objects.filter(lease_expires_at__lt=now, id__gt=last_id).order_by("id")[:BATCH]
        )
        if not stale:
            return recorded
        for pending in stale:
            last_id = pending.id
            try:
                recorded += _recover_one(pending)
            except Exception:
                logger.exception("recovering pending request %s failed", pending.request_id)


def _recover_one(pending: PendingRequest) -> int:
    observed = pending.observed or {}
    counts = observed or pending.estimate or {}
    usage = Usage(
        input_tokens=int(counts.get("input_tokens", 0)),
        output_tokens=int(counts.get("output_tokens", 0)),
        cache_creation_5m_tokens=int(counts.get("cache_creation_5m_tokens", 0)),
        cache_creation_1h_tokens=int(counts.get("cache_creation_1h_tokens", 0)),
        cache_read_tokens=int(counts.get("cache_read_tokens", 0)),
    )
    result = usage_record(
        request_id=pending.request_id,
        api_key_id=pending.api_key_id,
        account_id=pending.account_id,
        requested_model=pending.requested_model,
        mapped_model=pending.mapped_model if pending.mapped_model != pending.requested_model else "",
        usage=usage,
        stream=pending.stream,
        created_at=pending.created_at,
        outcome=RequestOutcome.GATEWAY_STOPPED,
        usage_source=UsageSource.OBSERVED if observed else UsageSource.ESTIMATE,
    )
    if result.duplicate:
        # Recorded already (by the process itself, or another recoverer): only the holds remain.
        pending_release(request_id=pending.request_id, api_key_id=pending.api_key_id)
        return 0
    return 1
