"""Upstream accounts: create, edit, credentials, row actions and the quota engine
(docs/entities.md#upstream-accounts).

The quota engine is `upstream_account_quota_charge`: billing calls it once per request, inside
its own transaction, with the amount already multiplied by the account's rate multiplier.

Creating, editing (credentials and base URL included) and deleting an account is for an admin
(`actor`; docs/console.md#roles); the row actions (schedulable, clear error, reset quota) are
day-to-day work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from functools import cache, partial

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import connection, models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from accounts.crypto import encrypt_credentials
from accounts.models import MAX_PRIORITY, MIN_PRIORITY, Group, Platform, UpstreamAccount, User
from accounts.roles import ConsoleRole, console_role_required
from accounts.rules import (
    ANTHROPIC_ONLY_TYPES,
    AWS_REGION,
    BEDROCK_AUTH_MODES,
    CREDENTIAL_SECTIONS,
    credential_form_name,
    credential_section,
    is_valid_timezone,
    parse_model_list,
    parse_model_mapping,
)
from accounts.selectors.upstream import upstream_account_credentials
from accounts.snapshots import AccountQuota, snapshots_changed
from accounts.upstream_urls import upstream_url_problem
from accounts.windows import PERIOD_LENGTHS, _boundary_at_or_before, zone
from common.money import quantize_usd
from common.statements import BuiltStatement

Type = UpstreamAccount.Type

# --- Credentials -------------------------------------------------------------------------------


def _merge_credentials(
    *, account_type: str, submitted: dict, stored: dict, stored_type: str | None, clear: Iterable[str]
) -> dict:
    """Build the credentials to store from what the form sent.

    A blank secret keeps the stored one, but only while the account stays the same kind (type and
    Bedrock auth mode): a key typed for one kind is never silently reused for another.
    """
    auth_mode = submitted.get("auth_mode", "") if account_type == Type.BEDROCK else ""
    if account_type == Type.BEDROCK and auth_mode not in dict(BEDROCK_AUTH_MODES):
        raise ValidationError({"auth_mode": "Choose how this account signs in to AWS: SigV4 or API key."})
    section = credential_section(account_type, auth_mode)
    same_kind = stored_type == account_type and stored.get("auth_mode", "") == auth_mode
    clear = set(clear)
    result: dict = {"auth_mode": auth_mode} if auth_mode else {}
    errors: dict[str, str] = {}
    for spec in CREDENTIAL_SECTIONS[section]:
        value = (submitted.get(spec.key) or "").strip()
        if spec.secret and not value and same_kind and spec.key not in clear:
            value = stored.get(spec.key, "")
        name = credential_form_name(section, spec.key)
        if spec.required and not value:
            errors[name] = f"Enter the {spec.label.lower()}."
        elif value and spec.key == "aws_region" and not AWS_REGION.match(value):
            errors[name] = f"{value!r} is not an AWS region name like us-east-1."
        elif value and spec.key == "base_url":
            try:
                URLValidator(schemes=["https", "http"])(value)
            except ValidationError:
                errors[name] = "Enter an http(s) URL."
            else:
                allow_private = settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS
                if problem := upstream_url_problem(value, allow_private=allow_private):
                    errors[name] = problem
        if value:
            result[spec.key] = value
    if errors:
        raise ValidationError(errors)
    return result


# --- Create and edit ---------------------------------------------------------------------------

# Counters and window starts move only through the quota engine and the reset action.
NO_RELEASE = Decimal(0)  # a quota charge that lowers no hold

PROTECTED_FIELDS = (
    "quota_used_usd",
    "quota_daily_used_usd",
    "quota_daily_start",
    "quota_weekly_used_usd",
    "quota_weekly_start",
    "last_used_at",
    "credentials_encrypted",
)


def _validate_account(account: UpstreamAccount, groups: Iterable[Group] | None) -> None:
    errors: dict[str, str] = {}
    if account.type in ANTHROPIC_ONLY_TYPES and account.platform != Platform.ANTHROPIC:
        errors["type"] = f"{account.get_type_display()} accounts exist only on the Anthropic platform."
    if account.cache_ttl_override and not account.supports_cache_ttl_override:
        errors["cache_ttl_override"] = (
            "The cache TTL override is only for Anthropic OAuth and setup-token accounts."
        )
    if account.rate_multiplier is not None and account.rate_multiplier <= 0:
        errors["rate_multiplier"] = "The rate multiplier must be greater than 0."
    if account.priority is not None and not MIN_PRIORITY <= account.priority <= MAX_PRIORITY:
        errors["priority"] = f"The priority is a whole number from {MIN_PRIORITY} to {MAX_PRIORITY:,}."
    if not account.quota_timezone or not is_valid_timezone(account.quota_timezone):
        errors["quota_timezone"] = (
            f"{account.quota_timezone!r} is not an IANA timezone name (e.g. Europe/Berlin)."
        )
    try:
        if not isinstance(account.supported_models, list):
            raise ValidationError("Give a list of model names.")
        account.supported_models = parse_model_list(account.supported_models)
    except ValidationError as error:
        errors["supported_models"] = " ".join(error.messages)
    try:
        mapping = account.model_mapping
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise ValidationError("Give an object of source → target model names.")
        account.model_mapping = parse_model_mapping(
            f"{source} → {target}" for source, target in mapping.items()
        )
    except ValidationError as error:
        errors["model_mapping"] = " ".join(error.messages)
    if groups is not None:
        wrong = [g.name for g in groups if g.platform != account.platform]
        if wrong:
            errors["groups"] = (
                f"Only {account.get_platform_display()} groups can use this account: not {', '.join(wrong)}."
            )
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def upstream_account_create(
    *, fields: dict, credentials: dict, groups: Iterable[Group] | None = None, actor: User | None
) -> UpstreamAccount:
    console_role_required(actor, ConsoleRole.ADMIN, doing="add upstream accounts")
    fields = {k: v for k, v in fields.items() if k not in PROTECTED_FIELDS}
    fields.setdefault("quota_timezone", settings.TIME_ZONE)
    account = UpstreamAccount(**fields)
    groups = list(groups) if groups is not None else None
    _validate_account(account, groups)
    account.credentials_encrypted = encrypt_credentials(
        _merge_credentials(
            account_type=account.type, submitted=credentials, stored={}, stored_type=None, clear=()
        )
    )
    account.full_clean()
    account.save()
    if groups:
        account.groups.set(groups, through_defaults={"priority": account.priority})
    snapshots_changed(account_ids=[account.pk], group_ids=[g.pk for g in groups or ()])
    return account


@transaction.atomic
def upstream_account_update(
    *,
    account: UpstreamAccount,
    fields: dict,
    credentials: dict,
    groups: Iterable[Group] | None = None,
    clear_credentials: Iterable[str] = (),
    actor: User | None,
) -> UpstreamAccount:
    """Save the edited fields and credentials. Used amounts and window starts are never written here."""
    console_role_required(actor, ConsoleRole.ADMIN, doing="change upstream accounts and their credentials")
    stored_type = UpstreamAccount.objects.values_list("type", flat=True).get(pk=account.pk)
    fields = {k: v for k, v in fields.items() if k not in PROTECTED_FIELDS}
    for name, value in fields.items():
        setattr(account, name, value)
    groups = list(groups) if groups is not None else None
    _validate_account(account, groups)
    account.credentials_encrypted = encrypt_credentials(
        _merge_credentials(
            account_type=account.type,
            submitted=credentials,
            stored=upstream_account_credentials(account),
            stored_type=stored_type,
            clear=clear_credentials,
        )
    )
    account.full_clean()
    account.save(update_fields=[*fields.keys(), "credentials_encrypted", "updated_at"])
    member_of: set[int] = set()
    if groups is not None:
        member_of = set(account.groups.values_list("pk", flat=True)) | {g.pk for g in groups}
        account.groups.set(groups, through_defaults={"priority": account.priority})
    snapshots_changed(account_ids=[account.pk], group_ids=member_of)
    return account


# --- Row actions -------------------------------------------------------------------------------


def upstream_account_set_schedulable(*, account_id: int, schedulable: bool) -> None:
    UpstreamAccount.objects.filter(pk=account_id).update(schedulable=schedulable, updated_at=timezone.now())
    snapshots_changed(account_ids=[account_id])


def upstream_account_pause_expired(*, now: datetime | None = None) -> int:
    """Stop scheduling accounts past `expires_at` that ask for it (`auto_pause_on_expired`); how
    many were paused (the tidy-up job, docs/jobs.md#what-runs; the gateway skips an expired
    account by its time anyway). Accounts already not schedulable are not touched or announced;
    an expired account made schedulable again is paused again on the next run."""
    with transaction.atomic():
        due = UpstreamAccount.objects.filter(
            auto_pause_on_expired=True, schedulable=True, expires_at__lte=now or timezone.now()
        )
        ids = list(due.values_list("pk", flat=True))
        paused = UpstreamAccount.objects.filter(pk__in=ids, schedulable=True).update(
            schedulable=False, updated_at=timezone.now()
        )
        snapshots_changed(account_ids=ids)
    return paused


def upstream_account_clear_error(*, account_id: int) -> None:
    """Back to active with the message cleared; only an account in error is touched."""
    cleared = UpstreamAccount.objects.filter(pk=account_id, status=UpstreamAccount.Status.ERROR).update(
        status=UpstreamAccount.Status.ACTIVE, error_message="", updated_at=timezone.now()
    )
    if cleared:
        snapshots_changed(account_ids=[account_id])


def upstream_account_quota_reset(*, account_id: int) -> None:
    """Zero the total, daily and weekly used amounts and clear both window starts."""
    UpstreamAccount.objects.filter(pk=account_id).update(
        quota_used_usd=Decimal(0),
        quota_daily_used_usd=Decimal(0),
        quota_daily_start=None,
        quota_weekly_used_usd=Decimal(0),
        quota_weekly_start=None,
        quota_reset_at=timezone.now(),
        updated_at=timezone.now(),
    )
    snapshots_changed(account_ids=[account_id])


@transaction.atomic
def upstream_account_delete(*, account: UpstreamAccount, actor: User | None) -> None:
    """Delete the account and take its id out of every group's model routing."""
    console_role_required(actor, ConsoleRole.ADMIN, doing="delete upstream accounts")
    groups = list(Group.objects.select_for_update().filter(memberships__account=account))
    for group in groups:
        routing = {
            pattern: [i for i in ids if i != account.pk] for pattern, ids in group.model_routing.items()
        }
        if routing != group.model_routing:
            Group.objects.filter(pk=group.pk).update(model_routing=routing)
    snapshots_changed(account_ids=[account.pk], group_ids=[group.pk for group in groups])
    account.delete()


# --- The quota engine --------------------------------------------------------------------------


def _period_expired(
    *, field: str, now: datetime, period: str, mode: str, hour: int, weekday: int, tz: str
) -> Q:
    """A WHERE-style condition that is true when the stored period has expired at `now`.

    It must agree with accounts.windows.is_period_expired, which says: expired iff start is NULL
    or now >= period_end(start).

    - rolling: period_end(start) = start + 24h / 168h, so expired iff start <= now - length.
      The threshold is computed here; the comparison runs in SQL against the stored start.
    - fixed: period_end(start) is the first reset boundary strictly after start. That boundary is
      <= now exactly when some boundary b has start < b <= now, i.e. when the latest boundary at
      or before now (B) is later than start. B depends only on now and the reset settings, so it
      is computed here in the account's timezone (DST rules and all) and SQL compares start < B.

    Either way the counters themselves are never read into Python.
    """
    threshold = _period_threshold(now=now, period=period, mode=mode, hour=hour, weekday=weekday, tz=tz)
    compare = "lte" if mode == UpstreamAccount.ResetMode.ROLLING else "lt"
    return Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__{compare}": threshold})


def _period_threshold(*, now: datetime, period: str, mode: str, hour: int, weekday: int, tz: str) -> datetime:
    """The instant _period_expired compares the stored start with (see there)."""
    if mode == UpstreamAccount.ResetMode.ROLLING:
        return now - PERIOD_LENGTHS[period]
    return _boundary_at_or_before(now, hour, weekday if period == "weekly" else None, zone(tz))


def upstream_account_quota_charge(
    *,
    account_id: int,
    amount_usd: Decimal,
    now: datetime | None = None,
    rules: AccountQuota | None = None,
    release_usd: Decimal = NO_RELEASE,
) -> AccountQuota:
    """Add `amount_usd` to the account's total, daily and weekly quota usage in ONE atomic UPDATE;
    the quota as it left it (limits and settings from `rules`, used amounts and starts from the row).

    `amount_usd` is what the account's quota counts: the request's raw cost already multiplied by
    the account's rate_multiplier (docs/pricing.md#where-the-cost-goes); billing passes it, this
    function does not multiply. It is quantised to 8 places first, so every counter moves by
    exactly the same amount.

    Lazy reset (docs/windows.md#lazy-resets, docs/windows.md#reset-modes): for each of daily and
    weekly, if the stored period has expired at `now`, used becomes this amount and the window
    starts at `now`; otherwise used += amount.
    The decision is a CASE inside the UPDATE, so PostgreSQL evaluates it against the row as it is
    when the row lock is taken: concurrent charges serialise on the row and none is lost.

    The reset settings (mode, hour, weekday, timezone) are configuration, not counters: `rules`
    is the account's quota as the caller last read it (billing's BillingContext carries it; only
    its reset settings are used, never its used amounts), and without it it is read here first. A concurrent edit of them can at worst decide a request by the old
    rule. Also records `last_used_at`. Raises UpstreamAccount.DoesNotExist for an unknown id.
    `release_usd` lowers the account's held amount in the same statement (a batch recording
    settles its holds this way).
    """
    if connection.vendor == "postgresql":
        return upstream_account_quota_charge_statement(
            account_id=account_id, amount_usd=amount_usd, now=now, rules=rules, release_usd=release_usd
        ).run()
    now = now or timezone.now()
    amount = quantize_usd(amount_usd)
    if rules is None:
        rules = AccountQuota.read_rules(account_id)
    row = _quota_charge_orm(
        account_id=account_id,
        amount=amount,
        now=now,
        rules=rules,
        tz=rules.zone,
        release=quantize_usd(release_usd),
    )
    return _quota_charge_result(account_id, rules, row)


def upstream_account_quota_charge_statement(
    *,
    account_id: int,
    amount_usd: Decimal,
    now: datetime | None = None,
    rules: AccountQuota | None = None,
    release_usd: Decimal = NO_RELEASE,
) -> BuiltStatement:
    """upstream_account_quota_charge's UPDATE on PostgreSQL, built but not run
    (common.statements): its `read` answers the quota, or raises UpstreamAccount.DoesNotExist."""
    now = now or timezone.now()
    amount = quantize_usd(amount_usd)
    if rules is None:
        rules = AccountQuota.read_rules(account_id)
    params = {"id": account_id, "amount": amount, "now": now, "release": quantize_usd(release_usd)}
    for period in ("daily", "weekly"):
        mode, hour, weekday = rules.period(period)
        params[period] = _period_threshold(
            now=now, period=period, mode=mode, hour=hour, weekday=weekday, tz=rules.zone
        )
    return BuiltStatement(
        _quota_charge_statement(rules.daily_reset_mode, rules.weekly_reset_mode),
        params,
        partial(_quota_charge_result, account_id, rules),
        requires_row=True,
    )


def _quota_charge_result(account_id: int, rules: AccountQuota, row: tuple | None) -> AccountQuota:
    if row is None:
        raise UpstreamAccount.DoesNotExist(f"upstream account {account_id} does not exist")
    return dataclasses.replace(rules, **dict(zip(_QUOTA_RETURNED, row, strict=True)))


# AccountQuota attribute -> column, for what a charge answers.
_QUOTA_RETURNED = ("used_usd", "daily_used_usd", "daily_start", "weekly_used_usd", "weekly_start")
_QUOTA_COLUMNS = tuple(AccountQuota.COLUMNS[name] for name in _QUOTA_RETURNED)


# Two forms of the same statement: precompiled SQL on PostgreSQL (no query building per charge),
# the ORM elsewhere (SQLite, the embedded default). tests/accounts/test_quota.py checks that both
# leave identical rows.


def _quota_charge_orm(
    *,
    account_id: int,
    amount: Decimal,
    now: datetime,
    rules: AccountQuota,
    tz: str,
    release: Decimal = NO_RELEASE,
) -> tuple | None:
    money = models.DecimalField(max_digits=20, decimal_places=8)
    stamp = Value(now, output_field=models.DateTimeField())
    changes: dict = {
        "quota_used_usd": F("quota_used_usd") + Value(amount, output_field=money),
        "quota_held_usd": F("quota_held_usd") - Value(release, output_field=money),
        # Coalesce first: SQLite's MAX() is NULL when any argument is (PostgreSQL ignores NULLs).
        "last_used_at": Greatest(Coalesce(F("last_used_at"), stamp), stamp),
    }
    for period in ("daily", "weekly"):
        used, start = f"quota_{period}_used_usd", f"quota_{period}_start"
        mode, hour, weekday = rules.period(period)
        expired = _period_expired(
            field=start, now=now, period=period, mode=mode, hour=hour, weekday=weekday, tz=tz
        )
        changes[used] = Case(
            When(expired, then=Value(amount, output_field=money)),
            default=F(used) + Value(amount, output_field=money),
            output_field=money,
        )
        changes[start] = Case(
            When(expired, then=Value(now, output_field=models.DateTimeField())),
            default=F(start),
            output_field=models.DateTimeField(),
        )
    with transaction.atomic(savepoint=False):
        if not UpstreamAccount.objects.filter(pk=account_id).update(**changes):
            return None
        return UpstreamAccount.objects.filter(pk=account_id).values_list(*_QUOTA_COLUMNS).get()


@cache
def _quota_charge_statement(daily_mode: str, weekly_mode: str) -> str:
    """The ORM form as PostgreSQL SQL, for one pair of reset modes (they pick < or <=)."""
    quote = connection.ops.quote_name
    total, last = quote("quota_used_usd"), quote("last_used_at")
    sets = [
        f"{total} = {total} + %(amount)s",
        f"{last} = GREATEST(COALESCE({last}, %(now)s), %(now)s)",
        f"{quote('quota_held_usd')} = {quote('quota_held_usd')} - %(release)s",
    ]
    for period, mode in (("daily", daily_mode), ("weekly", weekly_mode)):
        used, start = quote(f"quota_{period}_used_usd"), quote(f"quota_{period}_start")
        # rolling: start <= now - length; fixed: start < the latest boundary (see _period_expired).
        compare = "<=" if mode == UpstreamAccount.ResetMode.ROLLING else "<"
        expired = f"{start} IS NULL OR {start} {compare} %({period})s"
        sets.append(f"{used} = CASE WHEN {expired} THEN %(amount)s ELSE {used} + %(amount)s END")
        sets.append(f"{start} = CASE WHEN {expired} THEN %(now)s ELSE {start} END")
    return (
        f"UPDATE {quote(UpstreamAccount._meta.db_table)} SET {', '.join(sets)} "  # noqa: S608
        f"WHERE {quote('id')} = %(id)s RETURNING {', '.join(quote(column) for column in _QUOTA_COLUMNS)}"
    )


# --- Marks from the gateway's failover (docs/gateway.md#failover) -----------------------------


def upstream_account_mark_rate_limited(*, account_id: int, until: datetime) -> None:
    """The upstream answered 429: keep the account out of scheduling until `until`. A later mark
    never shortens an earlier one."""
    UpstreamAccount.objects.filter(pk=account_id).filter(
        Q(rate_limited_until__isnull=True) | Q(rate_limited_until__lt=until)
    ).update(rate_limited_until=until, updated_at=timezone.now())
    snapshots_changed(account_ids=[account_id])


def upstream_account_mark_error(*, account_id: int, message: str) -> None:
    """The upstream refused the credential (401 / 403): status `error` with its message, until an
    operator clears it (upstream_account_clear_error)."""
    UpstreamAccount.objects.filter(pk=account_id).update(
        status=UpstreamAccount.Status.ERROR, error_message=message[:2000], updated_at=timezone.now()
    )
    snapshots_changed(account_ids=[account_id])
