"""Subscriptions: assign (single and bulk), extend, reset windows, suspend, revoke, and the
window counters billing charges (docs/entities.md#subscriptions, docs/windows.md#subscription-windows).

One live (active or suspended) subscription per user and group is a database constraint, so
assigning when one exists extends it. Operator actions lock the row; charges are one UPDATE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache, partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils.timezone import now as current_time

from accounts import windows
from accounts.models import Group, Subscription, User, timezone_name
from accounts.snapshots import snapshots_changed
from common.money import quantize_usd
from common.statements import BuiltStatement

logger = logging.getLogger(__name__)

ZERO = Decimal("0")
Status = Subscription.Status
LIVE = Subscription.LIVE_STATUSES
WINDOW_KINDS = tuple(kind for kind, *_ in Subscription.WINDOWS)
MAX_DAYS = 3650


@dataclass(frozen=True, slots=True)
class Assignment:
    subscription: Subscription
    created: bool  # False: an existing live subscription was extended


def _check_group(group: Group) -> None:
    if not group.is_subscription:
        raise ValidationError(
            {
                "group": f"{group.name} is a standard group (paid from balance); only subscription groups take subscriptions."
            }
        )


def _check_days(days: int, *, allow_negative: bool) -> None:
    if days == 0 or abs(days) > MAX_DAYS or (days < 0 and not allow_negative):
        low = -MAX_DAYS if allow_negative else 1
        raise ValidationError(
            {"days": f"Enter a whole number of days between {low} and {MAX_DAYS}, other than 0."}
        )


def _extend(subscription: Subscription, days: int, now: datetime) -> None:
    """Move the expiry by ±days: a live subscription from its expiry, an expired one from now."""
    if subscription.status == Status.REVOKED:
        raise ValidationError({"days": "A revoked subscription cannot be extended; assign a new one."})
    live = subscription.status in LIVE and subscription.expires_at > now
    base = subscription.expires_at if live else now
    expires_at = base + timedelta(days=days)
    if expires_at <= now:
        raise ValidationError(
            {
                "days": f"{days:+d} days from {'the expiry' if live else 'now'} ({base:%Y-%m-%d %H:%M %Z}) "
                f"ends on {expires_at:%Y-%m-%d %H:%M %Z}, which is not in the future."
            }
        )
    subscription.expires_at = expires_at
    if subscription.status == Status.EXPIRED:
        subscription.status = Status.ACTIVE


def _changed(subscription: Subscription) -> None:
    # A key snapshot holds its user's live (else latest) subscription of the group, so a change
    # that can make another one the live one is also announced by user.
    snapshots_changed(subscription_ids=[subscription.pk], user_ids=[subscription.user_id])


def _save_extension(subscription: Subscription, fields: list[str]) -> None:
    try:
        with transaction.atomic():
            subscription.save(update_fields=[*fields, "updated_at"])
            _changed(subscription)
    except IntegrityError as error:
        # Reviving an expired subscription while another one is live for the same user and group.
        raise ValidationError(
            {"days": "This user already has a live subscription to this group; extend that one instead."}
        ) from error


def subscription_assign(
    *,
    user: User,
    group: Group,
    days: int | None = None,
    notes: str = "",
    assigned_by: User | None = None,
    now: datetime | None = None,
) -> Assignment:
    """Give `user` the group for `days` (default: the group's validity), or extend their live one."""
    now = now or current_time()
    _check_group(group)
    days = group.default_validity_days if days is None else days
    _check_days(days, allow_negative=False)
    notes = notes.strip()
    with transaction.atomic():
        live = (
            Subscription.objects.select_for_update().filter(user=user, group=group, status__in=LIVE).first()
        )
        if live is None:
            try:
                with transaction.atomic():
                    created = Subscription.objects.create(
                        user=user,
                        group=group,
                        starts_at=now,
                        expires_at=now + timedelta(days=days),
                        status=Status.ACTIVE,
                        assigned_by=assigned_by,
                        notes=notes,
                    )
            except IntegrityError:
                # Another assignment of the same user and group won the race: extend that one.
                live = Subscription.objects.select_for_update().get(user=user, group=group, status__in=LIVE)
            else:
                _changed(created)
                logger.info(
                    "Subscription %s: %s assigned %s for %s days", created.pk, user.email, group, days
                )
                return Assignment(created, True)
        _extend(live, days, now)
        if notes:
            live.notes = "\n".join(filter(None, [live.notes, notes]))
        _save_extension(live, ["expires_at", "status", "notes"])
        logger.info("Subscription %s: assignment extended it by %s days", live.pk, days)
        return Assignment(live, False)


@transaction.atomic
def subscription_assign_bulk(
    *,
    users: Iterable[User],
    group: Group,
    days: int | None = None,
    notes: str = "",
    assigned_by: User | None = None,
    now: datetime | None = None,
) -> list[Assignment]:
    """Assign several users at once: all of them or, on any error, none."""
    now = now or current_time()
    return [
        subscription_assign(user=user, group=group, days=days, notes=notes, assigned_by=assigned_by, now=now)
        for user in sorted(users, key=lambda u: u.pk)  # one lock order, so two bulk runs cannot deadlock
    ]


@transaction.atomic
def subscription_extend(*, subscription_id: int, days: int, now: datetime | None = None) -> Subscription:
    """±days: a live subscription from its expiry, an expired one from now; the result must be in the future."""
    now = now or current_time()
    _check_days(days, allow_negative=True)
    subscription = Subscription.objects.select_for_update().get(pk=subscription_id)
    _extend(subscription, days, now)
    _save_extension(subscription, ["expires_at", "status"])
    logger.info("Subscription %s extended by %s days", subscription_id, days)
    return subscription


def subscription_windows_reset(*, subscription_id: int, kinds: Iterable[str]) -> Subscription:
    """Zero the chosen windows; each restarts on the next use."""
    kinds = list(dict.fromkeys(kinds))
    unknown = set(kinds) - set(WINDOW_KINDS)
    if not kinds or unknown:
        raise ValidationError({"windows": "Choose at least one of the daily, weekly and monthly windows."})
    updates: dict = {}
    for kind, _label, _limit, used, start in Subscription.WINDOWS:
        if kind in kinds:
            updates |= {used: ZERO, start: None, f"{kind}_reset_at": current_time()}
    Subscription.objects.filter(pk=subscription_id).update(**updates)
    snapshots_changed(subscription_ids=[subscription_id])
    return Subscription.objects.get(pk=subscription_id)


def _move(subscription_id: int, *, allowed_from: tuple[str, ...], to: str, verb: str) -> Subscription:
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().get(pk=subscription_id)
        if subscription.status not in allowed_from:
            raise ValidationError(f"Only {' or '.join(allowed_from)} subscriptions can be {verb}.")
        subscription.status = to
        subscription.save(update_fields=["status", "updated_at"])
        _changed(subscription)
    logger.info("Subscription %s %s", subscription_id, verb)
    return subscription


def subscription_suspend(*, subscription_id: int) -> Subscription:
    """Stop usage for now; the subscription stays live (and keeps its term running)."""
    return _move(subscription_id, allowed_from=(Status.ACTIVE,), to=Status.SUSPENDED, verb="suspended")


def subscription_resume(*, subscription_id: int) -> Subscription:
    return _move(subscription_id, allowed_from=(Status.SUSPENDED,), to=Status.ACTIVE, verb="resumed")


def subscription_revoke(*, subscription_id: int) -> Subscription:
    """End it now for good: it stops being live, so a new one can be assigned."""
    return _move(
        subscription_id,
        allowed_from=(Status.ACTIVE, Status.SUSPENDED, Status.EXPIRED),
        to=Status.REVOKED,
        verb="revoked",
    )


def subscription_expire_due(*, now: datetime | None = None) -> int:
    """Flip live subscriptions past their term to expired (the tidy-up job; charges need no job)."""
    with transaction.atomic():
        due = Subscription.objects.filter(status__in=LIVE, expires_at__lte=now or current_time())
        rows = list(due.values_list("pk", "user_id"))
        expired = Subscription.objects.filter(pk__in=[pk for pk, _ in rows], status__in=LIVE).update(
            status=Status.EXPIRED
        )
        snapshots_changed(subscription_ids=[pk for pk, _ in rows], user_ids=[user_id for _, user_id in rows])
    return expired


# --- the counter engine ---------------------------------------------------------------------------


def _field(name: str):
    return Subscription._meta.get_field(name)


def subscription_usage_charge(
    *,
    subscription_id: int,
    amount_usd: Decimal,
    now: datetime | None = None,
    starts_at: datetime | None = None,
    timezone: str | None = None,
    release_usd: Decimal = ZERO,
) -> dict[str, Any]:
    """Charge one request to the daily, weekly and monthly windows, in one atomic UPDATE; the
    windows as it left them ({"daily_usage_usd": …, "daily_window_start": …, …}).

    Lazy resets, written as CASE expressions: a window that never started (first use activates
    it), has ended, or whose term has ended restarts with this amount. The daily window is the
    calendar day in the group's timezone, so it has ended exactly when its start is before
    today's local midnight. Weekly and monthly windows are 7×24h / 30×24h steps from starts_at and
    end at the latest at expires_at (compared in the UPDATE, so an extension counts at once).
    The group's timezone and starts_at are configuration: pass both as the caller last read them
    (billing's BillingContext carries them; an empty timezone means settings.TIME_ZONE), or
    neither and they are read before the UPDATE. The counters never are. `release_usd` lowers the
    subscription's held amount in the same statement (a batch recording settles its holds this way).
    """
    if connection.vendor == "postgresql":
        return subscription_usage_charge_statement(
            subscription_id=subscription_id,
            amount_usd=amount_usd,
            now=now,
            starts_at=starts_at,
            timezone=timezone,
            release_usd=release_usd,
        ).run()
    now, amount, current = _charge_inputs(
        subscription_id=subscription_id,
        amount_usd=amount_usd,
        now=now,
        starts_at=starts_at,
        timezone=timezone,
    )
    row = _charge_orm(
        subscription_id=subscription_id,
        amount=amount,
        now=now,
        current=current,
        release=quantize_usd(release_usd),
    )
    return _charge_result(subscription_id, row)


def subscription_usage_charge_statement(
    *,
    subscription_id: int,
    amount_usd: Decimal,
    now: datetime | None = None,
    starts_at: datetime | None = None,
    timezone: str | None = None,
    release_usd: Decimal = ZERO,
) -> BuiltStatement:
    """subscription_usage_charge's UPDATE on PostgreSQL, built but not run (common.statements):
    its `read` answers the windows, or raises Subscription.DoesNotExist."""
    now, amount, current = _charge_inputs(
        subscription_id=subscription_id,
        amount_usd=amount_usd,
        now=now,
        starts_at=starts_at,
        timezone=timezone,
    )
    params = _charge_params(
        subscription_id=subscription_id,
        amount=amount,
        now=now,
        current=current,
        release=quantize_usd(release_usd),
    )
    return BuiltStatement(
        _charge_statement(),
        params,
        partial(_charge_result, subscription_id),
        requires_row=True,
    )


def _charge_inputs(
    *,
    subscription_id: int,
    amount_usd: Decimal,
    now: datetime | None,
    starts_at: datetime | None,
    timezone: str | None,
) -> tuple[datetime, Decimal, dict[str, datetime]]:
    now = now or current_time()
    amount = quantize_usd(amount_usd)
    if amount < 0:
        raise ValueError(f"a charge cannot be negative: {amount}")
    if (starts_at is None) != (timezone is None):
        raise ValueError("pass both the subscription's starts_at and its group's timezone, or neither")
    if starts_at is None:
        starts_at, timezone = (
            Subscription.objects.filter(pk=subscription_id).values_list("starts_at", "group__timezone").get()
        )
    tz = timezone_name(timezone)
    current = {
        kind: windows.subscription_window_start(kind, now, starts_at=starts_at, tz=tz)
        for kind in WINDOW_KINDS
    }
    return now, amount, current


def _charge_result(subscription_id: int, row: tuple | None) -> dict[str, Any]:
    if row is None:
        raise Subscription.DoesNotExist(f"subscription {subscription_id} does not exist")
    return dict(zip(_RETURNED, row, strict=True))


_RETURNED = tuple(
    name for _kind, _label, _limit, used, start in Subscription.WINDOWS for name in (used, start)
)


# Two forms of the same statement: precompiled SQL on PostgreSQL (no query building per charge),
# the ORM elsewhere (SQLite, the embedded default). tests/accounts/test_subscriptions_counters.py
# checks that both leave identical rows.


def _charge_orm(
    *,
    subscription_id: int,
    amount: Decimal,
    now: datetime,
    current: dict[str, datetime],
    release: Decimal = ZERO,
) -> tuple | None:
    term_over = Q(expires_at__lte=now)
    updates: dict = {"held_usd": F("held_usd") - release}
    for kind, _label, _limit, used, start in Subscription.WINDOWS:
        if kind == "daily":
            ended = Q(**{f"{start}__lt": current[kind]})
        else:
            ended = Q(**{f"{start}__lte": now - windows.SUBSCRIPTION_STEPS[kind]})
        expired = Q(**{f"{start}__isnull": True}) | ended | term_over
        updates[used] = Case(
            When(expired, then=Value(amount)), default=F(used) + amount, output_field=_field(used)
        )
        updates[start] = Case(
            When(expired, then=Value(current[kind])), default=F(start), output_field=_field(start)
        )
    with transaction.atomic(savepoint=False):
        if not Subscription.objects.filter(pk=subscription_id).update(**updates):
            return None
        return Subscription.objects.filter(pk=subscription_id).values_list(*_RETURNED).get()


@cache
def _charge_statement() -> str:
    """The ORM form above as one PostgreSQL statement; only quoted model metadata goes in."""
    quote = connection.ops.quote_name
    sets = [f"{quote('held_usd')} = {quote('held_usd')} - %(release)s"]
    for kind, _label, _limit, used, start in Subscription.WINDOWS:
        used, start = quote(used), quote(start)
        ended = f"{start} < %(current_{kind})s" if kind == "daily" else f"{start} <= %(ended_{kind})s"
        expired = f"{start} IS NULL OR {ended} OR {quote('expires_at')} <= %(now)s"
        sets.append(f"{used} = CASE WHEN {expired} THEN %(amount)s ELSE {used} + %(amount)s END")
        sets.append(f"{start} = CASE WHEN {expired} THEN %(current_{kind})s ELSE {start} END")
    return (
        f"UPDATE {quote(Subscription._meta.db_table)} SET {', '.join(sets)} "  # noqa: S608
        f"WHERE {quote('id')} = %(id)s RETURNING {', '.join(quote(name) for name in _RETURNED)}"
    )


def _charge_params(
    *,
    subscription_id: int,
    amount: Decimal,
    now: datetime,
    current: dict[str, datetime],
    release: Decimal = ZERO,
) -> dict[str, Any]:
    params: dict = {"id": subscription_id, "amount": amount, "now": now, "release": release}
    for kind in WINDOW_KINDS:
        params[f"current_{kind}"] = current[kind]
        if kind != "daily":
            params[f"ended_{kind}"] = now - windows.SUBSCRIPTION_STEPS[kind]
    return params
