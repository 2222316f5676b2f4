"""The rollup epoch: a number in the cache that moves whenever a row is recorded into the past
(docs/recording.md#rollups).

Readers that cache sums of closed hours (the console's dashboard) put the epoch in their cache
keys, so a backfill (the demo seed, a settled stale request, an import) makes them sum again
instead of showing a closed hour as it was before. Rows recorded as they happen never move it.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.cache import cache

EPOCH_KEY = "billing:rollup-epoch"
# A row whose created_at is older than this when it is recorded is a backfill.
BACKFILL_AFTER = timedelta(minutes=5)


def rollup_epoch() -> int:
    return cache.get(EPOCH_KEY) or 0


def rollup_epoch_bump() -> None:
    """Move the epoch (atomically: INCR on Redis). Called after a backfill commits."""
    cache.add(EPOCH_KEY, 0, timeout=None)
    try:
        cache.incr(EPOCH_KEY)
    except ValueError:  # evicted between add and incr
        cache.set(EPOCH_KEY, 1, timeout=None)
