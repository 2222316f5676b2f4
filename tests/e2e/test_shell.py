"""The console shell in real Chromium: sign in and out, tables and dialogs over HTMX."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from tests.factories import UserFactory

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
