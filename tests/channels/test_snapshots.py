"""The channel snapshot: cards as pure prices per platform, mapping, groups; JSON form; query count."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from channels.models import Channel
from channels.pricing import ChannelCard, Price, PriceInterval
from channels.snapshots import ChannelSnapshot, channel_snapshot_for_group
from tests.factories import (
    ChannelFactory,
    ChannelGroupFactory,
    GroupFactory,
    ModelPricingFactory,
    PricingIntervalFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def group():
    return GroupFactory(platform="anthropic")


@pytest.fixture
def channel(group):
    channel = ChannelFactory(
        name="Claude retail",
        billing_model_source="requested",
        restrict_models=True,
        model_mapping={"anthropic": {"claude-*": "claude-sonnet-4-5"}, "openai": {"gpt-4o": "gpt-4.1"}},
    )
    ChannelGroupFactory(channel=channel, group=group)
    ChannelGroupFactory(channel=channel, group=GroupFactory(platform="openai"))
    return channel


def test_the_snapshot_holds_cards_as_pure_prices_by_platform_in_card_order(group, channel):
    second = ModelPricingFactory(channel=channel, models=["claude-*"], sort_order=2, cache_read_price=None)
    first = ModelPricingFactory(channel=channel, models=["claude-opus-4-1"], sort_order=1)
    PricingIntervalFactory(card=first, min_tokens=200_000, input_multiplier=D("2"), sort_order=0)
    ModelPricingFactory(channel=channel, platform="openai", models=["gpt-4o"])

    snapshot = channel_snapshot_for_group(group.pk)

    assert (snapshot.id, snapshot.name, snapshot.status) == (channel.pk, "Claude retail", "active")
    assert (snapshot.billing_model_source, snapshot.restrict_models) == ("requested", True)
    assert snapshot.group_ids == tuple(sorted(channel.group_links.values_list("group_id", flat=True)))
    anthropic = snapshot.cards_for("anthropic")
    assert [card.models for card in anthropic] == [("claude-opus-4-1",), ("claude-*",)]
    assert isinstance(anthropic[0], ChannelCard) and isinstance(anthropic[0].price, Price)
    assert anthropic[0].price.intervals == (
        PriceInterval(min_tokens=200_000, input_multiplier=D("2"), sort_order=0),
    )
    # An empty cache-read price bills as input (the gap rule), never as free.
    assert anthropic[1].price.cache_read_price == second.input_price
    assert [card.models for card in snapshot.cards_for("openai")] == [("gpt-4o",)]
    assert snapshot.cards_for("gemini") == ()


def test_the_snapshot_maps_models_exact_source_first(group, channel):
    channel.model_mapping["anthropic"]["claude-opus-4-1"] = "claude-opus-4-1-20250805"
    channel.save()
    snapshot = channel_snapshot_for_group(group.pk)
    assert snapshot.map_model(platform="anthropic", model="Claude-Opus-4.1") == "claude-opus-4-1-20250805"
    assert snapshot.map_model(platform="anthropic", model="claude-3-haiku") == "claude-sonnet-4-5"
    assert snapshot.map_model(platform="gemini", model="gemini-2.5-pro") == "gemini-2.5-pro"


def test_a_group_without_an_active_channel_has_no_channel_snapshot(group, channel):
    assert channel_snapshot_for_group(GroupFactory().pk) is None
    assert channel_snapshot_for_group(None) is None
    Channel.objects.filter(pk=channel.pk).update(status=Channel.Status.DISABLED)
    assert channel_snapshot_for_group(group.pk) is None


def test_loading_a_channel_snapshot_is_four_queries_however_many_cards(
    group, channel, django_assert_num_queries
):
    for position in range(8):
        card = ModelPricingFactory(channel=channel, models=[f"claude-{position}"], sort_order=position)
        for step in range(3):
            PricingIntervalFactory(card=card, min_tokens=step * 1000, max_tokens=step * 1000 + 1000)
    with django_assert_num_queries(4):
        snapshot = channel_snapshot_for_group(group.pk)
    assert len(snapshot.cards_for("anthropic")) == 8
    lone = GroupFactory()
    with django_assert_num_queries(1):
        assert channel_snapshot_for_group(lone.pk) is None


def test_the_channel_snapshot_survives_json_unchanged(group, channel):
    card = ModelPricingFactory(
        channel=channel,
        models=["claude-sonnet-4-5", "claude-sonnet-*"],
        cache_write_1h_price=D("0.000006"),
    )
    PricingIntervalFactory(card=card, min_tokens=200_000, tier_label=">200K", input_price=D("0.000006"))
    ModelPricingFactory(
        channel=channel,
        platform="gemini",
        models=["gemini-2.5-flash-image"],
        billing_mode="image",
        per_request_price=D("0.039"),
    )
    snapshot = channel_snapshot_for_group(group.pk)
    data = json.loads(json.dumps(snapshot.as_dict()))
    assert ChannelSnapshot.from_dict(data) == snapshot
    assert data["cards"]["anthropic"][0]["price"]["input_price"] == "0.00000300000000"
