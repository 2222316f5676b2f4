"""Reads for subscriptions: the filtered list."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q, QuerySet
from django.utils.timezone import now as current_time

from accounts.models import Group, Subscription, User

Status = Subscription.Status


def subscription_list(
    *,
    search: str = "",
    user: User | None = None,
    group: Group | None = None,
    status: str = "",
    expiring_within_days: int | None = None,
    now: datetime | None = None,
) -> QuerySet[Subscription]:
    """Subscriptions with user, group and assigner joined in (one query for a page of rows)."""
    now = now or current_time()
    subscriptions = Subscription.objects.select_related("user", "group", "assigned_by")
    search = search.strip()
    if search:
        subscriptions = subscriptions.filter(
            Q(user__email__icontains=search) | Q(user__username__icontains=search)
        )
    if user is not None:
        subscriptions = subscriptions.filter(user=user)
    if group is not None:
        subscriptions = subscriptions.filter(group=group)
    term_over = Q(expires_at__lte=now)
    if status == Status.EXPIRED:
        # Also live ones past their term that the tidy-up job has not flipped yet.
        subscriptions = subscriptions.filter(
            Q(status=Status.EXPIRED) | (Q(status__in=Subscription.LIVE_STATUSES) & term_over)
        )
    elif status in (Status.ACTIVE, Status.SUSPENDED):
        subscriptions = subscriptions.filter(status=status).exclude(term_over)
    elif status:
        subscriptions = subscriptions.filter(status=status)
    if expiring_within_days:
        subscriptions = subscriptions.filter(
            status__in=Subscription.LIVE_STATUSES,
            expires_at__gt=now,
            expires_at__lte=now + timedelta(days=expiring_within_days),
        )
    return subscriptions
