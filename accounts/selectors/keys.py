"""Reads for API keys: the filtered list, and which groups a user may bind a key to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, Q, QuerySet
from django.utils.timezone import now as current_time

from accounts.models import APIKey, Group, Subscription, User

Status = APIKey.Status
DISPLAY_PREFIX_LENGTH = 7  # "sk-" and four hex characters


def key_list(
    *,
    search: str = "",
    user: User | None = None,
    group: Group | None = None,
    status: str = "",
    expiring_within_days: int | None = None,
    exhausted: str = "",
    now: datetime | None = None,
) -> QuerySet[APIKey]:
    """Keys with their user and group joined in (one query for a page of rows)."""
    now = now or current_time()
    keys = APIKey.objects.select_related("user", "group")
    search = search.strip()
    if search:
        match = Q(name__icontains=search) | Q(user__email__icontains=search) | Q(key_last4__iexact=search)
        if search.lower().startswith("sk-"):
            # A key's start matches on the displayed prefix. (No lookup by the whole secret: that
            # would invite pasting secrets into URLs, and so into access logs.)
            match |= Q(key_prefix__istartswith=search[:DISPLAY_PREFIX_LENGTH])
        else:
            match |= Q(key_prefix__icontains=search)
        keys = keys.filter(match)
    if user is not None:
        keys = keys.filter(user=user)
    if group is not None:
        keys = keys.filter(group=group)
    past_expiry = Q(expires_at__isnull=False, expires_at__lte=now)
    if status == Status.EXPIRED:
        # Also active keys whose expiry has passed but which the tidy-up job has not flipped yet.
        keys = keys.filter(Q(status=Status.EXPIRED) | (Q(status=Status.ACTIVE) & past_expiry))
    elif status == Status.ACTIVE:
        keys = keys.filter(status=Status.ACTIVE).exclude(past_expiry)
    elif status:
        keys = keys.filter(status=status)
    if expiring_within_days:
        keys = keys.filter(expires_at__gt=now, expires_at__lte=now + timedelta(days=expiring_within_days))
    used_up = Q(quota_usd__gt=0, quota_used_usd__gte=F("quota_usd"))
    if exhausted == "yes":
        keys = keys.filter(used_up)
    elif exhausted == "no":
        keys = keys.exclude(used_up)
    return keys


@dataclass(frozen=True, slots=True)
class GroupChoice:
    group: Group
    problem: str  # empty when the user may bind a key to this group


def _problem(group: Group, user: User | None, allowed: set[int], subscribed: set[int]) -> str:
    if group.status != Group.Status.ACTIVE:
        return "The group is inactive."
    if user is None:
        return ""
    if group.is_exclusive and group.pk not in allowed:
        return f"Exclusive group: {user.email} is not allowed to use it. Add it to the user's allowed groups first."
    if group.is_subscription and group.pk not in subscribed:
        return f"Subscription group: {user.email} has no live subscription to it. Assign one first."
    return ""


def live_subscription_group_ids(*, user: User, now: datetime | None = None) -> set[int]:
    live = Subscription.objects.filter(
        user=user, status__in=Subscription.LIVE_STATUSES, expires_at__gt=now or current_time()
    )
    return set(live.values_list("group_id", flat=True))


def key_group_choices(*, user: User | None, now: datetime | None = None) -> list[GroupChoice]:
    """Every group, each with the reason (if any) this user may not bind a key to it. Three queries."""
    allowed: set[int] = set()
    subscribed: set[int] = set()
    if user is not None:
        allowed = set(user.allowed_groups.values_list("pk", flat=True))
        subscribed = live_subscription_group_ids(user=user, now=now)
    groups = Group.objects.order_by("sort_order", "id")
    return [GroupChoice(group, _problem(group, user, allowed, subscribed)) for group in groups]


def key_group_problem(*, user: User, group: Group, now: datetime | None = None) -> str:
    """Why `user` may not bind a key to `group`, or "" when they may (docs/gateway.md#checks, checks 6–8)."""
    allowed = set(user.allowed_groups.filter(pk=group.pk).values_list("pk", flat=True))
    subscribed = live_subscription_group_ids(user=user, now=now) if group.is_subscription else set()
    return _problem(group, user, allowed, subscribed)


def key_name_twins(*, key: APIKey) -> int:
    """How many other keys of the same user carry this key's name (ignoring case)."""
    return APIKey.objects.filter(user_id=key.user_id, name__iexact=key.name).exclude(pk=key.pk).count()


def key_name_warning(*, key: APIKey) -> str:
    """Said after a save when the name does not tell this key from the user's others."""
    twins = key_name_twins(key=key)
    if not twins:
        return ""
    others = "another key" if twins == 1 else f"{twins} other keys"
    return f"{key.user.email} has {others} named “{key.name}”: give each key its own name to tell them apart."
