"""The console shell in real Chromium: sign in and out, tables and dialogs over HTMX."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from tests.factories import GroupFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sign_in_see_the_shell_and_sign_out(page, live_server, staff_user, staff_password, screenshot):
    page.goto("/users/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/users/"))
    screenshot(page, "login")
    page.get_by_label("Email").fill(staff_user.email)
    page.get_by_label("Password").fill(staff_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}/users/")
    nav = page.get_by_role("navigation", name="Console sections")
    expect(nav.get_by_role("link", name="Dashboard")).to_be_visible()
    expect(nav.get_by_role("link", name="Users")).to_be_visible()
    page.get_by_role("button", name=staff_user.email).click()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{live_server.url}/login/")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/"))
    assert page.console_errors == []


def test_a_failed_sign_in_shows_the_error(page, staff_user, screenshot):
    page.goto("/login/")
    page.get_by_label("Email").fill(staff_user.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That email and password do not match a staff account.")
    expect(page.get_by_label("Email")).to_have_value(staff_user.email)
    screenshot(page, "failed")


def test_sorting_and_filtering_swap_only_the_table_and_keep_history(staff_page, live_server, screenshot):
    UserFactory(email="zed@example.com", balance=Decimal("900"))
    UserFactory(email="amy@example.com", balance=Decimal("1"))
    page = staff_page
    page.goto("/users/")
    screenshot(page, "users-list")
    page.evaluate("window.marker = 'same page'")  # survives only if no full reload happens

    page.get_by_role("link", name="Balance").click()
    expect(page).to_have_url(re.compile(r"sort=balance"))
    expect(page.locator("#user-table tbody tr").first).to_contain_text("amy@example.com")
    page.get_by_role("link", name="Balance").click()
    expect(page).to_have_url(re.compile(r"sort=-balance"))
    expect(page.locator("#user-table tbody tr").first).to_contain_text("zed@example.com")

    page.get_by_label("Search").fill("amy")
    expect(page).to_have_url(re.compile(r"q=amy"))
    expect(page.locator("#user-table tbody tr")).to_have_count(1)
    assert page.evaluate("window.marker") == "same page"

    page.go_back()
    expect(page).to_have_url(re.compile(r"sort=-balance$"))
    expect(page.locator("#user-table tbody tr").first).to_contain_text("zed@example.com")
    page.reload()
    expect(page.locator("#user-table tbody tr").first).to_contain_text("zed@example.com")


def test_the_balance_dialog_adjusts_and_refreshes_the_history(staff_page, screenshot):
    user = UserFactory(email="pat@example.com", balance=Decimal("10"))
    page = staff_page
    page.goto(f"/users/{user.pk}/")
    screenshot(page, "user-edit")
    page.get_by_role("button", name="Adjust balance").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Subtract").check()
    dialog.get_by_label("Amount (USD)").fill("25")
    dialog.get_by_label("Note").fill("too much")
    dialog.get_by_role("button", name="Apply").click()
    expect(dialog).to_contain_text("would make it negative")
    expect(dialog.get_by_label("Amount (USD)")).to_have_value("25")
    screenshot(page, "dialog-error")
    dialog.get_by_label("Add").check()
    dialog.get_by_role("button", name="Apply").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    expect(page.locator("#balance-value")).to_have_text("$35.00")
    expect(page.locator("#balance-history")).to_contain_text("too much")
    screenshot(page, "after")


def test_disabling_a_user_through_the_confirm_dialog(staff_page):
    user = UserFactory(email="quinn@example.com")
    page = staff_page
    page.goto(f"/users/{user.pk}/")
    page.get_by_role("button", name="Disable").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("will be refused by the gateway")
    dialog.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Disabled")
    expect(page.get_by_role("status").first).to_contain_text("quinn@example.com disabled.")
    user.refresh_from_db()
    assert user.status == "disabled"


def test_a_search_asks_for_the_table_once_even_when_the_box_loses_focus(staff_page):
    UserFactory(email="amy@example.com")
    page = staff_page
    page.goto("/users/")
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url) if "q=amy" in request.url else None)
    page.get_by_label("Search").fill("amy")
    expect(page).to_have_url(re.compile(r"q=amy"))
    page.get_by_role("heading", name="Users").click()  # blur: fires `change`
    page.wait_for_timeout(800)
    assert len(asked) == 1


def test_a_link_in_a_table_row_opens_its_page_rather_than_filling_the_table(staff_page):
    user = UserFactory(email="zz@example.com")
    page = staff_page
    page.goto("/users/")
    page.get_by_role("link", name="zz@example.com").click()
    expect(page).to_have_url(re.compile(f"/users/{user.pk}/$"))
    expect(page.get_by_role("heading", level=1)).to_have_count(1)
    expect(page.get_by_role("navigation", name="Console sections")).to_have_count(1)
    page.go_back()
    expect(page.get_by_role("heading", level=1)).to_have_text("Users")


def test_editing_a_user_saves_every_field_and_a_rate_override(staff_page, screenshot):
    vip = GroupFactory(name="vip-lane", is_exclusive=True)
    pool = GroupFactory(name="claude-pool", rate_multiplier=Decimal("1.5"))
    user = UserFactory(email="kim@example.com", username="kim")
    page = staff_page
    page.goto(f"/users/{user.pk}/")
    page.get_by_label("Email address").fill("Kim.Lee@Example.com")
    page.get_by_label("Username").fill("kim lee")
    page.get_by_label("Concurrency").fill("9")
    page.get_by_label("Requests per minute").fill("120")
    page.get_by_label("Allowed groups").select_option(label="vip-lane")
    page.get_by_label("Notes").fill("reseller, invoices monthly")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status").first).to_contain_text("Saved kim.lee@example.com.")
    user.refresh_from_db()
    assert (user.email, user.username, user.concurrency, user.rpm_limit) == (
        "kim.lee@example.com",
        "kim lee",
        9,
        120,
    )
    assert list(user.allowed_groups.all()) == [vip] and user.notes == "reseller, invoices monthly"

    rates = page.locator("#rates-card")
    rates.get_by_label("Group").select_option(label="claude-pool")
    rates.get_by_label("Multiplier").fill("1,2")  # a decimal comma is a decimal point
    rates.get_by_role("button", name="Set").click()
    expect(rates.locator("#group-rates")).to_contain_text("×1.2")
    assert user.group_rates.get().rate_multiplier == Decimal("1.2") and user.group_rates.get().group == pool
    rates.get_by_role("button", name="Remove the override for claude-pool").click()
    expect(rates.locator("#group-rates")).to_have_count(0)
    assert not user.group_rates.exists()
    screenshot(page, "saved")
    assert page.console_errors == []


def test_a_disabled_user_is_enabled_through_the_confirm_dialog(staff_page):
    user = UserFactory(email="off@example.com", status="disabled", is_active=False)
    page = staff_page
    page.goto(f"/users/{user.pk}/")
    page.get_by_role("button", name="Enable").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("will be able to use their API keys again")
    dialog.get_by_role("button", name="Enable").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Active")
    user.refresh_from_db()
    assert (user.status, user.is_active) == ("active", True)
    assert page.console_errors == []


def test_a_staff_member_changes_their_password(staff_page, staff_user, staff_password):
    page = staff_page
    page.get_by_role("button", name=staff_user.email).click()
    page.get_by_role("link", name="Change password").click()
    page.get_by_label("Old password").fill(staff_password)
    page.locator("#id_new_password1").fill("a-brand-new-passphrase-42")
    page.get_by_label("New password confirmation").fill("a-brand-new-passphrase-42")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Password changed")
    staff_user.refresh_from_db()
    assert staff_user.check_password("a-brand-new-passphrase-42")
    assert page.console_errors == []
