"""Demo channels for `manage.py seed_demo`, written through the same service as the console.

Idempotent: a channel that already exists (by name) is left as it is. Groups are looked up by name
and created when missing, so this works whether or not the accounts demo ran first.
"""

from __future__ import annotations

from decimal import Decimal

from accounts.models import Group, User
from channels.models import Channel
from channels.pricing import PriceInterval
from channels.rules import CardSpec, MappingRule
from channels.services import channel_create
from common.money import per_mtok_to_per_token


def mtok(price: str) -> Decimal:
    """A $/MTok price as the per-token Decimal the models store."""
    return per_mtok_to_per_token(Decimal(price))


def _token_card(
    platform: str, models: tuple[str, ...], prices: tuple[str, ...], *intervals: PriceInterval
) -> CardSpec:
    names = ("input_price", "output_price", "cache_write_price", "cache_write_1h_price", "cache_read_price")
    return CardSpec(
        platform=platform,
        models=models,
        **{name: mtok(value) for name, value in zip(names, prices, strict=False) if value},
        intervals=intervals,
    )


def _long_context(*prices: str, above: int = 200_000) -> PriceInterval:
    names = ("input_price", "output_price", "cache_write_price", "cache_read_price")
    return PriceInterval(
        min_tokens=above,
        tier_label=f">{above // 1000}K",
        **{name: mtok(value) for name, value in zip(names, prices, strict=False) if value},
    )


DEMO_CHANNELS = [
    {
        "fields": {
            "name": "Claude retail",
            "description": "Anthropic list prices, with the 200K long-context tier and 1-hour cache writes.",
        },
        "groups": [("anthropic-standard", "anthropic"), ("anthropic-premium", "anthropic")],
        "cards": [
            _token_card(
                "anthropic",
                ("claude-sonnet-4-5", "claude-sonnet-4"),
                ("3", "15", "3.75", "6", "0.3"),
                _long_context("6", "22.5", "7.5", "0.6"),
            ),
            _token_card(
                "anthropic", ("claude-opus-4-1", "claude-opus-4"), ("15", "75", "18.75", "30", "1.5")
            ),
            _token_card("anthropic", ("claude-haiku-*",), ("1", "5", "1.25", "2", "0.1")),
        ],
        "mapping": [
            MappingRule("anthropic", "claude-3-5-sonnet*", "claude-sonnet-4-5"),
            MappingRule("anthropic", "claude-3-opus*", "claude-opus-4-1"),
        ],
    },
    {
        "fields": {
            "name": "OpenAI standard",
            "description": "Billed by the model the client asked for; wildcards cover dated and search variants.",
            "billing_model_source": "requested",
        },
        "groups": [("openai-standard", "openai"), ("openai-subscription", "openai")],
        "cards": [
            _token_card("openai", ("gpt-4o",), ("2.5", "10", "", "", "1.25")),
            _token_card("openai", ("gpt-4o-mini*",), ("0.15", "0.6", "", "", "0.075")),
            _token_card("openai", ("gpt-4.1", "gpt-4.1-2025-*"), ("2", "8", "", "", "0.5")),
        ],
        "mapping": [MappingRule("openai", "gpt-4-turbo*", "gpt-4o")],
    },
    {
        "fields": {
            "name": "Gemini images",
            "description": "Images billed per picture by size tier; Gemini Pro with its long-context tier.",
            "billing_model_source": "upstream",
            "restrict_models": True,
        },
        "groups": [("gemini-standard", "gemini")],
        "cards": [
            CardSpec(
                platform="gemini",
                models=("gemini-2.5-flash-image*",),
                billing_mode="image",
                per_request_price=Decimal("0.039"),
                intervals=tuple(
                    PriceInterval(tier_label=label, per_request_price=Decimal(price))
                    for label, price in (("1K", "0.039"), ("2K", "0.078"), ("4K", "0.156"))
                ),
            ),
            _token_card(
                "gemini",
                ("gemini-2.5-pro",),
                ("1.25", "10", "", "", "0.125"),
                _long_context("2.5", "15", "", "0.25"),
            ),
        ],
        "mapping": [],
    },
]


def seed_channels(actor: User | None = None) -> list[Channel]:
    channels = []
    for spec in DEMO_CHANNELS:
        channel = Channel.objects.filter(name=spec["fields"]["name"]).first()
        if channel is None:
            groups = [_group(name, platform) for name, platform in spec["groups"]]
            channel = channel_create(
                fields=spec["fields"],
                # A group already in another channel (edited by hand since) is left where it is.
                group_ids=[group.pk for group in groups if not group.channel_links.exists()],
                cards=spec["cards"],
                mapping=spec["mapping"],
                actor=actor,
            )
        channels.append(channel)
    return channels


def _group(name: str, platform: str) -> Group:
    group, _ = Group.objects.get_or_create(name=name, defaults={"platform": platform})
    return group
