"""Reads for the upstream account pages, and the quota badge's display rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Prefetch, Q, QuerySet

from accounts.crypto import decrypt_credentials
from accounts.models import Group, GroupAccount, UpstreamAccount
from accounts.snapshots import AccountQuota

WARN_AT = Decimal("0.8")


def upstream_account_list(
    *,
    search: str = "",
    platform: str = "",
    type: str = "",  # noqa: A002 - the field's name
    status: str = "",
    group: Group | None = None,
    schedulable: str = "",
) -> QuerySet[UpstreamAccount]:
    accounts = UpstreamAccount.objects.prefetch_related(
        Prefetch(
            "memberships",
            queryset=GroupAccount.objects.select_related("group").order_by("group__sort_order", "group_id"),
        )
    )
    if search:
        accounts = accounts.filter(Q(name__icontains=search) | Q(notes__icontains=search))
    if platform:
        accounts = accounts.filter(platform=platform)
    if type:
        accounts = accounts.filter(type=type)
    if status:
        accounts = accounts.filter(status=status)
    if group is not None:
        accounts = accounts.filter(memberships__group=group)
    if schedulable in ("yes", "no"):
        accounts = accounts.filter(schedulable=schedulable == "yes")
    return accounts


@dataclass(frozen=True, slots=True)
class QuotaMeter:
    """One dimension of the quota badge: D, W or $."""

    label: str
    name: str
    used: Decimal
    limit: Decimal
    resets_at: datetime | None

    @property
    def fraction(self) -> Decimal:
        return self.used / self.limit if self.limit > 0 else Decimal(0)

    @property
    def percent(self) -> int:
        return int(min(self.fraction, Decimal(9.99)) * 100)

    @property
    def level(self) -> str:
        """neutral under 80 %, warning from 80 % up to the limit, danger at or over it."""
        if self.fraction >= 1:
            return "danger"
        return "warning" if self.fraction >= WARN_AT else "neutral"


@dataclass(frozen=True, slots=True)
class QuotaBadge:
    meters: tuple[QuotaMeter, ...]
    exceeded: bool
    applies: bool


def upstream_account_quota_badge(account: UpstreamAccount, *, now: datetime) -> QuotaBadge:
    """What the badge shows, by the display rule: an expired period reads 0 with its next reset.

    Pure: reads the instance, writes nothing. Only dimensions with a limit are shown.
    """
    state = _quota_state(account)
    meters = []
    for period, label, name in (("daily", "D", "Daily"), ("weekly", "W", "Weekly")):
        if state.limit(period) > 0:
            meters.append(
                QuotaMeter(
                    label, name, state.used(period, now), state.limit(period), state.next_reset(period, now)
                )
            )
    if state.limit_usd > 0:
        meters.append(QuotaMeter("$", "Total", state.used_usd, state.limit_usd, None))
    return QuotaBadge(meters=tuple(meters), exceeded=state.is_exceeded(now), applies=account.has_quota)


def upstream_account_quota_usage(account: UpstreamAccount, *, now: datetime) -> dict[str, Decimal]:
    """The three used amounts as a page shows them (display rule applied), limits or not."""
    state = _quota_state(account)
    return {"daily": state.used("daily", now), "weekly": state.used("weekly", now), "total": state.used_usd}


def _quota_state(account: UpstreamAccount) -> AccountQuota:
    return AccountQuota.of(account)


def upstream_account_credentials(account: UpstreamAccount) -> dict:
    """The decrypted credentials. For the relay and for prefilling non-secret fields only."""
    return decrypt_credentials(account.credentials_encrypted)
