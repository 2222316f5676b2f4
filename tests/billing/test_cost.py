"""The pure cost engine (docs/pricing.md#components): a hand-computed table, then properties.

Every expected figure in the table is worked out in its comment, in USD per token
(3e-6 = $3/MTok), so a reviewer can check it without running anything.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.cost import CostBreakdown, Usage, compute_cost
from channels.patterns import select_interval
from channels.pricing import Price, PriceInterval
from common.money import format_usd_exact, quantize_usd

D = Decimal
EIGHT_PLACES = D("0.00000001")

# Claude Sonnet-like card: $3 in, $15 out, $3.75 5m write, $6 1h write, $0.30 read, $30 image out.
SONNET = Price(
    input_price=D("0.000003"),
    output_price=D("0.000015"),
    cache_write_price=D("0.00000375"),
    cache_write_1h_price=D("0.000006"),
    cache_read_price=D("0.0000003"),
    image_output_price=D("0.00003"),
)
# Same card with the 1h price left empty: 1h writes fall back to the 5m price.
NO_1H = Price(
    input_price=D("0.000003"),
    output_price=D("0.000015"),
    cache_write_price=D("0.00000375"),
    cache_read_price=D("0.0000003"),
)
# Gemini-image-like card: $0.30 in, $2.50 text out, $30 image out.
GEMINI = Price(input_price=D("0.0000003"), output_price=D("0.0000025"), image_output_price=D("0.00003"))

# (1000, 2000]: explicit input $2, output ×2 ($30), explicit 5m write $5, explicit read $0.10
# next to a ×5 read multiplier that must lose to it.
INTERVAL_A = PriceInterval(
    min_tokens=1000,
    max_tokens=2000,
    tier_label="1k-2k",
    input_price=D("0.000002"),
    output_multiplier=D("2"),
    cache_write_price=D("0.000005"),
    cache_read_price=D("0.0000001"),
    cache_read_multiplier=D("5"),
    sort_order=10,
)
# (2000, ∞): input ×3 ($9), cache writes ×2 ($7.50 5m, $12 1h); output and read stay flat.
INTERVAL_B = PriceInterval(
    min_tokens=2000,
    max_tokens=None,
    tier_label="2k+",
    input_multiplier=D("3"),
    cache_write_multiplier=D("2"),
    sort_order=20,
)
# Given in reverse so the table also proves intervals are taken in sort_order.
TIERED = Price(
    input_price=D("0.000003"),
    output_price=D("0.000015"),
    cache_write_price=D("0.00000375"),
    cache_write_1h_price=D("0.000006"),
    cache_read_price=D("0.0000003"),
    intervals=(INTERVAL_B, INTERVAL_A),
)
BOUNDED = Price(
    input_price=D("0.000003"),
    output_price=D("0.000015"),
    intervals=(INTERVAL_A,),
)
PER_REQUEST = Price(
    billing_mode="per_request",
    per_request_price=D("0.04"),
    intervals=(PriceInterval(tier_label="HD", per_request_price=D("0.1")),),
)
IMAGE = Price(
    billing_mode="image",
    per_request_price=D("0.134"),
    intervals=(
        PriceInterval(tier_label="1K", per_request_price=D("0.039"), sort_order=10),
        PriceInterval(tier_label="4K", per_request_price=D("0.24"), sort_order=20),
    ),
)
HALF_A_UNIT = Price(input_price=D("0.000000005"), output_price=D("0.000000005"))  # 0.5e-8 per token
JUST_UNDER_HALF = Price(input_price=D("0.0000000049"))

MONEY_FIELDS = (
    "input_cost",
    "output_cost",
    "image_output_cost",
    "cache_creation_5m_cost",
    "cache_creation_1h_cost",
    "cache_creation_cost",
    "cache_read_cost",
    "unit_cost",
    "total_cost",
    "actual_cost",
    "account_cost",
)


def case(case_id: str, price: Price | None, usage: Usage, expect: dict[str, Any], **kwargs: Any):
    return pytest.param(price, usage, kwargs, expect, id=case_id)


TABLE = [
    # 12_000 × 3e-6 = 0.036; 800 × 15e-6 = 0.012 → 0.048; × 1.5 = 0.072; account × 1 = 0.048
    case(
        "input_and_output_with_group_rate",
        SONNET,
        Usage(input_tokens=12_000, output_tokens=800),
        {"input_cost": "0.036", "output_cost": "0.012", "total_cost": "0.048", "actual_cost": "0.072"},
        rate_multiplier=D("1.5"),
    ),
    # 1_000 × 3e-6 = 0.003; 2_000 × 3.75e-6 = 0.0075 → 0.0105
    case(
        "cache_write_5m",
        SONNET,
        Usage(input_tokens=1000, cache_creation_5m_tokens=2000),
        {
            "input_cost": "0.003",
            "cache_creation_5m_cost": "0.0075",
            "cache_creation_cost": "0.0075",
            "total_cost": "0.0105",
        },
    ),
    # 1_000 × 3e-6 = 0.003; 2_000 × 6e-6 = 0.012 → 0.015
    case(
        "cache_write_1h",
        SONNET,
        Usage(input_tokens=1000, cache_creation_1h_tokens=2000),
        {
            "input_cost": "0.003",
            "cache_creation_1h_cost": "0.012",
            "cache_creation_cost": "0.012",
            "total_cost": "0.015",
        },
    ),
    # 1_000 × 3.75e-6 = 0.00375; 1_000 × 6e-6 = 0.006 → 0.00975
    case(
        "cache_write_5m_and_1h",
        SONNET,
        Usage(cache_creation_5m_tokens=1000, cache_creation_1h_tokens=1000),
        {
            "cache_creation_5m_cost": "0.00375",
            "cache_creation_1h_cost": "0.006",
            "cache_creation_cost": "0.00975",
            "total_cost": "0.00975",
        },
    ),
    # empty 1h price → 5m price: 2_000 × 3.75e-6 = 0.0075
    case(
        "cache_write_1h_empty_falls_back_to_5m_price",
        NO_1H,
        Usage(cache_creation_1h_tokens=2000),
        {
            "cache_creation_1h_cost": "0.0075",
            "cache_creation_cost": "0.0075",
            "total_cost": "0.0075",
            "cache_write_1h_price": "0.00000375",
        },
    ),
    # 100 × 3e-6 = 0.0003; 10_000 × 0.3e-6 = 0.003 → 0.0033
    case(
        "cache_read",
        SONNET,
        Usage(input_tokens=100, cache_read_tokens=10_000),
        {"input_cost": "0.0003", "cache_read_cost": "0.003", "total_cost": "0.0033"},
    ),
    # 100 × 0.3e-6 = 0.00003; (1_390 − 1_290) × 2.5e-6 = 0.00025; 1_290 × 30e-6 = 0.0387 → 0.03898
    case(
        "image_output_tokens_billed_apart_from_text",
        GEMINI,
        Usage(input_tokens=100, output_tokens=1390, image_output_tokens=1290),
        {
            "input_cost": "0.00003",
            "output_cost": "0.00025",
            "image_output_cost": "0.0387",
            "total_cost": "0.03898",
        },
    ),
    # image 20 > output 10: text output is max(10 − 20, 0) = 0, never negative; 20 × 30e-6 = 0.0006
    case(
        "image_output_above_output_bills_no_negative_text",
        GEMINI,
        Usage(output_tokens=10, image_output_tokens=20),
        {"output_cost": "0", "image_output_cost": "0.0006", "total_cost": "0.0006"},
    ),
    # context 1_000 = A.min: 1000 < 1000 is false → no interval → flat 1_000 × 3e-6 = 0.003
    case(
        "interval_context_exactly_min_is_outside",
        TIERED,
        Usage(input_tokens=1000),
        {"input_cost": "0.003", "total_cost": "0.003", "interval": None},
    ),
    # context 1_001 ∈ (1000, 2000] → A explicit $2: 1_001 × 2e-6 = 0.002002
    case(
        "interval_context_min_plus_one_is_inside",
        TIERED,
        Usage(input_tokens=1001),
        {"input_cost": "0.002002", "total_cost": "0.002002", "interval": "1k-2k"},
    ),
    # context 2_000 = A.max → still A: 2_000 × 2e-6 = 0.004
    case(
        "interval_context_exactly_max_is_inside",
        TIERED,
        Usage(input_tokens=2000),
        {"input_cost": "0.004", "total_cost": "0.004", "interval": "1k-2k"},
    ),
    # context 2_001 → B, input ×3 = 9e-6: 2_001 × 9e-6 = 0.018009
    case(
        "interval_context_max_plus_one_moves_to_next",
        TIERED,
        Usage(input_tokens=2001),
        {"input_cost": "0.018009", "total_cost": "0.018009", "interval": "2k+"},
    ),
    # only A on the card; context 2_001 → no interval → flat 2_001 × 3e-6 = 0.006003
    case(
        "interval_context_max_plus_one_without_next_is_flat",
        BOUNDED,
        Usage(input_tokens=2001),
        {"input_cost": "0.006003", "total_cost": "0.006003", "interval": None},
    ),
    # context = 500 + 300 + 201 = 1_001 → A: 500 × 2e-6 = 0.001; 300 × 5e-6 = 0.0015;
    # 201 × 1e-7 = 0.0000201 → 0.0025201
    case(
        "interval_context_counts_cache_tokens",
        TIERED,
        Usage(input_tokens=500, cache_creation_5m_tokens=300, cache_read_tokens=201),
        {
            "input_cost": "0.001",
            "cache_creation_5m_cost": "0.0015",
            "cache_creation_cost": "0.0015",
            "cache_read_cost": "0.0000201",
            "total_cost": "0.0025201",
            "interval": "1k-2k",
        },
    ),
    # A: 1_500 × 2e-6 = 0.003; output ×2 → 30e-6: 100 × 30e-6 = 0.003 → 0.006
    case(
        "interval_multiplier_scales_base_price",
        TIERED,
        Usage(input_tokens=1500, output_tokens=100),
        {"input_cost": "0.003", "output_cost": "0.003", "total_cost": "0.006", "output_price": "0.00003"},
    ),
    # A: 1_000 × 2e-6 = 0.002; read explicit 1e-7 beats ×5 (1.5e-6): 500 × 1e-7 = 0.00005 → 0.00205
    case(
        "interval_explicit_price_beats_multiplier",
        TIERED,
        Usage(input_tokens=1000, cache_read_tokens=500),
        {"input_cost": "0.002", "cache_read_cost": "0.00005", "total_cost": "0.00205"},
    ),
    # B: 3_000 × 9e-6 = 0.027; B sets no output price → flat 100 × 15e-6 = 0.0015 → 0.0285
    case(
        "interval_without_that_price_uses_flat_price",
        TIERED,
        Usage(input_tokens=3000, output_tokens=100),
        {"input_cost": "0.027", "output_cost": "0.0015", "total_cost": "0.0285"},
    ),
    # B, context 4_000: 2_000 × 9e-6 = 0.018; 5m ×2 = 7.5e-6: 1_000 × 7.5e-6 = 0.0075;
    # 1h ×2 = 12e-6: 1_000 × 12e-6 = 0.012 → 0.0375
    case(
        "interval_cache_write_multiplier_scales_both_buckets",
        TIERED,
        Usage(input_tokens=2000, cache_creation_5m_tokens=1000, cache_creation_1h_tokens=1000),
        {
            "input_cost": "0.018",
            "cache_creation_5m_cost": "0.0075",
            "cache_creation_1h_cost": "0.012",
            "cache_creation_cost": "0.0195",
            "total_cost": "0.0375",
        },
    ),
    # A, context 1_500: 1_000 × 2e-6 = 0.002; 1h keeps the card's 6/3.75 ratio:
    # 5e-6 × 6e-6 / 3.75e-6 = 8e-6; 500 × 8e-6 = 0.004 → 0.006
    case(
        "interval_explicit_cache_write_keeps_1h_ratio",
        TIERED,
        Usage(input_tokens=1000, cache_creation_1h_tokens=500),
        {
            "input_cost": "0.002",
            "cache_creation_1h_cost": "0.004",
            "cache_creation_cost": "0.004",
            "total_cost": "0.006",
            "cache_write_1h_price": "0.000008",
        },
    ),
    # override 1h: (1_000 + 1_000) × 6e-6 = 0.012, nothing in 5m
    case(
        "cache_ttl_override_1h",
        SONNET,
        Usage(cache_creation_5m_tokens=1000, cache_creation_1h_tokens=1000),
        {
            "cache_creation_1h_cost": "0.012",
            "cache_creation_cost": "0.012",
            "total_cost": "0.012",
            "cache_creation_5m_tokens": 0,
            "cache_creation_1h_tokens": 2000,
            "cache_ttl_overridden": True,
        },
        cache_ttl_override="1h",
    ),
    # override 5m: (1_000 + 1_000) × 3.75e-6 = 0.0075, nothing in 1h
    case(
        "cache_ttl_override_5m",
        SONNET,
        Usage(cache_creation_5m_tokens=1000, cache_creation_1h_tokens=1000),
        {
            "cache_creation_5m_cost": "0.0075",
            "cache_creation_cost": "0.0075",
            "total_cost": "0.0075",
            "cache_creation_5m_tokens": 2000,
            "cache_creation_1h_tokens": 0,
            "cache_ttl_overridden": True,
        },
        cache_ttl_override="5m",
    ),
    # 0.048 as in the first case; user override 0.5: 0.048 × 0.5 = 0.024
    case(
        "user_override_multiplier",
        SONNET,
        Usage(input_tokens=12_000, output_tokens=800),
        {
            "input_cost": "0.036",
            "output_cost": "0.012",
            "total_cost": "0.048",
            "actual_cost": "0.024",
            "rate_multiplier_source": "user",
        },
        rate_multiplier=D("0.5"),
        rate_multiplier_source="user",
    ),
    # a free user: 0.048 × 0 = 0 charged, the account still costs 0.048
    case(
        "user_override_zero_charges_nothing",
        SONNET,
        Usage(input_tokens=12_000, output_tokens=800),
        {
            "input_cost": "0.036",
            "output_cost": "0.012",
            "total_cost": "0.048",
            "actual_cost": "0",
            "account_cost": "0.048",
        },
        rate_multiplier=D("0"),
        rate_multiplier_source="user",
    ),
    # account × 0.8: 0.048 × 0.8 = 0.0384; user pays 0.048 × 1
    case(
        "account_multiplier",
        SONNET,
        Usage(input_tokens=12_000, output_tokens=800),
        {
            "input_cost": "0.036",
            "output_cost": "0.012",
            "total_cost": "0.048",
            "account_cost": "0.0384",
        },
        account_rate_multiplier=D("0.8"),
    ),
    # both from the same total, independently: 0.048 × 2 = 0.096; 0.048 × 0.5 = 0.024
    case(
        "group_and_account_multipliers_are_independent",
        SONNET,
        Usage(input_tokens=12_000, output_tokens=800),
        {
            "input_cost": "0.036",
            "output_cost": "0.012",
            "total_cost": "0.048",
            "actual_cost": "0.096",
            "account_cost": "0.024",
        },
        rate_multiplier=D("2"),
        account_rate_multiplier=D("0.5"),
    ),
    # 3 requests × 0.04 = 0.12; × 2 = 0.24
    case(
        "per_request_flat_price",
        PER_REQUEST,
        Usage(request_count=3),
        {"unit_cost": "0.12", "total_cost": "0.12", "actual_cost": "0.24", "unit_count": 3},
        rate_multiplier=D("2"),
    ),
    # tier HD matches the interval: 2 × 0.1 = 0.2
    case(
        "per_request_tier_label_match",
        PER_REQUEST,
        Usage(request_count=2, image_size_tier="HD"),
        {"unit_cost": "0.2", "total_cost": "0.2", "interval": "HD", "unit_price_source": "interval"},
    ),
    # tokens are recorded but not priced in per-request mode: 1 × 0.04 = 0.04
    case(
        "per_request_ignores_tokens",
        PER_REQUEST,
        Usage(input_tokens=100_000, output_tokens=5_000),
        {"unit_cost": "0.04", "total_cost": "0.04", "input_tokens": 100_000},
    ),
    # '4k' matches '4K' (case-insensitive): 2 × 0.24 = 0.48
    case(
        "image_tier_label_match",
        IMAGE,
        Usage(image_count=2, image_size_tier="4k"),
        {"unit_cost": "0.48", "total_cost": "0.48", "interval": "4K", "unit_price_source": "interval"},
    ),
    # 4 × 0.039 = 0.156; × 1.5 = 0.234
    case(
        "image_1k_with_group_rate",
        IMAGE,
        Usage(image_count=4, image_size_tier="1K"),
        {"unit_cost": "0.156", "total_cost": "0.156", "actual_cost": "0.234"},
        rate_multiplier=D("1.5"),
    ),
    # no '2K' interval → per_request_price: 3 × 0.134 = 0.402
    case(
        "image_unknown_tier_falls_back_to_per_request_price",
        IMAGE,
        Usage(image_count=3, image_size_tier="2K"),
        {
            "unit_cost": "0.402",
            "total_cost": "0.402",
            "interval": None,
            "unit_price_source": "per_request_price",
        },
    ),
    # no tier at all → per_request_price: 1 × 0.134 = 0.134
    case(
        "image_without_tier_falls_back_to_per_request_price",
        IMAGE,
        Usage(image_count=1),
        {"unit_cost": "0.134", "total_cost": "0.134", "interval": None},
    ),
    # no card: every amount 0 even with a 1.5 rate, tokens still recorded for the warning
    case(
        "missing_price_bills_zero_but_keeps_tokens",
        None,
        Usage(input_tokens=12_000, output_tokens=800),
        {"total_cost": "0", "actual_cost": "0", "account_cost": "0", "input_tokens": 12_000},
        pricing_source="missing",
        rate_multiplier=D("1.5"),
    ),
    # catalog card, same arithmetic: 1_000_000 × 3e-6 = 3
    case(
        "catalog_price",
        SONNET,
        Usage(input_tokens=1_000_000),
        {"input_cost": "3", "total_cost": "3", "pricing_source": "catalog"},
        pricing_source="catalog",
    ),
    # 1 × 5e-9 = 0.000000005 → half away from zero → 0.00000001 (banker's rounding would give 0)
    case(
        "rounds_half_away_from_zero_at_8th_decimal",
        HALF_A_UNIT,
        Usage(input_tokens=1),
        {"input_cost": "0.00000001", "total_cost": "0.00000001"},
    ),
    # 1 × 4.9e-9 = 0.0000000049 → below half → 0
    case(
        "rounds_below_half_down",
        JUST_UNDER_HALF,
        Usage(input_tokens=1),
        {"input_cost": "0", "total_cost": "0"},
    ),
    # components are quantised first: 0.5e-8 → 1e-8 each, total 2e-8 (raw sum 1e-8 would stay 1e-8)
    case(
        "components_are_quantised_before_summing",
        HALF_A_UNIT,
        Usage(input_tokens=1, output_tokens=1),
        {"input_cost": "0.00000001", "output_cost": "0.00000001", "total_cost": "0.00000002"},
    ),
    # actual from the quantised total: 1e-8 × 2.5 = 2.5e-8 → 3e-8 (half away from zero)
    case(
        "actual_cost_rounds_half_away_from_zero",
        HALF_A_UNIT,
        Usage(input_tokens=1),
        {"input_cost": "0.00000001", "total_cost": "0.00000001", "actual_cost": "0.00000003"},
        rate_multiplier=D("2.5"),
    ),
    # nothing used, nothing billed
    case("no_tokens_costs_nothing", SONNET, Usage(), {"total_cost": "0"}),
]


@pytest.mark.parametrize(("price", "usage", "kwargs", "expect"), TABLE)
def test_it_prices_the_hand_computed_table(price, usage, kwargs, expect):
    kwargs.setdefault("pricing_source", "channel")
    breakdown = compute_cost(price=price, usage=usage, **kwargs)

    expect = dict(expect)
    total = expect["total_cost"]
    # Unlisted amounts are 0, and with multipliers of 1 the user and account pay the total.
    rate_is_one = kwargs.get("rate_multiplier", D(1)) == 1
    account_is_one = kwargs.get("account_rate_multiplier", D(1)) == 1
    for name in MONEY_FIELDS:
        if name == "actual_cost" and rate_is_one or name == "account_cost" and account_is_one:
            default = total
        else:
            default = "0"
        wanted = D(expect.pop(name, default))
        got = getattr(breakdown, name)
        assert got == wanted, f"{name}: {got} != {wanted}"
        assert got.as_tuple().exponent == -8, f"{name} is not quantised to 8 places: {got!r}"

    for name, wanted in expect.items():
        got = getattr(breakdown, name)
        if name == "interval":
            got = got.tier_label if got is not None else None
        elif isinstance(got, Decimal):
            wanted = D(wanted)
        assert got == wanted, f"{name}: {got!r} != {wanted!r}"

    assert breakdown.total_cost == sum(breakdown.components().values())
    assert format_usd_exact(breakdown.total_cost) in breakdown.explain()


def test_the_table_has_at_least_25_cases():
    assert len(TABLE) >= 25


def test_it_explains_the_cost_as_a_sentence():
    breakdown = compute_cost(
        price=SONNET,
        usage=Usage(input_tokens=12_000, output_tokens=800),
        pricing_source="channel",
        rate_multiplier=D("1.5"),
        billing_model="claude-sonnet-4-5",
    )

    assert breakdown.explain() == (
        "claude-sonnet-4-5, channel price, token mode: "
        "12,000 input × $3.00/MTok = $0.036; 800 output × $15.00/MTok = $0.012; "
        "total $0.048; × 1.5 (group rate) = $0.072 charged; account cost $0.048 × 1.0 = $0.048."
    )


def test_it_explains_the_interval_and_the_ttl_override():
    breakdown = compute_cost(
        price=TIERED,
        usage=Usage(input_tokens=2000, cache_creation_5m_tokens=1000),
        pricing_source="channel",
        cache_ttl_override="1h",
    )

    text = breakdown.explain()
    assert "interval '2k+' (2,000 < 3,000 context tokens ≤ ∞)" in text
    assert "all cache writes billed as 1h (TTL override)" in text
    # 1_000 × (2 × 6e-6) = 0.012
    assert "1,000 cache write 1h × $12.00/MTok = $0.012" in text


def test_it_explains_a_missing_price():
    breakdown = compute_cost(
        price=None,
        usage=Usage(input_tokens=5, output_tokens=3),
        pricing_source="missing",
        billing_model="mystery-1",
    )

    assert breakdown.explain().startswith(
        "mystery-1: no price found (pricing_source=missing), billed $0 for 5 input, 3 output: total $0.00"
    )


def test_it_explains_an_image_fallback():
    breakdown = compute_cost(
        price=IMAGE, usage=Usage(image_count=3, image_size_tier="2K"), pricing_source="channel"
    )

    assert "3 images (2K) × $0.134 (per-request price; no interval for '2K') = $0.402" in breakdown.explain()


def test_it_takes_intervals_in_sort_order():
    wide = PriceInterval(min_tokens=0, max_tokens=None, tier_label="wide", sort_order=20)
    narrow = PriceInterval(min_tokens=0, max_tokens=100, tier_label="narrow", sort_order=10)

    assert select_interval((wide, narrow), 50) is narrow
    assert select_interval((wide, narrow), 101) is wide
    assert select_interval((wide, narrow), 0) is None  # 0 < 0 is false


def test_it_refuses_floats():
    with pytest.raises(TypeError):
        Price(input_price=0.000003)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        compute_cost(price=SONNET, usage=Usage(), pricing_source="channel", rate_multiplier=1.5)  # type: ignore[arg-type]


def test_it_refuses_negative_prices_and_counts():
    with pytest.raises(ValueError):
        Price(input_price=D("-0.000001"))
    with pytest.raises(ValueError):
        Usage(input_tokens=-1)


def test_it_requires_missing_exactly_when_there_is_no_price():
    with pytest.raises(ValueError):
        compute_cost(price=None, usage=Usage(), pricing_source="channel")
    with pytest.raises(ValueError):
        compute_cost(price=SONNET, usage=Usage(), pricing_source="missing")


def test_it_round_trips_through_json():
    breakdown = compute_cost(
        price=TIERED,
        usage=Usage(input_tokens=1500, output_tokens=100, cache_creation_1h_tokens=7, cache_read_tokens=3),
        pricing_source="channel",
        rate_multiplier=D("1.25"),
        rate_multiplier_source="user",
        account_rate_multiplier=D("0.9"),
        cache_ttl_override="1h",
        billing_model="claude-sonnet-4-5",
    )

    stored = json.loads(json.dumps(breakdown.as_dict()))
    restored = CostBreakdown.from_dict(stored)

    assert restored == breakdown
    assert restored.explain() == breakdown.explain()
    assert stored["total_cost"] == str(breakdown.total_cost)
    assert stored["cache_ttl_overridden"] is True


# --- properties -----------------------------------------------------------------------------------


def per_token_prices(places: int = 12):
    # Up to $100/MTok; `places` decimals per token (12 is what the cards store).
    return st.integers(0, 100 * 10 ** (places - 6)).map(lambda n: D(n).scaleb(-places))


multipliers = st.integers(0, 500).map(lambda n: D(n).scaleb(-2))  # 0.00 … 5.00
optional_prices = st.none() | per_token_prices()
optional_multipliers = st.none() | multipliers
tiers = st.sampled_from([None, "1K", "2K", "4K", "hd"])


@st.composite
def intervals(draw):
    low = draw(st.integers(0, 2_000_000))
    width = draw(st.none() | st.integers(1, 2_000_000))
    return PriceInterval(
        min_tokens=low,
        max_tokens=None if width is None else low + width,
        tier_label=draw(st.sampled_from(["", "1K", "2K", "4K", "HD"])),
        input_price=draw(optional_prices),
        output_price=draw(optional_prices),
        cache_write_price=draw(optional_prices),
        cache_read_price=draw(optional_prices),
        input_multiplier=draw(optional_multipliers),
        output_multiplier=draw(optional_multipliers),
        cache_write_multiplier=draw(optional_multipliers),
        cache_read_multiplier=draw(optional_multipliers),
        per_request_price=draw(st.none() | st.integers(0, 10**6).map(lambda n: D(n).scaleb(-4))),
        sort_order=draw(st.integers(0, 5)),
    )


def cards(prices=None, modes=("token", "per_request", "image"), with_intervals=True):
    prices = per_token_prices() if prices is None else prices
    return st.builds(
        Price,
        input_price=prices,
        output_price=prices,
        cache_write_price=prices,
        cache_write_1h_price=st.none() | prices,
        cache_read_price=prices,
        image_output_price=prices,
        per_request_price=st.none() | st.integers(0, 10**6).map(lambda n: D(n).scaleb(-4)),
        billing_mode=st.sampled_from(modes),
        intervals=st.lists(intervals(), max_size=3).map(tuple) if with_intervals else st.just(()),
    )


token_counts = st.integers(0, 10_000_000)
usages = st.builds(
    Usage,
    input_tokens=token_counts,
    output_tokens=token_counts,
    cache_creation_5m_tokens=token_counts,
    cache_creation_1h_tokens=token_counts,
    cache_read_tokens=token_counts,
    image_output_tokens=token_counts,
    request_count=st.integers(0, 1000),
    image_count=st.integers(0, 100),
    image_size_tier=tiers,
)
ttl_overrides = st.sampled_from([None, "5m", "1h"])


@st.composite
def priced_requests(draw):
    price = draw(st.none() | cards())
    return compute_cost(
        price=price,
        usage=draw(usages),
        pricing_source="missing" if price is None else draw(st.sampled_from(["channel", "catalog"])),
        rate_multiplier=draw(multipliers),
        rate_multiplier_source=draw(st.sampled_from(["group", "user", "default"])),
        account_rate_multiplier=draw(multipliers),
        cache_ttl_override=draw(ttl_overrides),
        billing_model=draw(st.sampled_from(["", "claude-sonnet-4-5", "gpt-image-1"])),
    )


def half_up(amount: Decimal) -> Decimal:
    # Written out here rather than imported, so the property checks the engine's rounding.
    return amount.quantize(EIGHT_PLACES, rounding=ROUND_HALF_UP)


@settings(deadline=None)
@given(priced_requests())
def test_cost_is_never_negative(breakdown):
    for name in MONEY_FIELDS:
        assert getattr(breakdown, name) >= 0, name


@settings(deadline=None)
@given(priced_requests())
def test_total_is_exactly_the_sum_of_components(breakdown):
    assert (
        breakdown.cache_creation_cost == breakdown.cache_creation_5m_cost + breakdown.cache_creation_1h_cost
    )
    assert breakdown.total_cost == sum(breakdown.components().values())
    for name in MONEY_FIELDS:
        assert getattr(breakdown, name).as_tuple().exponent == -8, name


@settings(deadline=None)
@given(priced_requests())
def test_actual_and_account_cost_are_the_quantised_total_times_the_multiplier(breakdown):
    assert breakdown.actual_cost == half_up(breakdown.total_cost * breakdown.rate_multiplier)
    assert breakdown.account_cost == half_up(breakdown.total_cost * breakdown.account_rate_multiplier)


@settings(deadline=None)
@given(priced_requests())
def test_explain_states_the_total_and_the_charge(breakdown):
    text = breakdown.explain()
    total = re.search(r"total \$([\d,.]+);", text)
    charged = re.search(r"= \$([\d,.]+) charged", text)
    assert total and D(total.group(1).replace(",", "")) == breakdown.total_cost
    assert charged and D(charged.group(1).replace(",", "")) == breakdown.actual_cost


@settings(deadline=None)
@given(priced_requests())
def test_as_dict_round_trips(breakdown):
    assert CostBreakdown.from_dict(json.loads(json.dumps(breakdown.as_dict()))) == breakdown


@settings(deadline=None)
@given(
    priced_requests(),
    st.sets(st.sampled_from(["cache_ttl_overridden", *MONEY_FIELDS, "interval"])),
)
def test_as_dict_leaves_out_exactly_what_it_is_told_and_keeps_the_order(breakdown, leave_out):
    whole = breakdown.as_dict()
    part = breakdown.as_dict(leave_out=frozenset(leave_out))
    kept = [name for name in whole if name not in leave_out]
    assert list(part) == kept
    assert part == {name: whole[name] for name in kept}


@pytest.mark.parametrize("name", ["input_costs", "cache_ttl_overriden", "usage_source", "version"])
def test_as_dict_refuses_to_leave_out_an_entry_it_does_not_write(name):
    breakdown = compute_cost(price=SONNET, usage=Usage(input_tokens=10), pricing_source="channel")
    # Neither a misspelt field nor "version" (always written) is dropped silently.
    with pytest.raises(ValueError, match=name):
        breakdown.as_dict(leave_out=frozenset({"input_cost", name}))
    assert "input_cost" not in breakdown.as_dict(leave_out=frozenset({"input_cost"}))


def doubled(usage: Usage) -> Usage:
    return Usage(
        input_tokens=2 * usage.input_tokens,
        output_tokens=2 * usage.output_tokens,
        cache_creation_5m_tokens=2 * usage.cache_creation_5m_tokens,
        cache_creation_1h_tokens=2 * usage.cache_creation_1h_tokens,
        cache_read_tokens=2 * usage.cache_read_tokens,
        image_output_tokens=2 * usage.image_output_tokens,
    )


TOKEN_COMPONENTS = (
    "input_cost",
    "output_cost",
    "image_output_cost",
    "cache_creation_5m_cost",
    "cache_creation_1h_cost",
    "cache_read_cost",
)


# Cards without intervals here: doubling the tokens doubles the context, which may rightly move
# the request into another interval with other prices.
@settings(deadline=None)
@given(cards(modes=("token",), with_intervals=False), usages, ttl_overrides)
def test_doubling_every_token_count_doubles_the_cost_within_rounding(price, usage, ttl):
    once = compute_cost(price=price, usage=usage, pricing_source="channel", cache_ttl_override=ttl)
    twice = compute_cost(price=price, usage=doubled(usage), pricing_source="channel", cache_ttl_override=ttl)

    # Each component is q(n·p). With q(x) = x + e, |e| ≤ 0.5e-8: q(2x) − 2·q(x) = e′ − 2e, so
    # |·| ≤ 1.5e-8; both sides are multiples of 1e-8, so the gap is at most 1e-8 per component,
    # and at most 6e-8 on the total (six token components).
    for name in TOKEN_COMPONENTS:
        assert abs(getattr(twice, name) - 2 * getattr(once, name)) <= EIGHT_PLACES, name
    assert abs(twice.total_cost - 2 * once.total_cost) <= 6 * EIGHT_PLACES


# Prices with at most 8 decimals per token ($3/MTok = 3e-6 is one) make n·p exact at 8 places,
# so there is nothing to round and doubling must be exact.
@settings(deadline=None)
@given(
    cards(prices=per_token_prices(places=8), modes=("token",), with_intervals=False), usages, ttl_overrides
)
def test_doubling_every_token_count_doubles_the_cost_exactly_on_8_decimal_prices(price, usage, ttl):
    once = compute_cost(price=price, usage=usage, pricing_source="channel", cache_ttl_override=ttl)
    twice = compute_cost(price=price, usage=doubled(usage), pricing_source="channel", cache_ttl_override=ttl)

    for name in (*TOKEN_COMPONENTS, "total_cost"):
        assert getattr(twice, name) == 2 * getattr(once, name), name


@pytest.mark.parametrize(
    ("amount", "expect"),
    [
        ("0.000000005", "0.00000001"),
        ("-0.000000005", "-0.00000001"),
        ("0.0000000049999", "0"),
        ("123456789012345678901234567890.123456785", "123456789012345678901234567890.12345679"),
    ],
)
def test_quantize_usd_rounds_half_away_from_zero_whatever_the_threads_context(amount, expect):
    # A caller's narrow context (5 digits, rounding down) must not reach the money's rounding.
    with localcontext() as narrow:
        narrow.prec, narrow.rounding = 5, ROUND_DOWN
        rounded = quantize_usd(Decimal(amount))
    assert rounded == Decimal(expect) and rounded.as_tuple().exponent == -8
