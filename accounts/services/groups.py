"""Groups: create, edit, reorder, delete, membership priorities, model routing (docs/entities.md#groups).

A group carries prices (its rate multiplier), limits and routing, so creating, editing and
deleting one is for an admin (`actor`; docs/console.md#roles). Its order and an account's
priority in it are day-to-day work.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Case, Max, Q, Value, When
from django.utils import timezone

from accounts.models import MAX_PRIORITY, MIN_PRIORITY, APIKey, Group, GroupAccount, User
from accounts.roles import ConsoleRole, console_role_required
from accounts.rules import fallback_platform_error, is_valid_timezone
from accounts.snapshots import snapshots_changed

SORT_STEP = 10
MAX_ROUTES = 100
PATTERN = re.compile(r"^[A-Za-z0-9._:/@-]+\*?$")


class GroupInUseError(ValidationError):
    """Deleting a group that keys or subscriptions still point at."""

    def __init__(self, *, key_count: int, subscription_count: int) -> None:
        self.key_count = key_count
        self.subscription_count = subscription_count
        parts = []
        if key_count:
            parts.append(f"{key_count} API key{'s' if key_count != 1 else ''}")
        if subscription_count:
            parts.append(f"{subscription_count} subscription{'s' if subscription_count != 1 else ''}")
        super().__init__(f"This group still has {' and '.join(parts)} bound to it.")


# --- Validation ----------------------------------------------------------------------------------


def _fallback_cycle(group: Group, field: str, target: Group | None) -> str | None:
    """The cycle the new fallback would close, as "A → B → C → A", or None.

    Walks the chain from the target through every group's current fallback (with this group's
    replaced by the new one). The rows are locked so two edits cannot close a cycle between them.
    """
    if target is None:
        return None
    rows = Group.objects.select_for_update().values_list("pk", "name", f"{field}_id")
    links = {pk: link for pk, _, link in rows}
    names = {pk: name for pk, name, _ in rows}
    names[group.pk] = group.name
    links[group.pk] = target.pk
    path, current = [group.pk], target.pk
    while current is not None and current not in path:
        path.append(current)
        current = links.get(current)
    if current is None:
        return None
    cycle = path[path.index(current) :] + [current]
    return " → ".join(names[pk] for pk in cycle)


def _clean_routing(group: Group, routing: dict) -> dict[str, list[int]]:
    """Patterns are model names, optionally ending in one "*"; accounts must be in the group.

    Each pattern's accounts are stored in the group's priority order, the order the gateway tries.
    """
    if len(routing) > MAX_ROUTES:
        raise ValidationError({"model_routing": f"At most {MAX_ROUTES} routing rules."})
    members = (
        list(
            GroupAccount.objects.filter(group=group)
            .order_by("priority", "id")
            .values_list("account_id", flat=True)
        )
        if group.pk
        else []
    )
    seen: set[str] = set()
    cleaned: dict[str, list[int]] = {}
    for pattern, ids in routing.items():
        pattern = pattern.strip()
        if not PATTERN.match(pattern):
            raise ValidationError(
                {
                    "model_routing": f"{pattern!r} is not a model pattern: a model name, optionally ending in *."
                }
            )
        if pattern.lower() in seen:
            raise ValidationError({"model_routing": f"The pattern {pattern!r} is listed twice."})
        seen.add(pattern.lower())
        ids = {int(i) for i in ids}
        if not ids:
            raise ValidationError({"model_routing": f"Choose at least one account for {pattern!r}."})
        if ids - set(members):
            raise ValidationError(
                {"model_routing": f"Routing for {pattern!r} names accounts that are not in this group."}
            )
        cleaned[pattern] = [i for i in members if i in ids]
    return cleaned


def _validate(group: Group) -> None:
    errors: dict[str, str] = {}
    for field in ("fallback_group", "fallback_group_on_invalid_request"):
        target = getattr(group, field)
        if target is not None and group.pk and target.pk == group.pk:
            errors[field] = "A group cannot fall back to itself."
        elif target is not None and target.platform != group.platform:
            # A request falls back with its own protocol; another platform's accounts cannot serve it.
            errors[field] = fallback_platform_error(target, group.platform)
        elif cycle := (_fallback_cycle(group, field, target) if group.pk else None):
            errors[field] = f"This fallback would make a cycle: {cycle}."
    if group.timezone and not is_valid_timezone(group.timezone):
        errors["timezone"] = f"{group.timezone!r} is not an IANA timezone name (e.g. Europe/Berlin)."
    if group.rate_multiplier is not None and group.rate_multiplier <= 0:
        errors["rate_multiplier"] = "The rate multiplier must be greater than 0."
    if errors:
        raise ValidationError(errors)
    group.model_routing = _clean_routing(group, group.model_routing or {})


# --- Create, edit, delete ------------------------------------------------------------------------


@transaction.atomic
def group_create(*, fields: dict, actor: User | None) -> Group:
    """A new group goes to the end of the list."""
    console_role_required(actor, ConsoleRole.ADMIN, doing="create groups")
    fields = {k: v for k, v in fields.items() if k != "sort_order"}
    group = Group(**fields)
    _validate(group)
    last = Group.objects.aggregate(last=Max("sort_order"))["last"] or 0
    group.sort_order = last + SORT_STEP
    group.full_clean()
    group.save()
    return group


@transaction.atomic
def group_update(*, group: Group, fields: dict, actor: User | None) -> Group:
    console_role_required(actor, ConsoleRole.ADMIN, doing="change groups")
    fields = {k: v for k, v in fields.items() if k != "sort_order"}
    for name, value in fields.items():
        setattr(group, name, value)
    _validate(group)
    group.full_clean()
    group.save(update_fields=[*fields.keys(), "model_routing", "updated_at"])
    snapshots_changed(group_ids=[group.pk])
    return group


@transaction.atomic
def group_delete(*, group: Group, actor: User | None) -> None:
    """Refused while keys or subscriptions point at the group (both are PROTECT)."""
    console_role_required(actor, ConsoleRole.ADMIN, doing="delete groups")
    key_count = group.api_keys.count()
    subscription_count = group.subscriptions.count()
    if key_count or subscription_count:
        raise GroupInUseError(key_count=key_count, subscription_count=subscription_count)
    # Groups falling back to this one lose that fallback, and its channel loses it.
    falling_back = Group.objects.filter(
        Q(fallback_group=group) | Q(fallback_group_on_invalid_request=group)
    ).values_list("pk", flat=True)
    snapshots_changed(
        group_ids=[group.pk, *falling_back],
        channel_ids=group.channel_links.values_list("channel_id", flat=True),
    )
    group.delete()


def group_delete_rebinding_keys(*, group: Group, target_group_id: int, actor: User | None) -> int:
    """Move every key bound to `group` to the target group, then delete `group`; the keys moved.

    One transaction: both rows are locked (in id order, so two opposite rebinds cannot deadlock),
    which also stops new keys or subscriptions binding to the group meanwhile. The target must be
    another existing group on the same platform. Subscriptions still block the delete, and then
    no key is moved. Any failure leaves everything as it was.
    """
    console_role_required(actor, ConsoleRole.ADMIN, doing="delete groups")
    with transaction.atomic():
        locked = {
            row.pk: row
            for row in Group.objects.select_for_update()
            .filter(pk__in=[group.pk, target_group_id])
            .order_by("pk")
        }
        if group.pk not in locked:
            raise ValidationError("This group no longer exists.")
        group = locked[group.pk]
        if target_group_id == group.pk:
            raise ValidationError({"target_group": "Choose a different group than the one being deleted."})
        target = locked.get(target_group_id)
        if target is None:
            raise ValidationError({"target_group": "That group no longer exists. Choose another one."})
        if target.platform != group.platform:
            raise ValidationError(
                {
                    "target_group": f"{target.name} is on the {target.get_platform_display()} platform; "
                    f"these keys can only move to a group on {group.get_platform_display()}."
                }
            )
        subscription_count = group.subscriptions.count()
        if subscription_count:
            raise ValidationError(
                f"{subscription_count} subscription{'s' if subscription_count != 1 else ''} still "
                f"use{'s' if subscription_count == 1 else ''} this group, so it cannot be deleted. "
                "No keys were moved."
            )
        keys = APIKey.objects.filter(group=group)
        snapshots_changed(key_ids=keys.values_list("pk", flat=True), group_ids=[target.pk])
        moved = keys.update(group=target, updated_at=timezone.now())
        group_delete(group=group, actor=actor)
    return moved


def group_set_account_priority(*, group: Group, account_id: int, priority: int) -> None:
    """The account's priority inside this group, then the group's routing lists follow the new order."""
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValidationError(
            {"priority": f"The priority is a whole number from {MIN_PRIORITY} to {MAX_PRIORITY:,}."}
        )
    with transaction.atomic():
        updated = GroupAccount.objects.filter(group=group, account_id=account_id).update(priority=priority)
        if not updated:
            raise ValidationError("That account is not in this group.")
        group = Group.objects.select_for_update().get(pk=group.pk)
        Group.objects.filter(pk=group.pk).update(model_routing=_clean_routing(group, group.model_routing))
        snapshots_changed(group_ids=[group.pk])


# --- Reordering ----------------------------------------------------------------------------------


@transaction.atomic
def group_reorder(*, ordered_ids: Iterable[int]) -> None:
    """Apply a complete new order in one bulk UPDATE, positions 10, 20, 30…

    The request must list every group exactly once. Anything else (an unknown, duplicated or
    missing id, e.g. a stale page or a tampered request) is refused whole and changes nothing.
    """
    ids = list(ordered_ids)
    existing = set(Group.objects.select_for_update().values_list("pk", flat=True))
    duplicated = sorted(pk for pk, n in Counter(ids).items() if n > 1)
    unknown = sorted(set(ids) - existing)
    missing = sorted(existing - set(ids))
    problems = []
    if unknown:
        problems.append(f"unknown group id{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))}")
    if duplicated:
        problems.append(
            f"group id{'s' if len(duplicated) > 1 else ''} {', '.join(map(str, duplicated))} listed twice"
        )
    if missing:
        problems.append(f"{len(missing)} group{'s' if len(missing) > 1 else ''} missing")
    if problems:
        raise ValidationError(
            f"The new order was not saved: {'; '.join(problems)}. Reload the page and try again."
        )
    if not ids:
        return
    Group.objects.filter(pk__in=ids).update(
        sort_order=Case(
            *(When(pk=pk, then=Value((n + 1) * SORT_STEP)) for n, pk in enumerate(ids)),
            output_field=models.IntegerField(),
        )
    )
