"""Sign-in locks in real Chromium: a locked colleague is told how long, an admin unlocks them."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.models import SignInCounter
from tests.factories import StaffFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_locked_colleague_is_unlocked_from_the_console(
    browser, staff_page, live_server, staff_password, settings, screenshot
):
    colleague = StaffFactory(email="colleague@tollgate.test")
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=live_server.url)
    colleague_page = context.new_page()
    colleague_page.goto("/login/")
    for _ in range(settings.LOGIN_FAILURE_LIMIT + 1):
        colleague_page.get_by_label("Email").fill(colleague.email)
        colleague_page.get_by_label("Password").fill("not the password")
        colleague_page.get_by_role("button", name="Sign in").click()
    minutes = settings.LOGIN_FAILURE_WINDOW_SECONDS // 60
    expect(colleague_page.get_by_role("alert")).to_contain_text(
        f"sign-in is locked for {minutes} more minutes"
    )
    screenshot(colleague_page, "locked-out")

    page = staff_page
    page.get_by_role("button", name=re.compile("@tollgate.test")).click()
    page.get_by_role("link", name="Sign-in locks").click()
    expect(page).to_have_url(f"{live_server.url}/sign-in-locks/")
    row = page.locator("#sign-in-lock-list li", has_text=colleague.email)
    expect(row).to_contain_text("Email locked")
    expect(row).to_contain_text(f"(in {minutes} minutes)")
    screenshot(page, "list-1280")
    page.set_viewport_size({"width": 375, "height": 800})
    screenshot(page, "list-375")
    # On a phone the whole lock, its Unlock button included, fits the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    box = row.get_by_role("button", name="Unlock").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375
    page.set_viewport_size({"width": 1280, "height": 860})

    row.get_by_role("button", name="Unlock").click()
    expect(page.locator(".toast")).to_contain_text(f"Unlocked {colleague.email}.")
    expect(page.get_by_text("No sign-in is locked")).to_be_visible()
    assert not SignInCounter.objects.filter(kind="username", value=colleague.email).exists()
    screenshot(page, "unlocked")

    colleague_page.get_by_label("Email").fill(colleague.email)
    colleague_page.get_by_label("Password").fill(staff_password)
    colleague_page.get_by_role("button", name="Sign in").click()
    expect(colleague_page).to_have_url(f"{live_server.url}/")
    assert page.console_errors == []
    context.close()
