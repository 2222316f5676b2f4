"""The gateway's own writes: slot leases, when no Redis is configured (docs/gateway.md#shared-limits).

A limit of N is N numbered slots of its scope; taking one is inserting the row (scope, n) for a
free n, or taking over a row whose lease has ended with one conditional UPDATE. The unique pair
(scope, slot) is what keeps the count exact when processes race: of two inserts of the same slot
one fails and tries the next number. All the scopes of one request are taken in one transaction,
in the same order by every request (so two never wait on each other in a cycle); the first that
is full rolls the others back. Works the same on PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from gateway.limits import Full, Limit
from gateway.models import SlotLease

ATTEMPTS = 8  # a slot number lost to a concurrent insert is retried with a fresh read


class _Refused(Exception):
    def __init__(self, full: Full) -> None:
        self.full = full


def slot_lease_take(*, token: str, limits: Sequence[Limit], now: datetime | None = None) -> Full | None:
    """Take a slot of every limit for `token`, or none: the first full limit and its wait."""
    now = now or timezone.now()
    try:
        with transaction.atomic():
            for index, limit in enumerate(limits):
                wait = _take_one(limit, token, now)
                if wait is not None:
                    raise _Refused(Full(index, wait))
    except _Refused as refused:
        return refused.full
    return None


def _take_one(limit: Limit, token: str, now: datetime) -> float | None:
    """None once a slot is taken; else seconds until the earliest taken one ends."""
    ends = now + timedelta(seconds=limit.lease)
    earliest = 1.0
    for _ in range(ATTEMPTS):
        taken = dict(
            SlotLease.objects.filter(scope=limit.scope, slot__lt=limit.limit).values_list(
                "slot", "expires_at"
            )
        )
        free = next((number for number in range(limit.limit) if number not in taken), None)
        if free is not None:
            try:
                with transaction.atomic():
                    SlotLease.objects.create(scope=limit.scope, slot=free, token=token, expires_at=ends)
                return None
            except IntegrityError:
                continue  # another request took that number first
        ended = [number for number, expires in taken.items() if expires <= now]
        for number in ended:
            took_over = SlotLease.objects.filter(scope=limit.scope, slot=number, expires_at__lte=now).update(
                token=token, expires_at=ends
            )
            if took_over:
                return None
        if not ended and free is None:
            earliest = (min(taken.values()) - now).total_seconds()
            return max(earliest, 0.0)
    return earliest


def slot_lease_release(*, token: str, scopes: Sequence[str]) -> int:
    """Give back the concurrency slots `token` holds in `scopes` (a lease taken over is not its own)."""
    deleted, _ = SlotLease.objects.filter(token=token, scope__in=list(scopes)).delete()
    return deleted
