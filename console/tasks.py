"""Celery task for the dashboard (docs/jobs.md#what-runs): a thin wrapper around console.dashboard."""

from __future__ import annotations

from celery import shared_task

from console.dashboard import PERIODS, dashboard_charts


@shared_task(name="console.dashboard_warm")
def dashboard_warm() -> int:
    """Sum the dashboard's closed hours and days into the cache before anyone asks.

    The first dashboard request after midnight, a backfill or a cache flush sums every closed
    bucket of its period from the rollups (seconds at ten million ledger rows); run on a schedule,
    this pays that instead, and visitors find the buckets cached. Answers how many periods it warmed.
    """
    for period in PERIODS:
        dashboard_charts(period=period)
    return len(PERIODS)
