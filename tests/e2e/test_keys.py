"""API keys in real Chromium: quick picks, the secret dialog, row dialogs and live badges."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import APIKey
from accounts.rules import api_key_hash
from accounts.services.keys import api_key_usage_charge
from tests.factories import APIKeyFactory, GroupFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def row(page, key: APIKey):
    return page.locator(f"#key-row-{key.pk}")


def open_action(page, key: APIKey, name: str):
    row(page, key).get_by_role("button", name=re.compile("^Actions")).click()
    row(page, key).get_by_role("button", name=name).click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_be_visible()
    return dialog


def test_create_a_key_for_30_days_with_a_quota_then_reset_it_and_clear_its_expiry(staff_page, screenshot):
    user = UserFactory(email="ann@example.com")
    pool = GroupFactory(name="Claude pool")
    page = staff_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto("/keys/")
    page.get_by_role("link", name="New key").click()
    page.get_by_label("User").select_option(label="ann@example.com")
    page.get_by_label("Group").select_option(label="Claude pool (Anthropic, standard)")
    page.get_by_label("Name").fill("ann-laptop")
    page.get_by_label("Quota (USD)").fill("5")
    page.get_by_role("button", name="30 days from now").click()
    expected_day = (timezone.localtime() + timedelta(days=30)).strftime("%Y-%m-%d")
    expect(page.get_by_label(re.compile("^Expires at"))).to_have_value(re.compile(f"^{expected_day}T"))
    screenshot(page, "form")

    page.get_by_role("button", name="Create key").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("It will not be shown again")
    secret = dialog.get_by_label("API key for ann@example.com").input_value()
    assert re.fullmatch(r"sk-[0-9a-f]{64}", secret)
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    screenshot(page, "secret")

    key = APIKey.objects.get(key_hash=api_key_hash(secret))
    assert (key.user, key.group, key.name, key.quota_usd) == (user, pool, "ann-laptop", Decimal("5"))
    assert abs(key.expires_at - (timezone.now() + timedelta(days=30))) < timedelta(minutes=2)

    dialog.get_by_role("link", name="Done, go to the keys").click()
    expect(page).to_have_url(re.compile(r"/keys/$"))
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("4.25"))
    page.reload()
    expect(page.locator(f"#key-{key.pk}-quota")).to_have_text("$4.25 / $5.00")
    expect(page.locator(f"#key-{key.pk}-quota")).to_have_class(re.compile("usage-warn"))
    expect(page.locator(f"#key-{key.pk}-expires")).to_contain_text(expected_day)
    screenshot(page, "list")
    page.evaluate("window.marker = 'same page'")

    dialog = open_action(page, key, "Reset quota…")
    expect(dialog).to_contain_text("$4.25")
    expect(dialog).to_contain_text("85%")
    screenshot(page, "reset-dialog")
    dialog.get_by_role("button", name="Reset quota").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    expect(page.locator(f"#key-{key.pk}-quota")).to_have_text("$0.00 / $5.00")
    expect(page.locator(f"#key-{key.pk}-quota")).to_have_class(re.compile("usage-ok"))

    dialog = open_action(page, key, "Clear expiration…")
    expect(dialog).to_contain_text(expected_day)
    dialog.get_by_role("button", name="Clear expiration").click()
    expect(page.locator(f"#key-{key.pk}-expires")).to_have_text("never")
    expect(page.get_by_role("status").last).to_contain_text("no longer expires")
    assert page.evaluate("window.marker") == "same page"  # only the cells re-rendered
    key.refresh_from_db()
    assert (key.quota_used_usd, key.expires_at, key.status) == (Decimal("0"), None, "active")
    assert page.console_errors == []


def test_an_exhausted_key_becomes_active_when_its_quota_is_reset(staff_page, screenshot):
    key = APIKeyFactory(name="spent", quota_usd=Decimal("2"))
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("2.5"))
    page = staff_page
    page.goto("/keys/")
    expect(page.locator(f"#key-{key.pk}-status")).to_contain_text("Quota exhausted")
    expect(page.locator(f"#key-{key.pk}-quota")).to_have_class(re.compile("usage-danger"))
    dialog = open_action(page, key, "Reset quota…")
    expect(dialog).to_contain_text("becomes active again")
    dialog.get_by_role("button", name="Reset quota").click()
    expect(page.locator(f"#key-{key.pk}-status")).to_contain_text("Active")
    dialog = open_action(page, key, "Disable…")
    dialog.get_by_role("button", name="Disable").click()
    expect(page.locator(f"#key-{key.pk}-status")).to_contain_text("Disabled")
    expect(row(page, key).get_by_role("button", name="Enable…", include_hidden=True)).to_be_attached()
    dialog = open_action(page, key, "Delete…")
    dialog.get_by_role("button", name="Delete key").click()
    expect(page.locator(f"#key-row-{key.pk}")).to_have_count(0)
    expect(page.locator("#key-table")).to_contain_text("No API keys match these filters")
    assert page.console_errors == []


def test_the_group_choices_follow_the_chosen_user_and_errors_name_the_line(staff_page, screenshot):
    allowed = UserFactory(email="vip@example.com")
    UserFactory(email="plain@example.com")
    vip = GroupFactory(name="VIP lane", is_exclusive=True)
    allowed.allowed_groups.add(vip)
    page = staff_page
    page.goto("/keys/new")
    group = page.get_by_label("Group")
    page.get_by_label("User").select_option(label="plain@example.com")
    expect(page.locator("#unavailable-groups")).to_contain_text(
        "VIP lane: Exclusive group: plain@example.com"
    )
    expect(group.locator("option", has_text="VIP lane")).to_be_disabled()
    page.get_by_label("User").select_option(label="vip@example.com")
    expect(group.locator("option", has_text="VIP lane")).to_be_enabled()
    group.select_option(label="VIP lane (Anthropic, standard, exclusive)")
    page.get_by_label("Name").fill("office")
    page.get_by_label("IP allowlist").fill("203.0.113.7\n203.0.113.300\n10.0.0.0/8")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#key-form")).to_contain_text(
        "Line 2: “203.0.113.300” is not an IP address or CIDR range."
    )
    expect(page.get_by_label("Name")).to_have_value("office")
    expect(page.get_by_label("Group")).to_have_value(str(vip.pk))
    screenshot(page, "errors")
    page.get_by_label("IP allowlist").fill("203.0.113.7\n10.0.0.0/8")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("dialog[open]")).to_contain_text("Key created: office")
    page.keyboard.press("Escape")
    expect(page).to_have_url(re.compile(r"/keys/$"))
    expect(page.locator("#key-table")).to_contain_text("IP rules")
    assert APIKey.objects.get().ip_allowlist == ["203.0.113.7", "10.0.0.0/8"]
    assert page.console_errors == []


def test_the_key_list_on_a_phone(staff_page, screenshot):
    for i in range(4):
        key = APIKeyFactory(name=f"key-{i}", quota_usd=Decimal(4), rate_limit_5h_usd=Decimal(2))
        api_key_usage_charge(key_id=key.pk, amount_usd=Decimal(i) + Decimal("0.5"))
    page = staff_page
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/keys/")
    expect(page.locator("#key-table tbody tr")).to_have_count(4)
    screenshot(page, "list-375")
    page.goto("/keys/new")
    screenshot(page, "form-375")
    assert page.console_errors == []


def test_the_demo_keys_show_every_state(staff_page, staff_user, screenshot):
    from io import StringIO

    from django.core.management import call_command

    call_command("seed_demo", password="demo-password-1", stdout=StringIO())
    page = staff_page
    page.goto("/keys/")
    table = page.locator("#key-table")
    for status in ("Active", "Quota exhausted", "Expired", "Disabled", "IP rules"):
        expect(table).to_contain_text(status)
    screenshot(page, "keys")
    frank = APIKey.objects.get(name="frank-plus")
    page.goto(f"/keys/{frank.pk}/")
    expect(page.get_by_label("Group")).to_have_value(str(frank.group_id))
    expect(page.get_by_label("Timezone of the 1-day and 7-day windows")).to_have_value("Europe/Berlin")
    screenshot(page, "edit")
    page.goto("/subscriptions/")
    for status in ("Active", "Suspended", "Expired"):
        expect(page.locator("#subscription-table")).to_contain_text(status)
    screenshot(page, "subscriptions")
    assert page.console_errors == []


def test_the_key_page_offers_every_action_and_shows_each_result(staff_page, screenshot):
    key = APIKeyFactory(
        name="office",
        quota_usd=Decimal("5"),
        rate_limit_5h_usd=Decimal("3"),
        expires_at=timezone.now() + timedelta(days=2),
    )
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("2.5"))
    page = staff_page
    page.goto(f"/keys/{key.pk}/")
    actions = page.locator("#key-actions")
    screenshot(page, "page")

    def confirm(action: str, button: str) -> None:
        actions.get_by_role("button", name=action).click()
        page.locator("dialog[open]").get_by_role("button", name=button).click()
        expect(page.locator("dialog[open]")).to_have_count(0)

    confirm("Reset quota", "Reset quota")
    expect(page.get_by_role("status").first).to_contain_text("Quota of office reset")
    expect(page.locator(f"#key-{key.pk}-quota")).to_have_text("$0.00 / $5.00")
    confirm("Reset windows", "Reset windows")
    expect(page.get_by_role("status").first).to_contain_text("windows of office are back to $0")
    confirm("Clear expiration", "Clear expiration")
    expect(page.get_by_label(re.compile("^Expires at"))).to_have_value("")  # the form shows it too
    expect(actions.get_by_role("button", name="Clear expiration")).to_have_count(0)
    confirm("Disable", "Disable")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Disabled")
    confirm("Enable", "Enable")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Active")
    key.refresh_from_db()
    assert (key.quota_used_usd, key.usage_5h_usd, key.window_5h_start) == (0, 0, None)
    assert (key.expires_at, key.status) == (None, "active")
    confirm("Delete", "Delete key")
    expect(page).to_have_url(re.compile(r"/keys/$"))
    expect(page.get_by_role("status").first).to_contain_text("Deleted office")
    assert not APIKey.objects.filter(pk=key.pk).exists()
    assert page.console_errors == []


def test_reset_windows_and_enable_from_the_list(staff_page):
    key = APIKeyFactory(name="paused", status="disabled", rate_limit_5h_usd=Decimal("3"))
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1.25"))
    page = staff_page
    page.goto("/keys/")
    expect(page.locator(f"#key-{key.pk}-windows")).to_contain_text("$1.25")
    dialog = open_action(page, key, "Reset window usage…")
    expect(dialog).to_contain_text("$1.25")
    dialog.get_by_role("button", name="Reset windows").click()
    expect(page.locator(f"#key-{key.pk}-windows")).not_to_contain_text("$1.25")
    dialog = open_action(page, key, "Enable…")
    expect(dialog).to_contain_text("it becomes active")
    dialog.get_by_role("button", name="Enable").click()
    expect(page.locator(f"#key-{key.pk}-status")).to_contain_text("Active")
    key.refresh_from_db()
    assert (key.status, key.usage_5h_usd, key.window_5h_start) == ("active", 0, None)
    assert page.console_errors == []


def test_editing_a_key_saves_it_keeps_its_owner_and_warns_of_a_twin_name(staff_page, screenshot):
    owner = UserFactory(email="ann@example.com")
    UserFactory(email="bob@example.com")
    APIKeyFactory(user=owner, name="laptop")
    key = APIKeyFactory(user=owner, name="desktop", expires_at=timezone.now() + timedelta(days=60))
    page = staff_page
    page.goto(f"/keys/{key.pk}/")
    expect(page.get_by_label("User")).to_be_disabled()
    expect(page.get_by_text("The owner of a key is fixed.")).to_be_visible()
    expect(
        page.get_by_text("A quick pick replaces it, counting from now, even if that is sooner.")
    ).to_be_visible()
    page.get_by_role("button", name="7 days from now").click()
    week = (timezone.localtime() + timedelta(days=7)).strftime("%Y-%m-%d")
    expect(page.get_by_label(re.compile("^Expires at"))).to_have_value(re.compile(f"^{week}T"))
    page.get_by_label("Name").fill("laptop")
    page.get_by_label("Quota (USD)").fill("12.5")
    page.get_by_label("1-day limit (USD)").fill("3")
    page.get_by_label("IP denylist").fill("198.51.100.9")
    page.get_by_label("Requests in flight").fill("3")
    page.get_by_role("button", name="Save changes").click()
    expect(page).to_have_url(re.compile(r"/keys/$"))
    expect(page.get_by_role("status").first).to_contain_text("Saved laptop.")
    expect(page.get_by_role("status").nth(1)).to_contain_text(
        "ann@example.com has another key named “laptop”"
    )
    key.refresh_from_db()
    assert (key.user, key.name, key.quota_usd, key.rate_limit_1d_usd) == (owner, "laptop", Decimal("12.5"), 3)
    assert key.ip_denylist == ["198.51.100.9"]
    assert key.concurrency == 3
    assert abs(key.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=2)
    screenshot(page, "saved")
    assert page.console_errors == []


def test_creating_a_key_with_a_name_the_user_already_has_warns_in_the_secret_dialog(staff_page):
    owner = UserFactory(email="ann@example.com")
    APIKeyFactory(user=owner, name="laptop")
    page = staff_page
    page.goto("/keys/new")
    page.get_by_label("User").select_option(label="ann@example.com")
    page.get_by_label("Name").fill("Laptop")
    page.get_by_role("button", name="Create key").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.locator("#key-name-warning")).to_contain_text(
        "ann@example.com has another key named “Laptop”"
    )
    assert APIKey.objects.filter(user=owner).count() == 2
