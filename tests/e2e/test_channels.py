"""The channel form in real Chromium: cards and rows added in place, catalog prices as you type."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from channels.models import Channel
from tests.factories import ChannelFactory, ChannelGroupFactory, GroupFactory, ModelPricingFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def add_card(page, index):
    page.get_by_role("button", name="Add pricing card").click()
    card = page.locator(f"#card-{index}")
    expect(card).to_be_visible()
    return card


def price(card, index, name):
    return card.locator(f'[name="card-{index}-{name}"]')


def test_create_a_channel_with_catalog_prices_and_an_interval_then_reopen_it(
    staff_page, live_server, screenshot
):
    GroupFactory(name="claude-pool")
    page = staff_page
    page.goto("/channels/new")
    page.get_by_label("Name").fill("Claude retail")
    page.get_by_label("Groups").select_option(label="claude-pool")
    card = add_card(page, 0)

    card.get_by_label("Models").press_sequentially("claude-sonnet-4-5", delay=15)
    expect(card.locator("[data-catalog-source]")).to_have_text(
        "Prices filled in from the catalog default for claude-sonnet-4-5 (genai-prices 0.2.3, prices as of 2026-11-10)."
    )
    for name, value in (
        ("input_price", "3"),
        ("output_price", "15"),
        ("cache_write_price", "3.75"),
        ("cache_write_1h_price", "6"),
        ("cache_read_price", "0.3"),
        ("image_output_price", ""),
    ):
        expect(price(card, 0, name)).to_have_value(value)
    expect(card.locator(".model-chip")).to_have_text(["claude-sonnet-4-5×"])

    card.get_by_role("button", name="Add interval").click()
    row = card.locator("#card-0-iv-0")
    row.get_by_label("Above (tokens)").fill("200000")
    row.get_by_label("Tier label").fill(">200K")
    row.get_by_label("Input ($/MTok)").fill("6")
    row.get_by_label("Output ($/MTok)").fill("22.5")
    screenshot(page, "filled")
    page.get_by_role("button", name="Create channel").click()

    expect(page.get_by_role("status").first).to_contain_text("Channel Claude retail created.")
    channel = Channel.objects.get()
    expect(page).to_have_url(f"{live_server.url}/channels/{channel.pk}/")
    card_row = channel.pricing_cards.get()
    assert (card_row.input_price, card_row.cache_write_1h_price) == (Decimal("0.000003"), Decimal("0.000006"))
    assert card_row.intervals.get().output_price == Decimal("0.0000225")

    page.goto(f"/channels/{channel.pk}/")  # reopen
    card = page.locator("#card-0")
    for name, value in (
        ("input_price", "3"),
        ("output_price", "15"),
        ("cache_write_price", "3.75"),
        ("cache_write_1h_price", "6"),
        ("cache_read_price", "0.3"),
    ):
        expect(price(card, 0, name)).to_have_value(value)
    expect(card.locator('[name="card-0-iv-0-min_tokens"]')).to_have_value("200000")
    expect(card.locator('[name="card-0-iv-0-input_price"]')).to_have_value("6")
    expect(card.locator('[name="card-0-iv-0-output_price"]')).to_have_value("22.5")
    expect(page.locator("#channel-history")).to_contain_text("Created")
    screenshot(page, "reopened")
    assert page.console_errors == []


def test_typed_prices_are_never_overwritten_and_filled_ones_follow_the_model(staff_page):
    page = staff_page
    page.goto("/channels/new")
    card = add_card(page, 0)
    price(card, 0, "input_price").fill("2.5")
    card.get_by_label("Models").fill("claude-sonnet-4-5")
    expect(card.locator("[data-catalog-source]")).to_have_text(
        "Prices filled in from the catalog default for claude-sonnet-4-5 (genai-prices 0.2.3, prices as of 2026-11-10); the prices you typed were kept."
    )
    expect(price(card, 0, "input_price")).to_have_value("2.5")
    expect(price(card, 0, "output_price")).to_have_value("15")

    # Prices we filled in follow a change of model; the one the operator typed stays.
    price(card, 0, "cache_read_price").fill("0.25")
    card.get_by_label("Models").fill("claude-opus-4-1")
    expect(card.locator("[data-catalog-source]")).to_contain_text("catalog default for claude-opus-4-1")
    expect(price(card, 0, "output_price")).to_have_value("75")
    expect(price(card, 0, "input_price")).to_have_value("2.5")
    expect(price(card, 0, "cache_read_price")).to_have_value("0.25")

    card.get_by_label("Models").fill("house-model-7")
    expect(card.locator("[data-catalog-source]")).to_have_text(
        "No catalog default for “house-model-7” in genai-prices 0.2.3, prices as of 2026-11-10: enter the prices yourself."
    )
    expect(price(card, 0, "output_price")).to_have_value("")
    expect(price(card, 0, "input_price")).to_have_value("2.5")

    # Sub-cent prices convert exactly: $0.000000075 per token is $0.075/MTok.
    price(card, 0, "cache_read_price").fill("")
    card.get_by_label("Models").fill("openai/gpt-4o-mini, gpt-4o-mini-*")
    expect(price(card, 0, "cache_read_price")).to_have_value("0.075")
    expect(price(card, 0, "output_price")).to_have_value("0.6")
    expect(price(card, 0, "input_price")).to_have_value("2.5")
    assert page.console_errors == []


def test_the_catalogs_long_context_tier_is_offered_as_intervals(staff_page):
    page = staff_page
    page.goto("/channels/new")
    card = add_card(page, 0)
    button = card.get_by_role("button", name="Add the catalog's long-context intervals (above 200K tokens)")
    expect(button).to_be_hidden()
    card.get_by_label("Models").fill("claude-sonnet-4-5, claude-sonnet-4-5-*")
    expect(button).to_be_visible()
    card.get_by_role("button", name="Add interval").click()  # one row of the operator's first
    expect(card.locator(".interval-row")).to_have_count(1)
    card.locator("#card-0-iv-0").get_by_text("Remove interval").click()
    expect(card.locator("#card-0-iv-0").get_by_label("Input ($/MTok)")).to_be_hidden()
    expect(card.locator("#card-0-iv-0").get_by_text("Undo remove")).to_be_visible()
    button.click()
    row = card.locator("#card-0-iv-1")
    expect(row.locator('[name="card-0-iv-1-min_tokens"]')).to_have_value("200000")
    expect(row.locator('[name="card-0-iv-1-input_price"]')).to_have_value("6")
    expect(row.locator('[name="card-0-iv-1-cache_read_price"]')).to_have_value("0.6")
    expect(button).to_be_hidden()
    expect(card.locator('[name="card-0-iv-TOTAL_FORMS"]')).to_have_value("2")


def test_cards_are_added_and_removed_in_place_and_errors_keep_every_card(staff_page, screenshot):
    page = staff_page
    page.goto("/channels/new")
    page.evaluate("window.marker = 'same page'")
    page.get_by_label("Name").fill("Overlaps")
    first = add_card(page, 0)
    first.get_by_label("Models").fill("claude-*")
    price(first, 0, "input_price").fill("3")
    price(first, 0, "output_price").fill("15")
    second = add_card(page, 1)
    second.get_by_label("Models").fill("claude-sonnet-4, claude-sonnet-4-5")
    price(second, 1, "input_price").fill("2.5")
    price(second, 1, "output_price").fill("10")
    third = add_card(page, 2)
    third.get_by_label("Models").fill("removed-before-saving")
    third.get_by_text("Remove card").click()
    expect(third.get_by_text("Card 3 will be removed when you save.")).to_be_visible()
    expect(third.get_by_label("Models")).to_be_hidden()
    assert page.evaluate("window.marker") == "same page"

    page.get_by_role("button", name="Create channel").click()
    expect(page.get_by_role("alert").first).to_contain_text("Nothing was saved")
    second = page.locator("#card-1")
    expect(second).to_contain_text("`claude-*` already covers `claude-sonnet-4` (in card 1).")
    expect(second.get_by_label("Models")).to_have_value("claude-sonnet-4, claude-sonnet-4-5")
    expect(price(second, 1, "input_price")).to_have_value("2.5")
    expect(price(page.locator("#card-0"), 0, "input_price")).to_have_value("3")
    screenshot(page, "error")
    assert not Channel.objects.exists()

    second.get_by_text("Remove card").click()
    page.get_by_role("button", name="Create channel").click()
    expect(page.get_by_role("status").first).to_contain_text("Channel Overlaps created.")
    assert list(Channel.objects.get().pricing_cards.values_list("models", flat=True)) == [["claude-*"]]


def test_model_chips_mirror_the_text_and_remove_a_name(staff_page):
    page = staff_page
    page.goto("/channels/new")
    card = add_card(page, 0)
    card.get_by_label("Models").fill("gpt-4o, gpt-4o-mini\no3-*")
    expect(card.locator(".model-chip")).to_have_text(["gpt-4o×", "gpt-4o-mini×", "o3-*×"])
    card.get_by_role("button", name="Remove gpt-4o-mini").click()
    expect(card.get_by_label("Models")).to_have_value("gpt-4o, o3-*")
    expect(card.locator(".model-chip")).to_have_count(2)


def test_an_image_card_shows_tiers_and_the_mapping_editor_adds_rows(staff_page, screenshot):
    page = staff_page
    page.goto("/channels/new")
    page.get_by_label("Name").fill("Images")
    card = add_card(page, 0)
    card.get_by_label("Billing mode").select_option("image")
    card.get_by_label("Platform").select_option("gemini")
    expect(price(card, 0, "input_price")).to_be_hidden()
    card.get_by_label("Models").fill("gemini-2.5-flash-image")
    expect(card.locator("[data-catalog-source]")).to_have_text("")
    for index, (label, amount) in enumerate((("1K", "0.039"), ("2K", "0.078"), ("4K", "0.156"))):
        card.get_by_role("button", name="Add interval").click()
        row = card.locator(f"#card-0-iv-{index}")
        expect(row.get_by_label("Above (tokens)")).to_be_hidden()
        row.get_by_label("Tier label").fill(label)
        row.get_by_label("Per unit ($)").fill(amount)
    page.get_by_role("button", name="Add mapping").click()
    mapping = page.locator("#map-0")
    mapping.get_by_label("Platform").select_option("gemini")
    mapping.get_by_label("Requested model").fill("nano-banana")
    mapping.get_by_label("Send as").fill("gemini-2.5-flash-image")
    screenshot(page, "image-card")
    page.get_by_role("button", name="Create channel").click()
    expect(page.get_by_role("status").first).to_contain_text("Channel Images created.")
    channel = Channel.objects.get()
    card = channel.pricing_cards.get()
    assert [(i.tier_label, i.per_request_price) for i in card.intervals.all()] == [
        ("1K", Decimal("0.039")),
        ("2K", Decimal("0.078")),
        ("4K", Decimal("0.156")),
    ]
    assert channel.model_mapping == {"gemini": {"nano-banana": "gemini-2.5-flash-image"}}
    assert card.input_price is None and card.image_output_price is None
    assert page.console_errors == []  # adding rows broke no Content-Security-Policy rule


def test_the_list_and_the_form_at_desktop_and_phone_widths(staff_page, screenshot):
    for n, name in enumerate(("Claude retail", "OpenAI wholesale", "Images")):
        channel = ChannelFactory(
            name=name, billing_model_source=("channel_mapped", "requested", "upstream")[n]
        )
        ChannelGroupFactory(channel=channel, group=GroupFactory(name=f"pool-{n}"))
        ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5", "claude-opus-4-1"][: n + 1])
    page = staff_page
    page.goto("/channels/")
    expect(page.locator("#channel-table tbody tr")).to_have_count(3)
    screenshot(page, "list")
    page.get_by_label("Search").fill("open")
    expect(page).to_have_url(re.compile(r"q=open"))
    expect(page.locator("#channel-table tbody tr")).to_have_count(1)

    page.get_by_role("link", name="OpenAI wholesale").click()
    expect(page.locator("#card-0")).to_be_visible()
    screenshot(page, "edit")
    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    expect(page.locator("#card-0")).to_be_visible()
    screenshot(page, "phone")
    page.goto("/channels/")
    screenshot(page, "list-phone")
    assert page.console_errors == []


def test_a_new_card_takes_its_platform_from_the_models_vendor_and_a_saved_one_warns(staff_page, screenshot):
    channel = ChannelFactory(name="Mixed")
    ModelPricingFactory(channel=channel, platform="anthropic", models=["claude-sonnet-4-5"])
    page = staff_page
    page.goto(f"/channels/{channel.pk}/")
    saved = page.locator("#card-0")
    saved.get_by_label("Models").fill("gpt-4o")
    expect(saved.locator("[data-platform-warning]")).to_have_text(
        "“gpt-4o” is OpenAI's model, but this card is for Anthropic."
    )
    expect(saved.get_by_label("Platform")).to_have_value("anthropic")  # a saved card is never changed
    saved.get_by_label("Platform").select_option("openai")
    expect(saved.locator("[data-platform-warning]")).to_have_text("")

    card = add_card(page, 1)
    expect(card.get_by_label("Platform")).to_have_value("anthropic")
    card.get_by_label("Models").fill("gemini-2.5-flash")
    expect(card.get_by_label("Platform")).to_have_value("gemini")
    expect(card.locator("[data-catalog-source]")).to_contain_text(
        "Platform set to Gemini, the model's vendor."
    )
    expect(card.locator("[data-catalog-source]")).to_contain_text(
        "(genai-prices 0.2.3, prices as of 2026-11-10)"
    )
    # Once the operator picks the platform, the vendor no longer moves it.
    card.get_by_label("Platform").select_option("antigravity")
    card.get_by_label("Models").fill("gpt-4o")
    expect(card.get_by_label("Platform")).to_have_value("antigravity")
    expect(card.locator("[data-platform-warning]")).to_contain_text("“gpt-4o” is OpenAI's model")
    card.get_by_label("Models").fill("gemini-2.5-pro")
    card.get_by_label("Platform").select_option("gemini")
    screenshot(page, "platforms")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status").first).to_contain_text("Saved Mixed.")
    cards = list(channel.pricing_cards.order_by("sort_order").values_list("platform", "models"))
    assert cards == [("openai", ["gpt-4o"]), ("gemini", ["gemini-2.5-pro"])]
    assert page.console_errors == []


def test_a_channel_is_deleted_from_its_page(staff_page):
    channel = ChannelFactory(name="Old prices")
    ChannelGroupFactory(channel=channel, group=GroupFactory(name="pool"))
    ModelPricingFactory(channel=channel)
    page = staff_page
    page.goto(f"/channels/{channel.pk}/")
    page.get_by_role("button", name="Delete").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("Its 1 group (pool) will be billed at the catalog's default prices")
    dialog.get_by_role("button", name="Delete channel").click()
    expect(page).to_have_url(re.compile(r"/channels/$"))
    expect(page.get_by_role("status").first).to_contain_text("Channel Old prices deleted.")
    assert not Channel.objects.filter(pk=channel.pk).exists()
    assert page.console_errors == []
