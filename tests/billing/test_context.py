"""BillingContext is a composition of the owning apps' snapshots, and composing it reads nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.snapshots import (
    KeySnapshot,
    UpstreamAccountSnapshot,
    key_snapshot_load,
    upstream_account_snapshots_load,
)
from billing.pricing import billing_context, billing_context_from, resolve_price
from channels.snapshots import ChannelSnapshot, channel_snapshot_for_group
from tests.factories import (
    APIKeyFactory,
    ChannelFactory,
    ChannelGroupFactory,
    GroupFactory,
    ModelPricingFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal
NOON = datetime(2026, 11, 25, 12, tzinfo=UTC)


def snapshots(key, account):
    return (
        key_snapshot_load(key.key_hash),
        channel_snapshot_for_group(key.group_id),
        upstream_account_snapshots_load([account.pk])[account.pk],
    )


def test_composing_from_snapshots_reads_nothing_and_equals_what_the_loader_builds(
    django_assert_num_queries,
):
    group = GroupFactory(platform="anthropic", rate_multiplier=D("1.5"), timezone="Europe/Berlin")
    channel = ChannelFactory(billing_model_source="upstream")
    ChannelGroupFactory(channel=channel, group=group)
    ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"], input_price=D("0.000002"))
    ModelPricingFactory(channel=channel, platform="openai", models=["gpt-4o"])
    key = APIKeyFactory(group=group, timezone="Asia/Tokyo")
    account = UpstreamAccountFactory(type="oauth", cache_ttl_override="5m", rate_multiplier=D("0.7"))
    key_snapshot, channel_snapshot, account_snapshot = snapshots(key, account)

    with django_assert_num_queries(0):
        context = billing_context_from(key=key_snapshot, channel=channel_snapshot, account=account_snapshot)
        resolution = resolve_price(context=context, model="claude-sonnet-4-5")

    assert context == billing_context(api_key_id=key.pk, account_id=account.pk)
    assert (context.rate_multiplier, context.rate_multiplier_source) == (D("1.5"), "group")
    assert (context.account_rate_multiplier, context.cache_ttl_override) == (D("0.7"), "5m")
    assert (context.channel_id, context.billing_model_source) == (channel.pk, "upstream")
    assert [card.models for card in context.channel_cards] == [("claude-sonnet-4-5",)]  # its platform's only
    assert context.key_timezone == "Asia/Tokyo" and context.account_quota == account_snapshot.quota
    assert (resolution.pricing_source, resolution.price.input_price) == ("channel", D("0.000002"))


def test_snapshots_that_went_through_json_compose_the_same_context():
    group = SubscriptionGroupFactory(timezone="Asia/Tokyo")
    user = UserFactory()
    user.group_rates.create(group=group, rate_multiplier=D("0.8"))
    subscription = SubscriptionFactory(user=user, group=group, starts_at=NOON - timedelta(days=1))
    key = APIKeyFactory(user=user, group=group)
    account = UpstreamAccountFactory()
    key_snapshot, channel_snapshot, account_snapshot = snapshots(key, account)
    cached = (
        KeySnapshot.from_dict(json.loads(json.dumps(key_snapshot.as_dict()))),
        None,
        UpstreamAccountSnapshot.from_dict(json.loads(json.dumps(account_snapshot.as_dict()))),
    )
    context = billing_context_from(key=cached[0], channel=cached[1], account=cached[2])
    assert context == billing_context_from(
        key=key_snapshot, channel=channel_snapshot, account=account_snapshot
    )
    assert (context.rate_multiplier, context.rate_multiplier_source) == (D("0.8"), "user")
    assert (context.subscription_id, context.subscription_starts_at, context.subscription_timezone) == (
        subscription.pk,
        NOON - timedelta(days=1),
        "Asia/Tokyo",
    )
    assert context.charges_subscription


def test_a_key_without_a_group_and_no_account_bills_at_the_default_rate():
    key = APIKeyFactory(group=None)
    context = billing_context_from(key=key_snapshot_load(key.key_hash), channel=None, account=None)
    assert (context.rate_multiplier, context.rate_multiplier_source) == (D("1"), "default")
    assert (context.group_id, context.account_id, context.channel_id, context.channel_cards) == (
        None,
        None,
        None,
        (),
    )
    assert context.account_rate_multiplier == D("1") and context.account_quota is None


def test_the_channel_snapshot_json_form_prices_the_same(django_assert_num_queries):
    group = GroupFactory()
    channel = ChannelFactory()
    ChannelGroupFactory(channel=channel, group=group)
    ModelPricingFactory(channel=channel, models=["claude-*"], input_price=D("0.000001"))
    key = APIKeyFactory(group=group)
    account = UpstreamAccountFactory()
    key_snapshot, channel_snapshot, account_snapshot = snapshots(key, account)
    cached_channel = ChannelSnapshot.from_dict(json.loads(json.dumps(channel_snapshot.as_dict())))
    context = billing_context_from(key=key_snapshot, channel=cached_channel, account=account_snapshot)
    with django_assert_num_queries(0):
        price = resolve_price(context=context, model="claude-haiku-4-5").price
    assert price.input_price == D("0.000001")
