"""Every console page in real Chromium, at 1280 px and at 375 px.

The pages are found by walking the URL patterns, so a new page is visited without anyone adding
it here; a page that needs an id gets one from tests/e2e/rows.py. Each page fails the test on a
JavaScript console error, a Content-Security-Policy violation, a visible action button or amount
of money outside the viewport (or hidden behind a scrolling container's edge), or a page wider
than the screen.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client
from playwright.sync_api import expect

from console.access import is_public
from tests.browser import watch_errors
from tests.console.test_staff_only import console_patterns
from tests.e2e.rows import ConsoleRows, console_path, console_rows

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Visible buttons and amounts of money that the viewport, or a scrolling container around them, cuts off.
BUTTONS_OFF_SCREEN = """
() => {
  const width = document.documentElement.clientWidth;
  const problems = [];
  const buttons = document.querySelectorAll(
    "button, a.btn, input[type=submit], [role=button], .money, .quota-meter, .usage-badge");
  for (const el of buttons) {
    if (!el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) continue;
    const box = el.getBoundingClientRect();
    if (box.width <= 1 || box.height <= 1) continue;  // visually-hidden helpers
    let left = 0, right = width;
    for (let parent = el.parentElement; parent; parent = parent.parentElement) {
      if (getComputedStyle(parent).overflowX === "visible") continue;
      const edge = parent.getBoundingClientRect();
      left = Math.max(left, edge.left);
      right = Math.min(right, edge.right);
    }
    if (box.left < left - 1 || box.right > right + 1) {
      const name = (el.getAttribute("aria-label") || el.textContent || el.title || el.outerHTML).trim();
      problems.push(name.replace(/\\s+/g, " ").slice(0, 80) + ` (${Math.round(box.left)}–${Math.round(box.right)} px, visible ${Math.round(left)}–${Math.round(right)})`);
    }
  }
  return problems;
}
"""


def console_pages(rows: ConsoleRows, staff_user) -> tuple[list[str], list[str]]:
    """(full pages, everything else that answered) for every staff-only GET route."""
    client = Client()
    client.force_login(staff_user)
    pages, others = [], []
    for _route, name, entry in console_patterns():
        if is_public(entry.callback) or not entry.name:
            continue
        path = console_path(name, entry, rows)
        response = client.get(path)
        if response.status_code == 405:
            continue  # a POST-only action
        assert response.status_code == 200, f"{name} ({path}) answered {response.status_code}"
        is_page = response["Content-Type"].startswith("text/html") and b"<html" in response.content[:300]
        (pages if is_page else others).append(path)
    return pages, others


@pytest.fixture
def walk(browser, live_server, staff_user, staff_password):
    rows = console_rows()
    pages, fragments = console_pages(rows, staff_user)
    assert len(pages) >= 15 and fragments  # the walk found the console

    def visit(width: int, height: int, screenshot) -> None:
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=live_server.url)
        context.set_default_timeout(10_000)
        errors = watch_errors(context)  # console errors, exceptions and CSP violations
        page = context.new_page()
        page.goto("/login/")
        page.get_by_label("Email").fill(staff_user.email)
        page.get_by_label("Password").fill(staff_password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("navigation", name="Console sections")).to_be_visible()
        problems: list[str] = []
        for path in pages:
            errors.clear()
            page.goto(path, wait_until="load")
            found = [f"console: {e}" for e in errors]
            found += [f"off screen: {b}" for b in page.evaluate(BUTTONS_OFF_SCREEN)]
            scroll = page.evaluate("document.documentElement.scrollWidth")
            if scroll > width:
                found.append(f"the page is {scroll} px wide")
            problems += [f"{path} at {width} px: {p}" for p in found]
            screenshot(
                page, re.sub(r"\d+", "id", path.split("?")[0].strip("/").replace("/", "_")) or "dashboard"
            )
        context.close()
        assert not problems, "\n".join(problems)

    return visit


def test_every_page_at_1280_px_has_no_errors_and_every_action_on_screen(walk, screenshot):
    walk(1280, 860, screenshot)


def test_every_page_at_375_px_has_no_errors_and_every_action_on_screen(walk, screenshot):
    walk(375, 800, screenshot)
