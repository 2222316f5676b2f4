"""The channel form's Preview in real Chromium: edit a price, preview, read the totals, nothing saved."""

from __future__ import annotations

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from channels.models import ModelPricing
from tests.billing.test_price_preview import bill_example

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_editing_a_price_and_previewing_shows_the_difference_before_saving(staff_page, screenshot):
    billed = bill_example()
    page = staff_page
    page.goto(f"/channels/{billed['channel'].pk}/")
    page.locator('[name="card-0-input_price"]').fill("4")
    page.get_by_role("button", name="Preview prices").click()

    panel = page.locator("#price-preview")
    # The hand-checked example of tests/billing/test_price_preview.py: $3 → $4/MTok input on
    # 1,262,345 input tokens at a group rate of 1.5.
    expect(panel.locator('[data-total="difference"]')).to_have_text("+$1.8935175")
    expect(panel.locator("#preview-models")).to_contain_text("claude-sonnet-4-5")
    expect(panel.locator("#preview-users")).to_contain_text("alice@example.com")
    expect(panel.locator(".preview-row")).to_have_count(3)
    expect(panel.locator(".preview-row").first).to_contain_text("1,000,000 input × $4")
    panel.scroll_into_view_if_needed()
    screenshot(page, "1280")
    page.set_viewport_size({"width": 375, "height": 800})
    screenshot(page, "375")
    panel.screenshot(path=str(screenshot(page, "375")).replace("-375.png", "-375-panel.png"))

    # A price the form refuses: the preview names the field instead of totals.
    page.locator('[name="card-0-input_price"]').fill("-1")
    page.get_by_role("button", name="Preview prices").click()
    expect(panel.locator('[data-preview="invalid"]')).to_contain_text(
        "Card 1 · Input ($/MTok): Ensure this value is greater than or equal to 0."
    )
    assert ModelPricing.objects.get().input_price == Decimal("0.000003")  # nothing was saved
    assert page.console_errors == []
