"""API keys: the secret, configuration, operator actions and the usage counters
(docs/entities.md#api-keys, docs/windows.md#key-windows).

The secret is shown once, on creation; only its SHA-256 is stored, with a short prefix and the
last four characters for display. Status follows one rule (`accounts.rules.key_status`; the
enable dialog's preview, `api_key_resolved_status`, applies the same rule) wherever the
configuration or the quota changes, which is what makes the reactivation rules hold
(docs/windows.md#key-quota): raising the quota above usage, resetting it, clearing the expiry or
moving it into the future turn an exhausted or expired key active again.

Operator actions lock the row (select_for_update) so the status they compute reads counters
that no charge can move underneath them. Charges never lock first: `api_key_usage_charge` is one
conditional UPDATE.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache, partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils.timezone import now as current_time

from accounts import windows
from accounts.models import APIKey, Group, User, timezone_name
from accounts.rules import api_key_hash, ip_rule_conflicts, key_status, parse_ip_rules
from accounts.selectors.keys import DISPLAY_PREFIX_LENGTH, key_group_problem
from accounts.snapshots import snapshots_changed
from common.money import quantize_usd
from common.statements import BuiltStatement

logger = logging.getLogger(__name__)

ZERO = Decimal("0")
SECRET_PREFIX = "sk-"
LAST_USED_RESOLUTION = timedelta(seconds=30)
Status = APIKey.Status

CONFIG_FIELDS = (
    "user",
    "group",
    "name",
    "quota_usd",
    "expires_at",
    "rate_limit_5h_usd",
    "rate_limit_1d_usd",
    "rate_limit_7d_usd",
    "concurrency",
    "ip_allowlist",
    "ip_denylist",
    "timezone",
)
MONEY_CONFIG_FIELDS = ("quota_usd", "rate_limit_5h_usd", "rate_limit_1d_usd", "rate_limit_7d_usd")


def _generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_hex(32)


def _validate(key: APIKey, *, check_group: bool, now: datetime) -> None:
    errors: dict[str, str] = {}
    key.name = (key.name or "").strip()
    if not key.name:
        errors["name"] = "Give the key a name."
    for field in MONEY_CONFIG_FIELDS:
        value = getattr(key, field)
        if value is None or value < 0:
            errors[field] = "Enter 0 (no limit) or a positive amount."
        else:
            setattr(key, field, quantize_usd(value))
    if key.concurrency is None or key.concurrency < 0:
        errors["concurrency"] = "Enter 0 (no limit) or a positive number of requests."
    if key.timezone:
        try:
            ZoneInfo(key.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            errors["timezone"] = f"“{key.timezone}” is not an IANA time zone (e.g. Europe/Berlin)."
    for field in ("ip_allowlist", "ip_denylist"):
        try:
            setattr(key, field, parse_ip_rules(getattr(key, field) or []))
        except ValidationError as error:
            errors[field] = " ".join(error.messages)
    if "ip_allowlist" not in errors and "ip_denylist" not in errors:
        conflicts = ip_rule_conflicts(key.ip_allowlist, key.ip_denylist)
        if conflicts:
            errors["ip_denylist"] = " ".join(conflicts)
    if check_group and key.group_id is not None:
        problem = key_group_problem(user=key.user, group=key.group, now=now)
        if problem:
            errors["group"] = problem
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def api_key_create(
    *,
    user: User,
    group: Group | None,
    name: str,
    quota_usd: Decimal = ZERO,
    expires_at: datetime | None = None,
    rate_limit_5h_usd: Decimal = ZERO,
    rate_limit_1d_usd: Decimal = ZERO,
    rate_limit_7d_usd: Decimal = ZERO,
    concurrency: int = 0,
    ip_allowlist: Iterable[str] = (),
    ip_denylist: Iterable[str] = (),
    timezone: str = "",
    now: datetime | None = None,
) -> tuple[APIKey, str]:
    """Create a key and return it with its plaintext secret, which is never available again."""
    now = now or current_time()
    key = APIKey(
        user=user,
        group=group,
        name=name,
        quota_usd=quota_usd,
        expires_at=expires_at,
        rate_limit_5h_usd=rate_limit_5h_usd,
        rate_limit_1d_usd=rate_limit_1d_usd,
        rate_limit_7d_usd=rate_limit_7d_usd,
        concurrency=concurrency,
        ip_allowlist=list(ip_allowlist),
        ip_denylist=list(ip_denylist),
        timezone=timezone.strip(),
    )
    _validate(key, check_group=True, now=now)
    secret = _generate_secret()
    key.key_hash = api_key_hash(secret)
    key.key_prefix = secret[:DISPLAY_PREFIX_LENGTH]
    key.key_last4 = secret[-4:]
    key.status = key_status(key, now=now, disabled=False)
    key.save()
    snapshots_changed(key_ids=[key.pk])
    logger.info("API key %s (%s) created for %s", key.pk, key.masked, user.email)
    return key, secret


@transaction.atomic
def api_key_update(*, key: APIKey, fields: dict, now: datetime | None = None) -> APIKey:
    """Change configuration; the status is re-resolved, so this is where reactivation happens."""
    now = now or current_time()
    unknown = set(fields) - set(CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"not configuration fields of a key: {sorted(unknown)}")
    locked = APIKey.objects.select_for_update(of=("self",)).select_related("user", "group").get(pk=key.pk)
    if "user" in fields and getattr(fields["user"], "pk", fields["user"]) != locked.user_id:
        # The same secret would start billing another person without anyone telling them.
        raise ValidationError(
            {"user": "The owner of a key cannot change. Create a new key for the other user."}
        )
    rebinding = any(
        getattr(locked, f"{name}_id") != getattr(fields[name], "pk", fields[name])
        for name in ("user", "group")
        if name in fields
    )
    for name, value in fields.items():
        setattr(locked, name, value)
    # A key already bound to a group keeps it even if, say, the subscription has since lapsed:
    # the gateway refuses such requests; the form only stops new bindings.
    _validate(locked, check_group=rebinding, now=now)
    locked.status = key_status(locked, now=now)
    locked.save(update_fields=[*fields, "status", "updated_at"])
    snapshots_changed(key_ids=[locked.pk])
    logger.info("API key %s updated (%s)", locked.pk, ", ".join(sorted(fields)))
    return locked


def _act(
    key_id: int, now: datetime | None, change, *, fields: list[str], disabled: bool | None = None
) -> APIKey:
    with transaction.atomic():
        key = APIKey.objects.select_for_update().get(pk=key_id)
        change(key)
        key.status = key_status(key, now=now or current_time(), disabled=disabled)
        key.save(update_fields=[*fields, "status", "updated_at"])
        snapshots_changed(key_ids=[key.pk])
    return key


def api_key_quota_reset(*, key_id: int, now: datetime | None = None) -> APIKey:
    """Zero the quota used; an exhausted key becomes active (unless it expired meanwhile)."""

    def change(key: APIKey) -> None:
        key.quota_used_usd = ZERO
        key.quota_reset_at = current_time()

    return _act(key_id, now, change, fields=["quota_used_usd", "quota_reset_at"])


def api_key_expiration_clear(*, key_id: int, now: datetime | None = None) -> APIKey:
    def change(key: APIKey) -> None:
        key.expires_at = None

    return _act(key_id, now, change, fields=["expires_at"])


def api_key_windows_reset(*, key_id: int, now: datetime | None = None) -> APIKey:
    """Zero the 5h / 1d / 7d windows; each restarts on the next use."""
    fields = [f for _kind, _label, _limit, used, start in APIKey.WINDOWS for f in (used, start)]

    def change(key: APIKey) -> None:
        for _kind, _label, _limit, used, start in APIKey.WINDOWS:
            setattr(key, used, ZERO)
            setattr(key, start, None)
        key.windows_reset_at = current_time()

    return _act(key_id, now, change, fields=[*fields, "windows_reset_at"])


def api_key_set_enabled(*, key_id: int, enabled: bool, now: datetime | None = None) -> APIKey:
    """Disable, or enable into whatever status the quota and expiry call for."""
    return _act(key_id, now, lambda key: None, fields=[], disabled=not enabled)


@transaction.atomic
def api_key_delete(*, key_id: int) -> None:
    deleted, _ = APIKey.objects.filter(pk=key_id).delete()
    if deleted:
        snapshots_changed(key_ids=[key_id])
        logger.info("API key %s deleted", key_id)


def api_key_expire_due(*, now: datetime | None = None) -> int:
    """Flip active keys past their expiry to expired (the tidy-up job; the gateway checks the time)."""
    with transaction.atomic():
        due = APIKey.objects.filter(status=Status.ACTIVE, expires_at__lte=now or current_time())
        ids = list(due.values_list("pk", flat=True))
        flipped = APIKey.objects.filter(pk__in=ids, status=Status.ACTIVE).update(status=Status.EXPIRED)
        snapshots_changed(key_ids=ids)
    return flipped


# --- the counter engine ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyChargeResult:
    status: str
    quota_used_usd: Decimal
    became_exhausted: bool  # this charge crossed the quota and flipped the key to quota_exhausted
    # usage_5h_usd, window_5h_start, … as this charge left them (the gateway refreshes its copy)
    windows: dict[str, Any] = dataclasses.field(default_factory=dict)


def _field(name: str):
    return APIKey._meta.get_field(name)


def api_key_usage_charge(
    *,
    key_id: int,
    amount_usd: Decimal,
    now: datetime | None = None,
    timezone: str | None = None,
    release_usd: Decimal = ZERO,
) -> KeyChargeResult:
    """Charge one request to a key: quota and the three windows, in one atomic UPDATE.

    Each window is reset lazily inside the UPDATE: it has expired when its start is NULL or at
    least one window length ago, and then its usage becomes this amount and its start the new
    window start (5h: now; 1d / 7d: local midnight of today in the key's timezone). The
    timezone is configuration: `timezone` is the key's as the caller last read it (billing's
    BillingContext carries it; empty means settings.TIME_ZONE), and without it it is read here
    before the UPDATE. The counters never are.
    The status flips to quota_exhausted in the same statement when the new usage reaches a
    non-zero quota. last_used_at is written at most every 30 seconds. `release_usd` lowers the
    key's held amount in the same statement (a batch recording settles its holds this way:
    docs/gateway.md#holds-and-settle).

    The result comes from the UPDATE itself (RETURNING on PostgreSQL; elsewhere a re-read in
    the same transaction, while our write still locks the row), so it is exactly what this
    charge produced.
    """
    if connection.vendor == "postgresql":
        return api_key_usage_charge_statement(
            key_id=key_id, amount_usd=amount_usd, now=now, timezone=timezone, release_usd=release_usd
        ).run()
    now, amount, starts = _charge_inputs(key_id=key_id, amount_usd=amount_usd, now=now, timezone=timezone)
    row = _key_charge_orm(
        key_id=key_id, amount=amount, now=now, starts=starts, release=quantize_usd(release_usd)
    )
    return _key_charge_result(key_id, amount, row)


def api_key_usage_charge_statement(
    *,
    key_id: int,
    amount_usd: Decimal,
    now: datetime | None = None,
    timezone: str | None = None,
    release_usd: Decimal = ZERO,
) -> BuiltStatement:
    """api_key_usage_charge's UPDATE on PostgreSQL, built but not run (common.statements): its
    `read` answers the KeyChargeResult, or raises APIKey.DoesNotExist."""
    now, amount, starts = _charge_inputs(key_id=key_id, amount_usd=amount_usd, now=now, timezone=timezone)
    params = _key_charge_params(
        key_id=key_id, amount=amount, now=now, starts=starts, release=quantize_usd(release_usd)
    )
    return BuiltStatement(
        _key_charge_sql(),
        params,
        partial(_key_charge_result, key_id, amount),
        requires_row=True,
    )


def _charge_inputs(
    *, key_id: int, amount_usd: Decimal, now: datetime | None, timezone: str | None
) -> tuple[datetime, Decimal, dict[str, datetime]]:
    now = now or current_time()
    amount = quantize_usd(amount_usd)
    if amount < 0:
        raise ValueError(f"a charge cannot be negative: {amount}")
    if timezone is None:
        timezone = APIKey.objects.values_list("timezone", flat=True).get(pk=key_id)
    tz = timezone_name(timezone)
    starts = {kind: windows.key_window_start_for(kind, now, tz) for kind in windows.KEY_WINDOW_LENGTHS}
    return now, amount, starts


def _key_charge_result(key_id: int, amount: Decimal, row: tuple | None) -> KeyChargeResult:
    if row is None:
        raise APIKey.DoesNotExist(f"API key {key_id} does not exist")
    status, used, quota, *window_values = row
    crossed_now = quota > 0 and used - amount < quota <= used
    return KeyChargeResult(
        status=status,
        quota_used_usd=used,
        became_exhausted=status == Status.QUOTA_EXHAUSTED and crossed_now,
        windows=dict(zip(_RETURNED[3:], window_values, strict=True)),
    )


# What a charge answers: the status and every counter as this charge left them.
_RETURNED = (
    "status",
    "quota_used_usd",
    "quota_usd",
    *(name for _kind, _label, _limit, used, start in APIKey.WINDOWS for name in (used, start)),
)


# Two forms of the same statement. PostgreSQL runs precompiled SQL with RETURNING: one round trip
# and no query building per charge (the ORM spends most of a charge's CPU compiling the CASEs).
# Other databases (SQLite, the embedded default) run the ORM form and re-read the row.
# tests/accounts/test_keys_counters.py checks that both leave identical rows.


def _key_charge_orm(
    *, key_id: int, amount: Decimal, now: datetime, starts: dict[str, datetime], release: Decimal = ZERO
) -> tuple | None:
    updates: dict = {"quota_used_usd": F("quota_used_usd") + amount, "held_usd": F("held_usd") - release}
    for kind, _label, _limit, used, start in APIKey.WINDOWS:
        length = windows.KEY_WINDOW_LENGTHS[kind]
        expired = Q(**{f"{start}__isnull": True}) | Q(**{f"{start}__lte": now - length})
        updates[used] = Case(
            When(expired, then=Value(amount)), default=F(used) + amount, output_field=_field(used)
        )
        updates[start] = Case(
            When(expired, then=Value(starts[kind])), default=F(start), output_field=_field(start)
        )
    # In an UPDATE every expression reads the old row, so "new used >= quota" is old >= quota - amount.
    crosses = Q(status=Status.ACTIVE, quota_usd__gt=0, quota_used_usd__gte=F("quota_usd") - amount)
    updates["status"] = Case(
        When(crosses, then=Value(Status.QUOTA_EXHAUSTED)), default=F("status"), output_field=_field("status")
    )
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    updates["last_used_at"] = Case(
        When(stale, then=Value(now)), default=F("last_used_at"), output_field=_field("last_used_at")
    )
    # No savepoint inside a caller's transaction: the UPDATE and the re-read only need to share one.
    with transaction.atomic(savepoint=False):
        if not APIKey.objects.filter(pk=key_id).update(**updates):
            return None
        return APIKey.objects.filter(pk=key_id).values_list(*_RETURNED).get()


@cache
def _key_charge_sql() -> str:
    """The ORM form above as one PostgreSQL statement; only quoted model metadata goes in."""
    quote = connection.ops.quote_name
    sets = [
        f"{quote('quota_used_usd')} = {quote('quota_used_usd')} + %(amount)s",
        f"{quote('held_usd')} = {quote('held_usd')} - %(release)s",
    ]
    for kind, _label, _limit, used, start in APIKey.WINDOWS:
        used, start = quote(used), quote(start)
        expired = f"{start} IS NULL OR {start} <= %(expired_{kind})s"
        sets.append(f"{used} = CASE WHEN {expired} THEN %(amount)s ELSE {used} + %(amount)s END")
        sets.append(f"{start} = CASE WHEN {expired} THEN %(start_{kind})s ELSE {start} END")
    status, quota, quota_used = quote("status"), quote("quota_usd"), quote("quota_used_usd")
    sets.append(
        f"{status} = CASE WHEN {status} = %(active)s AND {quota} > 0 AND {quota_used} >= {quota} - %(amount)s "
        f"THEN %(exhausted)s ELSE {status} END"
    )
    last = quote("last_used_at")
    sets.append(f"{last} = CASE WHEN {last} IS NULL OR {last} < %(stale)s THEN %(now)s ELSE {last} END")
    return (
        f"UPDATE {quote(APIKey._meta.db_table)} SET {', '.join(sets)} "  # noqa: S608
        f"WHERE {quote('id')} = %(id)s RETURNING {', '.join(quote(name) for name in _RETURNED)}"
    )


def _key_charge_params(
    *, key_id: int, amount: Decimal, now: datetime, starts: dict[str, datetime], release: Decimal = ZERO
) -> dict[str, Any]:
    params = {
        "id": key_id,
        "amount": amount,
        "release": release,
        "now": now,
        "stale": now - LAST_USED_RESOLUTION,
        "active": Status.ACTIVE.value,
        "exhausted": Status.QUOTA_EXHAUSTED.value,
    }
    for kind, length in windows.KEY_WINDOW_LENGTHS.items():
        params[f"expired_{kind}"] = now - length
        params[f"start_{kind}"] = starts[kind]
    return params
