"""The gateway's checks, in the order of docs/gateway.md#checks, as pure functions.

They read a key snapshot (accounts.snapshots.KeySnapshot: the key with its user, group and
subscription), the time, the client's address and, for the last check, the channel snapshot.
The first failing check answers, so a key that is both expired and over quota gets the expiry
code. Checks 1 and 2 (no key, unknown key) are the snapshot lookup's own; check 14 (the user's
RPM and concurrency) lives in gateway.limits because it keeps state.

Counters in a snapshot are as of its load: the recorder drops every snapshot a charge spends
(docs/gateway.md#auth-snapshot), so a limit the database shows as spent is never passed here.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from decimal import Decimal
from typing import Any

from accounts import windows
from channels.patterns import match_card
from gateway.errors import GatewayError

ZERO = Decimal(0)
QUOTA_RETRY_SECONDS = 3600  # a used-up quota does not come back by waiting; tell clients so, politely


def _ip_in(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks) -> bool:
    if address is None:
        return False
    plain = getattr(address, "ipv4_mapped", None) or address
    return any(plain in network or address in network for network in networks)


def ip_refused(key: Any, client_ip: str) -> bool:
    """Check 4: outside a non-empty allowlist, or inside the denylist."""
    if not key.ip_allowlist and not key.ip_denylist:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        address = None
    if key.ip_denylist and _ip_in(address, key.ip_denylist):
        return True
    return bool(key.ip_allowlist) and not _ip_in(address, key.ip_allowlist)


def _seconds_until(moment: datetime, now: datetime) -> float:
    return max(1.0, (moment - now).total_seconds())


def subscription_in_term(subscription: Any, now: datetime) -> bool:
    """Check 8: an active (not suspended) subscription whose term contains now."""
    return (
        subscription is not None
        and subscription.status == "active"
        and subscription.starts_at <= now < subscription.expires_at
    )


def subscription_window_refusal(key: Any, now: datetime) -> GatewayError | None:
    """Check 11: a window at or over the group's limit (None or negative = none; 0 always fails)."""
    group, subscription = key.group, key.subscription
    tz = group.timezone_name
    for kind, limit in (
        ("daily", group.daily_limit_usd),
        ("weekly", group.weekly_limit_usd),
        ("monthly", group.monthly_limit_usd),
    ):
        if limit is None or limit < 0:
            continue
        start = getattr(subscription, f"{kind}_window_start")
        used = windows.subscription_effective_usage(
            kind,
            getattr(subscription, f"{kind}_usage_usd"),
            start,
            now,
            expires_at=subscription.expires_at,
            tz=tz,
        )
        if used >= limit:
            current = windows.subscription_window_start(kind, now, starts_at=subscription.starts_at, tz=tz)
            end = windows.subscription_window_end(kind, current, expires_at=subscription.expires_at, tz=tz)
            return GatewayError(
                "USAGE_LIMIT_EXCEEDED",
                f"The subscription's {kind} limit of ${limit} is used up (${used} used); it resets at "
                f"{end.isoformat()}.",
                retry_after=_seconds_until(end, now),
            )
    return None


def key_window_refusal(key: Any, now: datetime) -> GatewayError | None:
    """Check 13: a key 5h / 1d / 7d window at or over its limit (0 = no limit)."""
    for kind in ("5h", "1d", "7d"):
        limit = getattr(key, f"rate_limit_{kind}_usd")
        if limit <= 0:
            continue
        start = getattr(key, f"window_{kind}_start")
        used = windows.key_window_effective_usage(kind, getattr(key, f"usage_{kind}_usd"), start, now)
        if used >= limit:
            end = windows.key_window_end(kind, start)
            return GatewayError(
                "rate_limit_exceeded",
                f"This key's {kind} spend limit of ${limit} is reached (${used} used); the window ends at "
                f"{end.isoformat()}.",
                retry_after=_seconds_until(end, now),
            )
    return None


def key_refusal(key: Any, *, now: datetime, client_ip: str, protocol: str) -> GatewayError | None:
    """Checks 3 to 13 over a key snapshot, in order; None when the key may make the request."""
    if key.status == "disabled":
        return GatewayError("API_KEY_DISABLED", "This API key is disabled.")
    if ip_refused(key, client_ip):
        return GatewayError("ACCESS_DENIED", f"This API key may not be used from {client_ip}.")
    user = key.user
    if user.status != "active" or not user.is_active:
        return GatewayError("USER_INACTIVE", "The account this API key belongs to is disabled.")
    group = key.group
    if group is None or group.status != "active":
        return GatewayError("GROUP_DISABLED", "This API key's group is missing or inactive.")
    if group.is_exclusive and group.id not in user.allowed_group_ids:
        return GatewayError("GROUP_NOT_ALLOWED", f"This account may not use the group {group.name!r}.")
    if group.is_subscription and not subscription_in_term(key.subscription, now):
        return GatewayError(
            "SUBSCRIPTION_NOT_FOUND", f"There is no active subscription to the group {group.name!r}."
        )
    if key.status == "expired" or (key.expires_at is not None and key.expires_at <= now):
        return GatewayError("API_KEY_EXPIRED", "This API key has expired.")
    if key.status == "quota_exhausted" or (key.quota_usd > 0 and key.quota_used_usd >= key.quota_usd):
        return GatewayError(
            "API_KEY_QUOTA_EXHAUSTED",
            f"This API key's quota of ${key.quota_usd} is used up.",
            retry_after=QUOTA_RETRY_SECONDS,
        )
    if group.is_subscription:
        refusal = subscription_window_refusal(key, now)
        if refusal is not None:
            return refusal
    elif user.balance <= ZERO:
        return GatewayError("INSUFFICIENT_BALANCE", f"The account's balance is ${user.balance}: add funds.")
    refusal = key_window_refusal(key, now)
    if refusal is not None:
        return refusal
    if group.platform != protocol:
        if group.platform not in ("openai", "anthropic"):
            message = (
                f"This API key's group serves {group.platform} models, which the gateway does not relay yet."
            )
        else:
            endpoint = "/v1/messages" if group.platform == "anthropic" else "/v1/chat/completions"
            message = f"This API key's group serves {group.platform} models: call {endpoint} instead."
        return GatewayError("ENDPOINT_NOT_SUPPORTED", message)
    return None


def model_refusal(channel: Any, *, platform: str, model: str, mapped_model: str) -> GatewayError | None:
    """Check 15: with restrict_models on, a model no card of the channel prices is refused (by the
    name the client asked for, or the one the channel's mapping turns it into)."""
    if channel is None or not channel.restrict_models:
        return None
    cards = channel.cards_for(platform)
    if match_card(cards, model) is None and match_card(cards, mapped_model) is None:
        return GatewayError("MODEL_NOT_ALLOWED", f"The model {model!r} is not available with this API key.")
    return None
