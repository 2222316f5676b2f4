"""Celery tasks for reconcile and prune: thin wrappers around billing.reconcile's services.

Task names are explicit so the beat schedule can name them (docs/jobs.md#reconcile-runs):
`billing.reconcile_run`, `billing.reconcile_nightly`, `billing.usage_prune`.
"""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task

from billing.models import ReconcileMode, ReconcilePeriod
from billing.reconcile import reconcile_batch_create, reconcile_run_execute, usage_prune


@shared_task(name="billing.reconcile_run")
def reconcile_run(run_id: int) -> None:
    """Work through one queued run, chunk by chunk, saving progress as it goes."""
    reconcile_run_execute(run_id=run_id)


@shared_task(name="billing.reconcile_nightly")
def reconcile_nightly() -> str:
    """A dry run of every scope in one batch, started by "schedule"; its drift shows on the dashboard."""
    runs = reconcile_batch_create(period=ReconcilePeriod.ALL, mode=ReconcileMode.DRY_RUN, label="schedule")
    for run in runs:
        reconcile_run.delay(run.pk)
    return runs[0].batch_id


@shared_task(name="billing.usage_prune")
def prune_usage(older_than_days: int | None = None) -> int:
    """Delete ledger rows past retention (USAGE_RETENTION_DAYS unless given), folding them forward."""
    older_than = timedelta(days=older_than_days) if older_than_days is not None else None
    return usage_prune(older_than=older_than).deleted
