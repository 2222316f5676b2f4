"""One row of everything the console shows, in awkward shapes, for tests that walk every page.

Long names (100 characters), used and ended windows, quotas near their limits, a key with IP
rules, a channel with a card, an interval and a mapping rule, a few usage rows, a locked sign-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
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
from billing.models import UsageLog
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
    return ConsoleRows(
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
