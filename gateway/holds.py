"""Holding a request's estimate before it is relayed (docs/gateway.md#holds-and-settle).

`estimate` prices what a request may cost from its body alone: input tokens by the text rule of
docs/gateway.md#stream-accounting (a token per four characters plus four per message), output
tokens from `max_tokens` / `max_completion_tokens` / `max_output_tokens` or
`GATEWAY_DEFAULT_OUTPUT_TOKENS`, priced by the card the recording will bill it with (the same
BillingContext, billing model and multipliers). `reserve` runs on a database thread and holds it
(billing.holds.pending_hold: one transaction, with the pending record); the recording settles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings

from billing.cost import Usage
from billing.holds import AccountHold, HoldResult, pending_hold, pending_move_account
from billing.pricing import billing_context_from, price_request
from common.money import quantize_usd
from gateway.checks import QUOTA_RETRY_SECONDS
from gateway.errors import GatewayError
from gateway.usage import EMBEDDINGS, estimate_input_tokens

OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class Estimate:
    usage: Usage
    actual_usd: Decimal  # what the user would pay: held on the key and the balance or subscription
    total_usd: Decimal  # before multipliers: an account's quota holds this × its multiplier


def output_tokens(kind: str, body: dict) -> int:
    if kind == EMBEDDINGS:
        return 0
    for field in OUTPUT_FIELDS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return settings.GATEWAY_DEFAULT_OUTPUT_TOKENS


def estimate(*, key: Any, channel: Any, kind: str, body: dict, model: str, mapped_model: str) -> Estimate:
    usage = Usage(input_tokens=estimate_input_tokens(kind, body), output_tokens=output_tokens(kind, body))
    context = billing_context_from(key=key, channel=channel, account=None)
    _resolution, breakdown = price_request(
        context=context,
        usage=usage,
        requested_model=model,
        mapped_model=mapped_model,
        upstream_model=mapped_model,
    )
    return Estimate(usage=usage, actual_usd=breakdown.actual_cost, total_usd=breakdown.total_cost)


def reserve(
    *,
    request_id: str,
    key: Any,
    channel: Any,
    accounts: list,
    kind: str,
    body: dict,
    model: str,
    mapped_model: str,
    protocol: str,
    stream: bool,
) -> HoldResult:
    """Estimate and hold (on a database thread): the key, the balance or subscription, and the
    first of `accounts` (candidates in the order they will be tried) whose quota has room."""
    guess = estimate(key=key, channel=channel, kind=kind, body=body, model=model, mapped_model=mapped_model)
    group = key.group
    subscription = key.subscription if group is not None and group.is_subscription else None
    candidates = tuple(
        AccountHold(
            account_id=account.id,
            amount_usd=quantize_usd(guess.total_usd * account.rate_multiplier),
            quota=account.quota if account.quota_applies else None,
        )
        for account in accounts
    )
    usage = guess.usage
    return pending_hold(
        request_id=request_id,
        api_key_id=key.id,
        user_id=key.user_id,
        amount_usd=guess.actual_usd,
        now=datetime.now(UTC),
        lease_seconds=settings.GATEWAY_HOLD_LEASE_SECONDS,
        requested_model=model,
        mapped_model=mapped_model,
        protocol=protocol,
        stream=stream,
        estimate={"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        subscription_id=subscription.id if subscription is not None else None,
        subscription_limits=(
            {
                "daily": group.daily_limit_usd,
                "weekly": group.weekly_limit_usd,
                "monthly": group.monthly_limit_usd,
            }
            if subscription is not None
            else None
        ),
        subscription_starts_at=subscription.starts_at if subscription is not None else None,
        subscription_timezone=group.timezone if subscription is not None else "",
        accounts=candidates,
    )


def move(
    *,
    request_id: str,
    key: Any,
    channel: Any,
    account: Any,
    kind: str,
    body: dict,
    model: str,
    mapped_model: str,
) -> bool:
    """Failover (on a database thread): hold the request's estimate on `account`'s quota instead
    of the account it held on; False when that quota has no room (billing.holds.pending_move_account)."""
    guess = estimate(key=key, channel=channel, kind=kind, body=body, model=model, mapped_model=mapped_model)
    return pending_move_account(
        request_id=request_id,
        api_key_id=key.id,
        to=AccountHold(
            account_id=account.id,
            amount_usd=quantize_usd(guess.total_usd * account.rate_multiplier),
            quota=account.quota if account.quota_applies else None,
        ),
        now=datetime.now(UTC),
    )


def refusal(limit: str, key: Any, model: str) -> GatewayError:
    """The code of the limit a hold did not fit (docs/gateway.md#checks): in-flight requests hold
    the rest, so trying again once they finish may succeed."""
    if limit == "key_quota":
        return GatewayError(
            "API_KEY_QUOTA_EXHAUSTED",
            f"This API key's quota of ${key.quota_usd} has no room for this request.",
            retry_after=QUOTA_RETRY_SECONDS if key.quota_used_usd >= key.quota_usd else 1,
        )
    if limit.startswith("key_"):
        kind = limit.removeprefix("key_")
        return GatewayError(
            "rate_limit_exceeded",
            f"This key's {kind} spend limit of ${getattr(key, f'rate_limit_{kind}_usd')} has no room for this request.",
            retry_after=1,
        )
    if limit.startswith("subscription_"):
        kind = limit.removeprefix("subscription_")
        return GatewayError(
            "USAGE_LIMIT_EXCEEDED",
            f"The subscription's {kind} limit has no room for this request.",
            retry_after=1,
        )
    if limit == "balance":
        return GatewayError(
            "INSUFFICIENT_BALANCE", "The account's balance does not cover this request: add funds."
        )
    return GatewayError(
        "NO_ACCOUNT_AVAILABLE",
        f"No account of this key's group has quota left for {model!r} right now.",
        retry_after=settings.GATEWAY_NO_ACCOUNT_RETRY_SECONDS,
    )
