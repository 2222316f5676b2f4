"""The gateway's Celery tasks (docs/jobs.md)."""

from __future__ import annotations

from celery import shared_task

from gateway.recovery import pending_recover


@shared_task(name="gateway.pending_recover")
def pending_recover_task() -> int:
    """Settle the pending records of gateway processes that died (docs/gateway.md#pending-records)."""
    return pending_recover()
