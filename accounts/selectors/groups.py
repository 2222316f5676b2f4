"""Reads for the group pages."""

from __future__ import annotations

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from accounts.models import APIKey, Group, GroupAccount, Subscription


def _count(model, **filters) -> Coalesce:
    """A correlated COUNT per group: no join fan-out between accounts, keys and subscriptions."""
    counted = (
        model.objects.filter(group=OuterRef("pk"), **filters)
        .order_by()
        .values("group")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def group_list() -> QuerySet[Group]:
    """Every group in sort order, with its account and key counts (one query)."""
    return (
        Group.objects.order_by("sort_order", "id")
        .select_related("fallback_group")
        .annotate(account_count=_count(GroupAccount), key_count=_count(APIKey))
    )


def group_detail(*, pk: int) -> Group:
    return (
        Group.objects.select_related("fallback_group", "fallback_group_on_invalid_request")
        .annotate(
            account_count=_count(GroupAccount),
            key_count=_count(APIKey),
            subscription_count=_count(Subscription),
            live_subscription_count=_count(Subscription, status__in=Subscription.LIVE_STATUSES),
        )
        .get(pk=pk)
    )


def group_memberships(*, group: Group) -> QuerySet[GroupAccount]:
    """The group's accounts in the order the gateway prefers them."""
    return group.memberships.select_related("account").order_by("priority", "account__priority", "id")


def group_choices(*, exclude: Group | None = None) -> QuerySet[Group]:
    groups = Group.objects.order_by("sort_order", "id")
    return groups.exclude(pk=exclude.pk) if exclude is not None and exclude.pk else groups
