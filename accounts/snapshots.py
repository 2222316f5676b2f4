"""Snapshots of the accounts app's rows: what the gateway caches and billing prices from.

A snapshot is a small immutable object built by the app that owns the rows, in a fixed number of
queries, and serialisable to and from a plain JSON-able dict (Decimals as strings, datetimes in
ISO form, never pickle) so a cache such as Redis can hold it. Each top-level snapshot carries
`SCHEMA`, bumped whenever its shape changes so a deploy never reads an entry written by older
code, and `loaded_at`. Counters in a snapshot (usage, balance, quota used) are as of `loaded_at`.

Other apps read these snapshots, never the rows. Every service that changes a row a snapshot
reads calls `snapshots_changed`, which tells every registered listener (the gateway's cache)
which ids changed once the transaction commits (docs/gateway.md#auth-snapshot,
docs/recording.md#billing-context).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any, ClassVar, Self

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.db import transaction
from django.db.models import Case, OuterRef, Subquery, Value, When
from django.utils import timezone

from accounts import windows
from accounts.crypto import decrypt_credentials
from accounts.models import (
    APIKey,
    Group,
    GroupAccount,
    Subscription,
    UpstreamAccount,
    User,
    UserGroupRate,
    timezone_name,
)
from accounts.rules import group_routed_account_ids

logger = logging.getLogger(__name__)

type IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SnapshotSchemaError(ValueError):
    """A stored snapshot was written by code with another SCHEMA: treat it as a cache miss."""


# --- JSON form ---------------------------------------------------------------------------------
# One codec for every snapshot type (channels' included): encoding follows the values, decoding
# follows the dataclass field types, so a new field needs no serialisation code.


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, frozenset | set):
        return sorted(_encode(item) for item in value)
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _encode(item) for key, item in value.items()}
    return value


@cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _decode(kind: Any, value: Any) -> Any:
    kind = getattr(kind, "__value__", kind)  # a `type X = ...` alias
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        if set(args) == {ipaddress.IPv4Network, ipaddress.IPv6Network}:
            return ipaddress.ip_network(value)
        (kind,) = [arg for arg in args if arg is not type(None)]
        return _decode(kind, value)
    if kind is Decimal:
        return Decimal(value)
    if kind is datetime:
        return datetime.fromisoformat(value)
    if kind is int:
        return int(value)  # dict keys come back from JSON as strings
    if origin is tuple:
        return tuple(_decode(args[0], item) for item in value)
    if origin is frozenset:
        return frozenset(_decode(args[0], item) for item in value)
    if origin is dict:
        return {_decode(args[0], key): _decode(args[1], item) for key, item in value.items()}
    if dataclasses.is_dataclass(kind):
        return kind(**{name: _decode(hint, value[name]) for name, hint in _field_types(kind).items()})
    return value


def snapshot_as_dict(snapshot: Any) -> dict[str, Any]:
    """A JSON-able dict of a snapshot, with its SCHEMA under "schema"."""
    return {"schema": type(snapshot).SCHEMA, **_encode(snapshot)}


def snapshot_from_dict[T](cls: type[T], data: dict[str, Any]) -> T:
    """The snapshot `snapshot_as_dict` wrote; SnapshotSchemaError if another SCHEMA wrote it."""
    if data.get("schema") != cls.SCHEMA:  # type: ignore[attr-defined]
        raise SnapshotSchemaError(f"{cls.__name__} schema {data.get('schema')!r}, expected {cls.SCHEMA}")  # type: ignore[attr-defined]
    return _decode(cls, data)


class JSONSnapshot:
    """as_dict() / from_dict() for a top-level snapshot."""

    __slots__ = ()
    SCHEMA: ClassVar[int]

    def as_dict(self) -> dict[str, Any]:
        return snapshot_as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return snapshot_from_dict(cls, data)


# --- Keys, with their user, group and subscription ---------------------------------------------


@dataclass(frozen=True, slots=True)
class UserSnapshot:
    id: int
    status: str
    is_active: bool
    balance: Decimal
    concurrency: int
    rpm_limit: int  # 0 = no limit
    allowed_group_ids: frozenset[int]  # the exclusive groups this user may use
    group_rate_multiplier: Decimal | None  # the user's own multiplier for the key's group, if set

    @property
    def is_enabled(self) -> bool:
        return self.status == User.Status.ACTIVE and self.is_active


@dataclass(frozen=True, slots=True)
class GroupMember:
    account_id: int
    priority: int  # the account's priority inside this group; lower is preferred


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    id: int
    name: str
    platform: str
    status: str
    is_exclusive: bool
    subscription_type: str
    # Subscription windows: None or negative = unlimited; 0 = no usage allowed.
    daily_limit_usd: Decimal | None
    weekly_limit_usd: Decimal | None
    monthly_limit_usd: Decimal | None
    rate_multiplier: Decimal
    rpm_limit: int
    timezone: str  # as configured: empty means settings.TIME_ZONE
    model_routing: dict[str, tuple[int, ...]]
    model_routing_enabled: bool
    fallback_group_id: int | None
    fallback_group_on_invalid_request_id: int | None
    claude_code_only: bool
    allow_image_generation: bool
    image_price_1k: Decimal | None
    image_price_2k: Decimal | None
    image_price_4k: Decimal | None
    members: tuple[GroupMember, ...]  # in the order the gateway prefers them

    @property
    def is_active(self) -> bool:
        return self.status == Group.Status.ACTIVE

    @property
    def is_subscription(self) -> bool:
        return self.subscription_type == Group.SubscriptionType.SUBSCRIPTION

    @property
    def timezone_name(self) -> str:
        return timezone_name(self.timezone)

    def routed_account_ids(self, model: str) -> Sequence[int] | None:
        """The accounts model routing sends `model` to, or None (no rule, or routing off)."""
        return group_routed_account_ids(self, model)


@dataclass(frozen=True, slots=True)
class SubscriptionSnapshot:
    id: int
    status: str
    starts_at: datetime
    expires_at: datetime
    daily_usage_usd: Decimal
    weekly_usage_usd: Decimal
    monthly_usage_usd: Decimal
    daily_window_start: datetime | None
    weekly_window_start: datetime | None
    monthly_window_start: datetime | None

    def is_live(self, now: datetime) -> bool:
        return self.status in Subscription.LIVE_STATUSES and self.expires_at > now


@dataclass(frozen=True, slots=True)
class KeySnapshot(JSONSnapshot):
    """An API key with everything admission and charging read about it, its user and its group."""

    SCHEMA: ClassVar[int] = 2  # 2: concurrency

    id: int
    key_hash: str
    name: str
    user_id: int
    group_id: int | None
    status: str
    expires_at: datetime | None
    ip_allowlist: tuple[IPNetwork, ...]
    ip_denylist: tuple[IPNetwork, ...]
    quota_usd: Decimal  # 0 = unlimited
    quota_used_usd: Decimal
    rate_limit_5h_usd: Decimal  # 0 = no limit
    rate_limit_1d_usd: Decimal
    rate_limit_7d_usd: Decimal
    concurrency: int  # requests in flight with this key; 0 = no limit
    usage_5h_usd: Decimal
    usage_1d_usd: Decimal
    usage_7d_usd: Decimal
    window_5h_start: datetime | None
    window_1d_start: datetime | None
    window_7d_start: datetime | None
    timezone: str  # as configured: empty means settings.TIME_ZONE
    user: UserSnapshot
    group: GroupSnapshot | None
    # For a subscription group: the live subscription of (user, group), else the latest one.
    subscription: SubscriptionSnapshot | None
    loaded_at: datetime

    @property
    def timezone_name(self) -> str:
        return timezone_name(self.timezone)


_KEY_FIELDS = (
    "id",
    "key_hash",
    "name",
    "user_id",
    "group_id",
    "status",
    "expires_at",
    "quota_usd",
    "quota_used_usd",
    "rate_limit_5h_usd",
    "rate_limit_1d_usd",
    "rate_limit_7d_usd",
    "concurrency",
    "usage_5h_usd",
    "usage_1d_usd",
    "usage_7d_usd",
    "window_5h_start",
    "window_1d_start",
    "window_7d_start",
    "timezone",
)
_GROUP_FIELDS = tuple(
    f.name for f in dataclasses.fields(GroupSnapshot) if f.name not in ("model_routing", "members")
)
_SUBSCRIPTION_FIELDS = tuple(f.name for f in dataclasses.fields(SubscriptionSnapshot))
_LIVE_FIRST = Case(When(status__in=Subscription.LIVE_STATUSES, then=Value(0)), default=Value(1))


def key_snapshot_load(key_hash: str) -> KeySnapshot | None:
    """The snapshot of the key with this SHA-256, or None for an unknown hash.

    Two queries for a key without a group, three with a group, four with a subscription group.
    """
    return _key_snapshot(key_hash=key_hash)


def key_snapshot_load_by_id(key_id: int) -> KeySnapshot | None:
    """`key_snapshot_load` by the key's id (for callers that hold the id, like usage_record)."""
    return _key_snapshot(pk=key_id)


def _key_snapshot(**lookup: Any) -> KeySnapshot | None:
    override = UserGroupRate.objects.filter(user_id=OuterRef("user_id"), group_id=OuterRef("group_id"))
    key = (
        APIKey.objects.select_related("user", "group")
        .annotate(group_rate_override=Subquery(override.values("rate_multiplier")[:1]))
        .filter(**lookup)
        .first()
    )
    if key is None:
        return None
    user, group = key.user, key.group
    allowed = frozenset(user.allowed_groups.values_list("pk", flat=True))
    subscription = None
    if group is not None and group.is_subscription:
        subscription = _subscription_to_charge(user_id=user.pk, group_id=group.pk)
    return KeySnapshot(
        **{name: getattr(key, name) for name in _KEY_FIELDS},
        ip_allowlist=_networks(key.ip_allowlist),
        ip_denylist=_networks(key.ip_denylist),
        user=UserSnapshot(
            id=user.pk,
            status=user.status,
            is_active=user.is_active,
            balance=user.balance,
            concurrency=user.concurrency,
            rpm_limit=user.rpm_limit,
            allowed_group_ids=allowed,
            group_rate_multiplier=key.group_rate_override,
        ),
        group=None if group is None else _group_snapshot(group),
        subscription=subscription,
        loaded_at=timezone.now(),
    )


def _networks(rules: Iterable[str]) -> tuple[IPNetwork, ...]:
    # Stored rules were normalised by the key service; strict=False still accepts a host address.
    return tuple(ipaddress.ip_network(rule, strict=False) for rule in rules or ())


def _group_snapshot(group: Group) -> GroupSnapshot:
    members = (
        GroupAccount.objects.filter(group=group)
        .order_by("priority", "account__priority", "id")
        .values_list("account_id", "priority")
    )
    return GroupSnapshot(
        **{name: getattr(group, name) for name in _GROUP_FIELDS},
        model_routing={
            pattern: tuple(int(i) for i in ids) for pattern, ids in (group.model_routing or {}).items()
        },
        members=tuple(GroupMember(account_id, priority) for account_id, priority in members),
    )


def _subscription_to_charge(*, user_id: int, group_id: int) -> SubscriptionSnapshot | None:
    """The live subscription; failing that (it lapsed) the latest one, so a request admitted under
    a subscription that ends mid-request is still charged to it. One query."""
    row = (
        Subscription.objects.filter(user_id=user_id, group_id=group_id)
        .order_by(_LIVE_FIRST, "-expires_at", "-pk")
        .values(*_SUBSCRIPTION_FIELDS)
        .first()
    )
    return None if row is None else SubscriptionSnapshot(**row)


# --- Upstream accounts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountQuota:
    """An account's quota: limits, used amounts and window starts, and the reset rules.

    One type for the quota badge's display rule, the gateway's "is this account over its quota",
    and the reset configuration the charge's UPDATE needs before it runs. 0 limits mean none.
    """

    limit_usd: Decimal
    used_usd: Decimal
    daily_limit_usd: Decimal
    daily_used_usd: Decimal
    daily_start: datetime | None
    daily_reset_mode: str
    daily_reset_hour: int
    weekly_limit_usd: Decimal
    weekly_used_usd: Decimal
    weekly_start: datetime | None
    weekly_reset_mode: str
    weekly_reset_hour: int
    weekly_reset_weekday: int
    timezone: str  # as configured: empty means settings.TIME_ZONE

    # attribute -> UpstreamAccount column
    COLUMNS: ClassVar[dict[str, str]] = {
        "limit_usd": "quota_limit_usd",
        "used_usd": "quota_used_usd",
        "daily_limit_usd": "quota_daily_limit_usd",
        "daily_used_usd": "quota_daily_used_usd",
        "daily_start": "quota_daily_start",
        "daily_reset_mode": "quota_daily_reset_mode",
        "daily_reset_hour": "quota_daily_reset_hour",
        "weekly_limit_usd": "quota_weekly_limit_usd",
        "weekly_used_usd": "quota_weekly_used_usd",
        "weekly_start": "quota_weekly_start",
        "weekly_reset_mode": "quota_weekly_reset_mode",
        "weekly_reset_hour": "quota_weekly_reset_hour",
        "weekly_reset_weekday": "quota_weekly_reset_weekday",
        "timezone": "quota_timezone",
    }

    @classmethod
    def of(cls, account: Any) -> AccountQuota:
        """From an UpstreamAccount (or anything with its quota_* attributes)."""
        return cls(**{name: getattr(account, column) for name, column in cls.COLUMNS.items()})

    @classmethod
    def read(cls, account_id: int) -> AccountQuota:
        """Raises UpstreamAccount.DoesNotExist for an unknown id."""
        values = UpstreamAccount.objects.values_list(*cls.COLUMNS.values()).get(pk=account_id)
        return cls(*values)

    @classmethod
    def read_rules(cls, account_id: int) -> AccountQuota:
        """Only the reset settings, read for a charge: amounts read 0 and starts None, because a
        charge must never read counters into Python. Raises UpstreamAccount.DoesNotExist."""
        rules = {name: column for name, column in cls.COLUMNS.items() if name in _RESET_SETTINGS}
        values = UpstreamAccount.objects.values(*rules.values()).get(pk=account_id)
        unset = {name: None if name.endswith("_start") else Decimal(0) for name in cls.COLUMNS}
        return cls(**(unset | {name: values[column] for name, column in rules.items()}))

    @property
    def zone(self) -> str:
        return self.timezone or settings.TIME_ZONE

    def period(self, period: str) -> tuple[str, int, int]:
        """(mode, hour, weekday) of the daily or weekly period; the daily one has no weekday."""
        if period == "daily":
            return self.daily_reset_mode, self.daily_reset_hour, 0
        return self.weekly_reset_mode, self.weekly_reset_hour, self.weekly_reset_weekday

    def rule(self, period: windows.Period) -> windows.PeriodRule:
        mode, hour, weekday = self.period(period)
        return {"mode": mode, "period": period, "reset_hour": hour, "reset_weekday": weekday, "tz": self.zone}  # type: ignore[typeddict-item]

    def start(self, period: windows.Period) -> datetime | None:
        return self.daily_start if period == "daily" else self.weekly_start

    def limit(self, period: windows.Period) -> Decimal:
        return self.daily_limit_usd if period == "daily" else self.weekly_limit_usd

    def used(self, period: windows.Period, now: datetime) -> Decimal:
        """Usage as a page shows it: an expired period reads 0 (the display rule)."""
        raw = self.daily_used_usd if period == "daily" else self.weekly_used_usd
        return windows.effective_used(raw, self.start(period), now, **self.rule(period))

    def next_reset(self, period: windows.Period, now: datetime) -> datetime | None:
        return windows.next_reset(self.start(period), now, **self.rule(period))

    def is_exceeded(self, now: datetime) -> bool:
        """Total: used >= limit. Daily/weekly: only while the period is unexpired (limit 0 = none)."""
        return _over(self.used_usd, self.limit_usd) or any(
            _over(self.used(period, now), self.limit(period)) for period in ("daily", "weekly")
        )


_RESET_SETTINGS = frozenset(
    {
        "daily_reset_mode",
        "daily_reset_hour",
        "weekly_reset_mode",
        "weekly_reset_hour",
        "weekly_reset_weekday",
        "timezone",
    }
)


def _over(used: Decimal, limit: Decimal) -> bool:
    return limit > 0 and used >= limit


@dataclass(frozen=True, slots=True)
class UpstreamAccountSnapshot(JSONSnapshot):
    """What scheduling, relaying and quota charging read about one upstream account."""

    SCHEMA: ClassVar[int] = 2

    id: int
    name: str
    platform: str
    type: str
    status: str
    schedulable: bool
    rate_limited_until: datetime | None
    expires_at: datetime | None
    auto_pause_on_expired: bool
    priority: int
    concurrency: int
    rate_multiplier: Decimal
    cache_ttl_override: str | None  # "5m" / "1h" where the account type honours it, else None
    quota: AccountQuota
    quota_applies: bool  # quotas count only for the types billed per token at the provider
    credentials_encrypted: str  # ciphertext: whoever relays decrypts in-process and keeps no plaintext
    base_url: str  # "" = the provider's official endpoint
    supported_models: tuple[str, ...]  # empty = every model; a pattern may end in one "*"
    model_mapping: dict[str, str]  # {source pattern: upstream model}, after the channel's mapping
    loaded_at: datetime

    def is_quota_exceeded(self, now: datetime) -> bool:
        return self.quota.is_exceeded(now)


_ACCOUNT_SETTINGS = (
    "id",
    "name",
    "platform",
    "type",
    "status",
    "schedulable",
    "rate_limited_until",
    "expires_at",
    "auto_pause_on_expired",
    "priority",
    "concurrency",
    "rate_multiplier",
)
_ACCOUNT_FIELDS = (
    *_ACCOUNT_SETTINGS,
    "cache_ttl_override",
    "credentials_encrypted",
    "supported_models",
    "model_mapping",
    *AccountQuota.COLUMNS.values(),
)


def upstream_account_snapshots_load(ids: Iterable[int]) -> dict[int, UpstreamAccountSnapshot]:
    """Snapshots of the accounts with these ids, by id (unknown ids are left out). One query."""
    ids = list(ids)
    if not ids:
        return {}
    now = timezone.now()
    return {
        account.pk: _account_snapshot(account, now)
        for account in UpstreamAccount.objects.filter(pk__in=ids).only(*_ACCOUNT_FIELDS)
    }


def _account_snapshot(account: UpstreamAccount, now: datetime) -> UpstreamAccountSnapshot:
    ttl = account.cache_ttl_override if account.supports_cache_ttl_override else ""
    return UpstreamAccountSnapshot(
        **{name: getattr(account, name) for name in _ACCOUNT_SETTINGS},
        cache_ttl_override=ttl or None,
        quota=AccountQuota.of(account),
        quota_applies=account.has_quota,
        credentials_encrypted=account.credentials_encrypted,
        base_url=_base_url(account),
        supported_models=tuple(model for model in account.supported_models or () if isinstance(model, str)),
        model_mapping={
            str(source): str(target)
            for source, target in (account.model_mapping or {}).items()
            if isinstance(target, str) and target
        },
        loaded_at=now,
    )


def _base_url(account: UpstreamAccount) -> str:
    # The one non-secret setting the relay needs before it decrypts anything itself.
    if not account.credentials_encrypted:
        return ""
    try:
        return str(decrypt_credentials(account.credentials_encrypted).get("base_url", ""))
    except InvalidToken:
        # No key in CREDENTIALS_KEYS opens it. The relay will fail on this account and say so;
        # billing a request it already served must not.
        logger.warning("credentials of upstream account %s cannot be decrypted", account.pk)
        return ""


# --- Invalidation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotChange:
    """Ids whose rows changed. A cache drops every snapshot that contains any of them."""

    key_ids: frozenset[int] = frozenset()
    user_ids: frozenset[int] = frozenset()
    group_ids: frozenset[int] = frozenset()
    subscription_ids: frozenset[int] = frozenset()
    account_ids: frozenset[int] = frozenset()
    channel_ids: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self))

    def as_dict(self) -> dict[str, list[int]]:
        return _encode(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotChange:
        return _decode(cls, data)


class SnapshotListeners:
    """The listeners told about every committed change. The gateway adds its own at startup."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[SnapshotChange], None]] = []

    def add(self, listener: Callable[[SnapshotChange], None]) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def discard(self, listener: Callable[[SnapshotChange], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __iter__(self) -> Iterator[Callable[[SnapshotChange], None]]:
        return iter(list(self._listeners))


snapshot_listeners = SnapshotListeners()


def snapshots_changed(
    *,
    key_ids: Iterable[int] = (),
    user_ids: Iterable[int] = (),
    group_ids: Iterable[int] = (),
    subscription_ids: Iterable[int] = (),
    account_ids: Iterable[int] = (),
    channel_ids: Iterable[int] = (),
) -> None:
    """Say which rows changed; every listener hears it once the transaction commits.

    Call it from every service that changes a row a snapshot reads, inside its transaction: a
    rolled-back change is never announced, and a committed one always is (outside a transaction
    it is delivered at once). A change that a cache cannot find by the changed row's own id names
    the rows it can find it by, e.g. a new subscription names its user. Counter charges are not
    announced: they are not configuration, and whoever caches counters refreshes them itself.
    """
    change = SnapshotChange(
        key_ids=_ids(key_ids),
        user_ids=_ids(user_ids),
        group_ids=_ids(group_ids),
        subscription_ids=_ids(subscription_ids),
        account_ids=_ids(account_ids),
        channel_ids=_ids(channel_ids),
    )
    if change:
        transaction.on_commit(lambda: _deliver(change))


def _ids(values: Iterable[int | None]) -> frozenset[int]:
    return frozenset(int(value) for value in values if value is not None)


def _deliver(change: SnapshotChange) -> None:
    for listener in snapshot_listeners:
        try:
            listener(change)
        except Exception:
            # The write has committed; one broken listener must not stop the others hearing it.
            logger.exception("snapshot listener %r failed on %r", listener, change)
