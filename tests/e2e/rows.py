"""One row of everything the console shows, in awkward shapes, for tests that walk every page.

Long names (100 characters), used and ended windows, quotas near their limits, a key with IP
rules, a channel with a card, an interval and a mapping rule, a few usage rows, a locked sign-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.urls import URLPattern, reverse
from django.utils import timezone

from accounts.models import (
    APIKey,
    BalanceHistory,
    Group,
    SignInCounter,
    Subscription,
    UpstreamAccount,
    User,
    UserGroupRate,
)
from accounts.services.keys import api_key_usage_charge
from accounts.services.subscriptions import subscription_usage_charge
from accounts.services.upstream import upstream_account_quota_charge
from billing.models import ReconcileRun, UsageLog
from billing.reconcile import reconcile_run_create, reconcile_run_execute
from channels.models import Channel
from tests.factories import (
    APIKeyFactory,
    BalanceHistoryFactory,
    ChannelFactory,
    ChannelGroupFactory,
    GroupAccountFactory,
    GroupFactory,
    ModelPricingFactory,
    PricingIntervalFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UsageLogFactory,
    UserFactory,
)

LONG = "a-rather-long-name-" * 5 + "that-goes-on"  # 107 characters; names are cut at 100
LONG_NAME = LONG[:100]


@dataclass
class ConsoleRows:
    user: User
    group: Group
    account: UpstreamAccount
    key: APIKey
    subscription: Subscription
    channel: Channel
    usage: UsageLog
    rate: UserGroupRate
    history: BalanceHistory
    sign_in_lock: SignInCounter
    reconcile_run: ReconcileRun


def console_rows() -> ConsoleRows:
    now = timezone.now()
    user = UserFactory(email=f"{LONG_NAME[:60]}@example.com", username=LONG_NAME, balance=Decimal("12.5"))
    group = GroupFactory(name=LONG_NAME, daily_limit_usd=Decimal("5"))
    GroupFactory(name="openai-standard", platform="openai")
    account = UpstreamAccountFactory(
        name=LONG_NAME,
        quota_limit_usd=Decimal("100"),
        quota_daily_limit_usd=Decimal("10"),
        quota_weekly_limit_usd=Decimal("50"),
        quota_timezone="UTC",
    )
    UpstreamAccountFactory(
        name="broken-oauth", type="oauth", status="error", error_message="401 invalid token"
    )
    GroupAccountFactory(group=group, account=account)
    upstream_account_quota_charge(account_id=account.pk, amount_usd=Decimal("8.5"))
    key = APIKeyFactory(
        user=user,
        group=group,
        name=LONG_NAME,
        quota_usd=Decimal("20"),
        rate_limit_5h_usd=Decimal("2"),
        expires_at=now + timedelta(days=3),
        ip_allowlist=["10.0.0.0/8"],
    )
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1.75"), now=now - timedelta(hours=6))
    APIKeyFactory(user=user, name="short", last_used_at=now - timedelta(minutes=5))
    plus = SubscriptionGroupFactory(
        name="Plus", daily_limit_usd=Decimal("10"), weekly_limit_usd=Decimal("0"), monthly_limit_usd=None
    )
    subscription = SubscriptionFactory(user=user, group=plus, starts_at=now - timedelta(days=3))
    subscription_usage_charge(
        subscription_id=subscription.pk, amount_usd=Decimal("4"), now=now - timedelta(days=2)
    )
    channel = ChannelFactory(name=LONG_NAME)
    ChannelGroupFactory(channel=channel, group=group)
    card = ModelPricingFactory(channel=channel)
    PricingIntervalFactory(card=card, min_tokens=200_000, input_price=Decimal("0.000006"))
    channel.model_mapping = {"anthropic": {"claude-3-5-sonnet*": "claude-sonnet-4-5"}}
    channel.save(update_fields=["model_mapping"])
    usage = UsageLogFactory(api_key=key, group=group, account=account)
    UsageLogFactory(api_key=key, requested_model="unknown-model", pricing_source="missing", status_code=500)
    rate = UserGroupRate.objects.create(user=user, group=group, rate_multiplier=Decimal("0.8"))
    history = BalanceHistoryFactory(user=user)
    sign_in_lock = SignInCounter.objects.create(
        kind=SignInCounter.Kind.USERNAME,
        value=user.email,
        attempts=settings.LOGIN_FAILURE_LIMIT,
        window_ends_at=now + timedelta(minutes=10),
        last_attempt_at=now,
    )
    # A finished dry run: the counters above were charged without ledger rows, so it finds drift.
    reconcile_run = reconcile_run_execute(
        run_id=reconcile_run_create(scope="keys", started_by_label="test").pk
    )
    return ConsoleRows(
        reconcile_run=reconcile_run,
        user=user,
        group=group,
        account=account,
        key=key,
        subscription=subscription,
        channel=channel,
        usage=usage,
        rate=rate,
        history=history,
        sign_in_lock=sign_in_lock,
    )


# Fragments that need query parameters to render; pages never do.
PARAMS = {
    "channels:card-form": "?card-TOTAL_FORMS=0",
    "channels:interval-row": "?card=card-0&card-0-iv-TOTAL_FORMS=0",
    "channels:catalog-intervals": "?card=card-0&card-0-iv-TOTAL_FORMS=0&card-0-models=claude-opus-4-1",
    "channels:mapping-row": "?map-TOTAL_FORMS=0",
    "billing:usage-list": "?period=30d",
}

# Which row a URL's id stands for, by the URL name's prefix.
ID_OWNERS = {
    "accounts:user-": "user",
    "user-usage": "user",
    "accounts:key-": "key",
    "accounts:subscription-": "subscription",
    "accounts:group-": "group",
    "accounts:account-": "account",
    "channels:channel-": "channel",
    "billing:usage-": "usage",
    "billing:price-preview": "channel",
    "sign-in-": "sign_in_lock",
}


def _id_for(name: str, kwarg: str, rows: ConsoleRows) -> int | str:
    if kwarg == "batch_id":
        return rows.reconcile_run.batch_id
    if kwarg == "rate_id":
        return rows.rate.pk
    if kwarg == "account_pk":
        return rows.account.pk
    for prefix, owner in ID_OWNERS.items():
        if name.startswith(prefix):
            return getattr(rows, owner).pk
    raise AssertionError(f"{name} takes <{kwarg}>: say in ID_OWNERS which row it is for")


def console_path(name: str, entry: URLPattern, rows: ConsoleRows) -> str:
    """A path that reaches the URL pattern `name` for one of `rows`, with the query it needs."""
    kwargs = {kwarg: _id_for(name, kwarg, rows) for kwarg in entry.pattern.converters}
    return reverse(name, kwargs=kwargs) + PARAMS.get(name, "")
