from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from accounts.models import BalanceHistory, User, UserGroupRate
from accounts.roles import ConsoleRole


def user_list(*, search: str = "", status: str = "", access: str = "") -> QuerySet[User]:
    """Users matching the filters. `access`: "none" (customers), "staff", or a console role
    (a superuser counts as an admin)."""
    users = User.objects.annotate(api_key_count=Count("api_keys", distinct=True))
    if search:
        users = users.filter(
            Q(email__icontains=search) | Q(username__icontains=search) | Q(notes__icontains=search)
        )
    if status:
        users = users.filter(status=status)
    if access == "none":
        users = users.filter(is_staff=False)
    elif access == "staff":
        users = users.filter(is_staff=True)
    elif access == ConsoleRole.ADMIN:
        users = users.filter(Q(console_role=access) | Q(is_superuser=True), is_staff=True)
    elif access in ConsoleRole.values:
        users = users.filter(is_staff=True, is_superuser=False, console_role=access)
    return users


def user_balance_history(*, user: User, limit: int = 50) -> QuerySet[BalanceHistory]:
    return user.balance_history.select_related("changed_by")[:limit]


def user_group_rates(*, user: User) -> QuerySet[UserGroupRate]:
    return user.group_rates.select_related("group").order_by("group__sort_order", "group__name")


PICKER_MATCHES = 20


def user_picker_matches(
    *, query: str, exclude: list[int], limit: int = PICKER_MATCHES
) -> tuple[list[User], bool]:
    """The first users whose email or name contains `query`, and whether more match. One query."""
    users = User.objects.only("id", "email", "username").order_by("email")
    query = query.strip()
    if query:
        users = users.filter(Q(email__icontains=query) | Q(username__icontains=query))
    if exclude:
        users = users.exclude(pk__in=exclude)
    found = list(users[: limit + 1])
    return found[:limit], len(found) > limit
