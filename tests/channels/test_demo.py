"""Demo channels: written through the service, idempotent, in any order with the accounts demo."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts import demo as accounts_demo
from channels.demo import seed_channels
from channels.models import Channel, ChannelGroup
from channels.patterns import select_interval, select_tier_interval
from channels.snapshots import channel_snapshot_for_group

pytestmark = pytest.mark.django_db


def test_seeding_twice_creates_each_channel_once_with_its_cards_and_groups():
    seed_channels()
    seed_channels()
    assert sorted(Channel.objects.values_list("name", flat=True)) == [
        "Claude retail",
        "Gemini images",
        "OpenAI standard",
    ]
    assert ChannelGroup.objects.count() == 5


def test_the_demo_prices_claude_with_a_long_context_tier_and_one_hour_writes():
    seed_channels()
    group_id = ChannelGroup.objects.get(group__name="anthropic-standard").group_id
    channel = channel_snapshot_for_group(group_id)
    match = channel.price_for(platform="anthropic", model="anthropic/claude-sonnet-4-5-20250929")
    assert match.source == "channel"
    assert (match.price.cache_write_price, match.price.cache_write_1h_price) == (
        Decimal("0.00000375"),
        Decimal("0.000006"),
    )
    assert select_interval(match.price.intervals, 200_001).input_price == Decimal("0.000006")
    assert channel.map_model(platform="anthropic", model="claude-3-5-sonnet-20241022") == "claude-sonnet-4-5"


def test_the_demo_image_card_has_size_tiers_and_openai_uses_wildcards():
    seed_channels()
    gemini = ChannelGroup.objects.get(group__name="gemini-standard").group_id
    price = (
        channel_snapshot_for_group(gemini)
        .price_for(platform="gemini", model="gemini-2.5-flash-image-preview")
        .price
    )
    assert price.billing_mode == "image"
    assert select_tier_interval(price.intervals, "4K").per_request_price == Decimal("0.156")
    openai = ChannelGroup.objects.get(group__name="openai-standard").group_id
    match = channel_snapshot_for_group(openai).price_for(platform="openai", model="gpt-4o-mini-2024-07-18")
    assert match.card.models == ("gpt-4o-mini*",)


def test_the_channels_take_the_groups_the_accounts_demo_made():
    groups = accounts_demo.seed_groups_and_accounts()
    seed_channels()
    assert ChannelGroup.objects.get(group=groups["anthropic-premium"]).channel.name == "Claude retail"
    assert Channel.objects.get(name="Gemini images").groups.get().platform == "gemini"
