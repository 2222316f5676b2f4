"""GET /v1/models and GET /v1/usage: what a key can reach and what it has used (README "The gateway").

Both take the key as their only credential. A key that is disabled, used from a refused address,
or whose user is disabled is refused (checks 3 to 5); an expired or spent key may still read its
usage, which is when its owner needs it most.

/v1/models lists, in the caller's protocol's shape, the channel's priced model names for the
group's platform when the channel restricts models; otherwise the models the group's accounts
declare (their supported lists and mapping sources), plus the channel's names when an account
serves every model. Wildcard patterns are not listed: they are not model names.

/v1/usage is read fresh from the database (not from the cache): its numbers are what the checks
will see on the next request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from accounts import windows
from accounts.snapshots import key_snapshot_load_by_id
from channels.patterns import is_wildcard
from common.money import quantize_usd
from gateway.checks import ip_refused
from gateway.errors import ANTHROPIC, GatewayError


def usable_refusal(key: Any, client_ip: str) -> GatewayError | None:
    if key.status == "disabled":
        return GatewayError("API_KEY_DISABLED", "This API key is disabled.")
    if ip_refused(key, client_ip):
        return GatewayError("ACCESS_DENIED", f"This API key may not be used from {client_ip}.")
    if key.user.status != "active" or not key.user.is_active:
        return GatewayError("USER_INACTIVE", "The account this API key belongs to is disabled.")
    return None


async def answer(
    *, gateway: Any, kind: str, key: Any, protocol: str, client_ip: str, request_id: str, send
) -> None:
    refusal = usable_refusal(key, client_ip)
    if refusal is not None:
        raise refusal
    if kind == "models":
        payload = await models_payload(gateway, key, protocol)
    else:
        fresh = await gateway.db.run(key_snapshot_load_by_id, key.id)
        if fresh is None:
            raise GatewayError("INVALID_API_KEY", "This API key is not valid.")
        payload = usage_payload(fresh, datetime.now(UTC))
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-store"),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def models_payload(gateway: Any, key: Any, protocol: str) -> dict:
    names: list[str] = []
    group = key.group
    if group is not None:
        channel = await gateway.auth.channel(group.id)
        channel_names = [
            name
            for card in (channel.cards_for(group.platform) if channel is not None else ())
            for name in card.models
            if not is_wildcard(name)
        ]
        if channel is not None and channel.restrict_models:
            names = channel_names
        else:
            accounts = await gateway.auth.accounts([member.account_id for member in group.members])
            serves_all = False
            for account in accounts.values():
                if account.status != "active" or account.platform != group.platform:
                    continue
                declared = [*account.supported_models, *account.model_mapping.keys()]
                serves_all = serves_all or not account.supported_models
                names += [name for name in declared if not is_wildcard(name)]
            if serves_all:
                names += channel_names
    names = list(dict.fromkeys(names))
    if protocol == ANTHROPIC:
        data = [
            {
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": "1970-01-01T00:00:00Z",
                "lifecycle": "active",
                "deprecated_at": None,
                "retires_at": None,
            }
            for name in names
        ]
        return {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "tollgate"} for name in names],
    }


def _money(value: Decimal | None) -> str | None:
    """USD with its 8 decimal places, as a string (never a float)."""
    return None if value is None else f"{quantize_usd(value):f}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def usage_payload(key: Any, now: datetime) -> dict:
    """The documented /v1/usage JSON (README "GET /v1/usage")."""
    key_windows = []
    for kind in ("5h", "1d", "7d"):
        limit = getattr(key, f"rate_limit_{kind}_usd")
        start = getattr(key, f"window_{kind}_start")
        expired = windows.key_window_expired(kind, start, now)
        key_windows.append(
            {
                "window": kind,
                "limit_usd": _money(limit) if limit > 0 else None,
                "used_usd": _money(
                    windows.key_window_effective_usage(kind, getattr(key, f"usage_{kind}_usd"), start, now)
                ),
                "resets_at": None if expired else _iso(windows.key_window_end(kind, start)),
            }
        )
    quota = key.quota_usd
    group = key.group
    payload: dict[str, Any] = {
        "object": "usage",
        "key": {
            "name": key.name,
            "status": "expired"
            if key.expires_at and key.expires_at <= now and key.status == "active"
            else key.status,
            "expires_at": _iso(key.expires_at),
            "quota_usd": _money(quota) if quota > 0 else None,
            "quota_used_usd": _money(key.quota_used_usd),
            "quota_remaining_usd": _money(max(quota - key.quota_used_usd, Decimal(0))) if quota > 0 else None,
            "windows": key_windows,
            "concurrency": key.concurrency or None,
        },
        "group": None
        if group is None
        else {"name": group.name, "platform": group.platform, "type": group.subscription_type},
        "balance_usd": None,
        "subscription": None,
    }
    if group is not None and group.is_subscription:
        payload["subscription"] = _subscription_payload(key, now)
    else:
        payload["balance_usd"] = _money(key.user.balance)
    return payload


def _subscription_payload(key: Any, now: datetime) -> dict | None:
    subscription, group = key.subscription, key.group
    if subscription is None:
        return None
    tz = group.timezone_name
    rule = {"expires_at": subscription.expires_at, "tz": tz}
    result_windows = []
    for kind in ("daily", "weekly", "monthly"):
        limit = getattr(group, f"{kind}_limit_usd")
        start = getattr(subscription, f"{kind}_window_start")
        current = windows.subscription_window_start(kind, now, starts_at=subscription.starts_at, tz=tz)
        result_windows.append(
            {
                "window": kind,
                "limit_usd": None if limit is None or limit < 0 else _money(limit),
                "used_usd": _money(
                    windows.subscription_effective_usage(
                        kind, getattr(subscription, f"{kind}_usage_usd"), start, now, **rule
                    )
                ),
                "resets_at": None
                if now >= subscription.expires_at
                else _iso(windows.subscription_window_end(kind, current, **rule)),
            }
        )
    status = subscription.status
    if status in ("active", "suspended") and subscription.expires_at <= now:
        status = "expired"
    return {
        "status": status,
        "starts_at": _iso(subscription.starts_at),
        "expires_at": _iso(subscription.expires_at),
        "windows": result_windows,
    }
