"""Money typed with a decimal comma, in real Chromium: read as a decimal point, never as digits."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from accounts.models import APIKey, User
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_balance_dialog_adds_2_50_when_2_comma_50_is_typed(staff_page):
    user = UserFactory(email="pat@example.com", balance=Decimal("10"))
    page = staff_page
    page.goto(f"/users/{user.pk}/")
    page.get_by_role("button", name="Adjust balance").click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_label("Amount (USD)").press_sequentially("2,50")
    dialog.get_by_label("Note").fill("top-up")
    dialog.get_by_role("button", name="Apply").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    expect(page.locator("#balance-value")).to_have_text("$12.50")
    user.refresh_from_db()
    assert user.balance == Decimal("12.5") and user.total_recharged == Decimal("2.5")


def test_an_ambiguous_comma_is_refused_with_the_value_kept(staff_page):
    user = UserFactory(email="pat@example.com", balance=Decimal("10"))
    page = staff_page
    page.goto(f"/users/{user.pk}/")
    page.get_by_role("button", name="Adjust balance").click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_label("Amount (USD)").press_sequentially("1,000")
    dialog.get_by_label("Note").fill("top-up")
    dialog.get_by_role("button", name="Apply").click()
    expect(dialog).to_contain_text("“1,000” could mean 1000 or 1.000")
    expect(dialog.get_by_label("Amount (USD)")).to_have_value("1,000")
    user.refresh_from_db()
    assert user.balance == Decimal("10")


def test_a_new_users_balance_and_a_keys_quota_take_a_decimal_comma(staff_page):
    page = staff_page
    page.goto("/users/new")
    page.get_by_label("Email address").fill("new@example.com")
    page.get_by_label("Initial balance (USD)").press_sequentially("1,5")
    page.get_by_role("button", name="Create user").click()
    expect(page).to_have_url(re.compile(r"/users/\d+/$"))
    user = User.objects.get(email="new@example.com")
    assert user.balance == Decimal("1.5")

    page.goto("/keys/new")
    page.get_by_label("User").select_option(label="new@example.com")
    page.get_by_label("Name").fill("laptop")
    page.get_by_label("Quota (USD)").press_sequentially("1,5")
    page.get_by_label("5-hour limit (USD)").fill("0,25")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("dialog[open]")).to_contain_text("Key created: laptop")
    key = APIKey.objects.get(name="laptop")
    assert (key.quota_usd, key.rate_limit_5h_usd) == (Decimal("1.5"), Decimal("0.25"))
