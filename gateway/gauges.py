"""Gauges of the gateway's shared state, read at every scrape (docs/gateway.md#metrics).

They read the shared truth (the database), not one process's memory, so any worker answering a
scrape reports the same: requests held and not yet recorded (pending records), what they hold,
those past their lease (a dead process's, waiting for recovery), and the slots taken in the
database store (the Redis store's slots are not counted here: its sorted sets expire on their own).
"""

from __future__ import annotations

from django.db.models import Count, Q, Sum
from django.utils import timezone

from billing.models import PendingRequest
from gateway import metrics
from gateway.models import SlotLease


def _pending() -> list[tuple[tuple[str], float]]:
    now = timezone.now()
    totals = PendingRequest.objects.aggregate(
        live=Count("id", filter=Q(lease_expires_at__gt=now)),
        expired=Count("id", filter=Q(lease_expires_at__lte=now)),
    )
    return [(("live",), totals["live"]), (("past_lease",), totals["expired"])]


def _held() -> float:
    held = PendingRequest.objects.aggregate(total=Sum("held_usd"))["total"]
    return float(held or 0)


def _slots() -> int:
    return SlotLease.objects.filter(expires_at__gt=timezone.now()).count()


def register() -> None:
    metrics.register_gauge_source(
        "pending_requests",
        _pending,
        documentation="Requests held and not yet recorded (live), and those past their lease.",
        labels=("state",),
    )
    metrics.register_gauge_source(
        "held_usd", _held, documentation="USD held on keys and balances or subscriptions by pending requests."
    )
    metrics.register_gauge_source(
        "slot_leases", _slots, documentation="Concurrency and RPM slots taken in the database store."
    )
