"""Users: create, edit, enable/disable, balance adjustments.

Only an admin changes a staff member or superuser, or gives or changes console access
(docs/console.md#roles): each service that could do so takes the acting user as `actor` (None is
the system itself) and raises PermissionDenied otherwise, whatever view called it.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import F

from accounts.models import BalanceHistory, User, UserGroupRate
from accounts.roles import ConsoleRole, console_role_required, user_change_allowed
from accounts.snapshots import snapshots_changed
from common.money import quantize_usd
from common.statements import BuiltStatement

ZERO = Decimal(0)

# The fields that decide what someone may do in the console.
ACCESS_FIELDS = ("is_staff", "is_superuser", "console_role")


def _stored_is_staff(user_id: int) -> bool:
    """Staff as saved, not as a bound form may have just rewritten the instance."""
    flags = User.objects.filter(pk=user_id).values_list("is_staff", "is_superuser").first()
    return bool(flags and any(flags))


def _user_change_required(actor: User | None, *, user_id: int, doing: str) -> None:
    if not user_change_allowed(actor, target_is_staff=_stored_is_staff(user_id)):
        raise PermissionDenied(f"Only an admin can {doing} a staff member.")


def _forget_role_without_staff(fields: dict) -> None:
    # A role kept on a customer would come back unseen if they were made staff again.
    if "is_staff" in fields and not fields["is_staff"]:
        fields["console_role"] = ConsoleRole.VIEWER


@transaction.atomic
def user_create(*, email: str, password: str | None, fields: dict, actor: User | None) -> User:
    groups = fields.pop("allowed_groups", None)
    if any(fields.get(name) for name in ("is_staff", "is_superuser")):
        console_role_required(actor, ConsoleRole.ADMIN, doing="give console access")
    _forget_role_without_staff(fields)
    user = User(email=email.strip().lower(), **fields)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    if groups is not None:
        user.allowed_groups.set(groups)
    return user


@transaction.atomic
def user_update(*, user: User, fields: dict, actor: User | None) -> User:
    _user_change_required(actor, user_id=user.pk, doing="change")
    groups = fields.pop("allowed_groups", None)
    # Balance and usage counters are never written through the edit form.
    for protected in ("balance", "total_recharged", "last_active_at"):
        fields.pop(protected, None)
    _forget_role_without_staff(fields)
    stored = User.objects.filter(pk=user.pk).values(*ACCESS_FIELDS).get()
    if any(name in fields and fields[name] != stored[name] for name in ACCESS_FIELDS):
        console_role_required(actor, ConsoleRole.ADMIN, doing="change console access")
        if actor is not None and actor.pk == user.pk:
            # One admin always remains: the one who would have demoted themselves.
            raise ValidationError({"console_access": "You cannot change your own console access."})
    for name, value in fields.items():
        setattr(user, name, value)
    user.full_clean(exclude=["password"])
    user.save(update_fields=[*fields.keys(), "updated_at"])
    if groups is not None:
        user.allowed_groups.set(groups)
    snapshots_changed(user_ids=[user.pk])
    return user


def user_set_status(*, user: User, status: str, actor: User | None) -> User:
    if status not in User.Status.values:
        raise ValidationError({"status": f"Unknown status {status!r}."})
    _user_change_required(actor, user_id=user.pk, doing="enable or disable")
    if actor is not None and actor.pk == user.pk and status != User.Status.ACTIVE:
        raise ValidationError({"status": "You cannot disable your own account."})
    User.objects.filter(pk=user.pk).update(status=status, is_active=status == User.Status.ACTIVE)
    snapshots_changed(user_ids=[user.pk])
    user.refresh_from_db(fields=["status", "is_active"])
    return user


@transaction.atomic
def user_balance_adjust(
    *, user_id: int, operation: str, amount: Decimal, note: str, changed_by: User | None
) -> BalanceHistory:
    """Set, add or subtract an amount, atomically, leaving a history row.

    The row is locked for the transaction, so the before/after recorded in
    history are exactly what concurrent adjustments saw, and the new balance
    is written by the database (F()), not computed from a stale read.
    `changed_by` is the acting user: a staff member's balance (an operator's own
    included) is for an admin to change.
    """
    _user_change_required(changed_by, user_id=user_id, doing="change the balance of")
    amount = quantize_usd(amount)
    if amount < 0:
        raise ValidationError({"amount": "Enter a positive amount; choose Subtract to take money away."})
    if operation in (BalanceHistory.Operation.ADD, BalanceHistory.Operation.SUBTRACT) and amount == 0:
        raise ValidationError({"amount": "The amount must be greater than zero."})

    before = User.objects.select_for_update().values_list("balance", flat=True).get(pk=user_id)
    users = User.objects.filter(pk=user_id)
    if operation == BalanceHistory.Operation.SET:
        users.update(balance=amount)
        after = amount
    elif operation == BalanceHistory.Operation.ADD:
        users.update(balance=F("balance") + amount, total_recharged=F("total_recharged") + amount)
        after = before + amount
    elif operation == BalanceHistory.Operation.SUBTRACT:
        # Only billing may overdraw; an operator cannot push a balance below zero.
        if not users.filter(balance__gte=amount).update(balance=F("balance") - amount):
            raise ValidationError(
                {
                    "amount": f"The balance is ${before:,.2f}; subtracting ${amount:,.2f} would make it negative."
                }
            )
        after = before - amount
    else:
        raise ValidationError({"operation": f"Unknown operation {operation!r}."})

    snapshots_changed(user_ids=[user_id])
    return BalanceHistory.objects.create(
        user_id=user_id,
        operation=operation,
        amount=amount,
        balance_before=before,
        balance_after=after,
        note=note.strip(),
        changed_by=changed_by,
    )


def user_group_rate_set(
    *, user: User, group_id: int, rate_multiplier: Decimal, actor: User | None
) -> UserGroupRate:
    """Give a user their own multiplier for a group (replacing any earlier one)."""
    _user_change_required(actor, user_id=user.pk, doing="change the rates of")
    if rate_multiplier <= 0:
        raise ValidationError({"rate_multiplier": "The multiplier must be greater than zero."})
    rate, _ = UserGroupRate.objects.update_or_create(
        user=user, group_id=group_id, defaults={"rate_multiplier": rate_multiplier}
    )
    snapshots_changed(user_ids=[user.pk])
    return rate


def user_group_rate_remove(*, user: User, rate_id: int, actor: User | None) -> None:
    _user_change_required(actor, user_id=user.pk, doing="change the rates of")
    if UserGroupRate.objects.filter(user=user, pk=rate_id).delete()[0]:
        snapshots_changed(user_ids=[user.pk])


def user_balance_charge(*, user_id: int, amount_usd: Decimal, release_usd: Decimal = ZERO) -> Decimal | None:
    """Take a billed amount off the balance in one atomic UPDATE; the balance it left (None for an
    unknown user).

    Billing may overdraw: the request was already served, so the balance can go negative
    (docs/recording.md#atomic-counters) and the gateway refuses the next one. No history row:
    the usage ledger is the record of every charge. `release_usd` lowers the balance's held amount
    in the same statement (a batch recording settles its holds this way).
    """
    amount, release = quantize_usd(amount_usd), quantize_usd(release_usd)
    if connection.vendor != "postgresql":
        with transaction.atomic(savepoint=False):
            User.objects.filter(pk=user_id).update(
                balance=F("balance") - amount, balance_held=F("balance_held") - release
            )
            return User.objects.filter(pk=user_id).values_list("balance", flat=True).first()
    # The same statement, precompiled: billing runs it for every request.
    return user_balance_charge_statement(user_id=user_id, amount_usd=amount, release_usd=release).run()


def user_balance_charge_statement(
    *, user_id: int, amount_usd: Decimal, release_usd: Decimal = ZERO
) -> BuiltStatement:
    """user_balance_charge's UPDATE on PostgreSQL, built but not run (common.statements): its
    `read` answers the balance it left, None for an unknown user."""
    amount, release = quantize_usd(amount_usd), quantize_usd(release_usd)
    return BuiltStatement(_balance_charge_sql(), [amount, release, user_id], _first_column)


def _first_column(row: tuple | None) -> Decimal | None:
    return row[0] if row else None


@cache
def _balance_charge_sql() -> str:
    quote = connection.ops.quote_name
    balance, held = quote("balance"), quote("balance_held")
    return (
        f"UPDATE {quote(User._meta.db_table)} SET {balance} = {balance} - %s, {held} = {held} - %s "  # noqa: S608
        f"WHERE {quote('id')} = %s RETURNING {balance}"
    )
