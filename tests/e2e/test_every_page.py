"""Every console page in real Chromium, at 1280 px and at 375 px.

The pages are found by walking the URL patterns, so a new page is visited without anyone adding
it here; a page that needs an id gets one from tests/e2e/rows.py. Each page fails the test on a
JavaScript console error, a Content-Security-Policy violation, a visible action button or amount
of money outside the viewport (or hidden behind a scrolling container's edge), or a page wider
than the screen. The walk runs as an admin (every page) and as a viewer (every page a viewer may
open), and the viewer's walk also fails on any action a page offers that the viewer's role may
not use: a form that can be submitted, an htmx request, a link, a URL handed to a script — each
is resolved to its view and judged by that view's declared role (docs/console.md#roles).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client
from django.urls import Resolver404, resolve
from playwright.sync_api import expect

from accounts.roles import ConsoleRole, has_console_role, may, view_policy
from console.access import is_public
from tests.browser import watch_errors
from tests.console.test_staff_only import console_patterns
from tests.e2e.rows import ConsoleRows, console_path, console_rows
from tests.factories import StaffFactory

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


# Every action a page offers: forms that can still be submitted (a control not disabled), htmx
# requests from elements not disabled, links, and URLs handed to scripts in data-*-url attributes.
OFFERED_ACTIONS = """
() => {
  const found = [];
  const absolute = (url) => new URL(url || location.href, location.href).href;
  const describe = (el) => el.outerHTML.replace(/\\s+/g, " ").slice(0, 120);
  for (const form of document.querySelectorAll("form")) {
    const live = [...form.elements].some((c) => c.type !== "hidden" && !c.matches(":disabled"));
    if (live) found.push({method: (form.getAttribute("method") || "get").toLowerCase(), url: form.action, what: describe(form)});
  }
  for (const el of document.querySelectorAll("[hx-get], [hx-post], [hx-put], [hx-patch], [hx-delete]")) {
    if (el.matches(":disabled")) continue;
    for (const method of ["get", "post", "put", "patch", "delete"]) {
      if (el.hasAttribute("hx-" + method)) found.push({method, url: absolute(el.getAttribute("hx-" + method)), what: describe(el)});
    }
  }
  for (const link of document.querySelectorAll("a[href]")) found.push({method: "get", url: link.href, what: describe(link)});
  for (const el of document.querySelectorAll("*")) {
    for (const attr of el.getAttributeNames()) {
      if (attr.startsWith("data-") && attr.endsWith("-url")) found.push({method: "get", url: absolute(el.getAttribute(attr)), what: attr});
    }
  }
  return found;
}
"""


def refused_actions(offered: list[dict], user, base_url: str) -> list[str]:
    """The offered actions whose view the user's role may not use, by the view's declared policy."""
    refused, seen = [], set()
    for action in offered:
        if (action["method"], action["url"]) in seen:
            continue  # a form with hx-post names its URL twice
        seen.add((action["method"], action["url"]))
        url = urlsplit(action["url"])
        if f"{url.scheme}://{url.netloc}" != base_url or url.path.startswith(settings.STATIC_URL):
            continue
        try:
            match = resolve(url.path)
        except Resolver404:
            refused.append(f"{action['method'].upper()} {url.path} leads nowhere: {action['what']}")
            continue
        if is_public(match.func):
            continue
        if url.path.startswith("/django-admin/"):
            allowed = has_console_role(user, ConsoleRole.ADMIN)
        else:
            allowed = has_console_role(user, view_policy(match.func).role_for(action["method"]))
        if not allowed:
            refused.append(f"{action['method'].upper()} {url.path}: {action['what']}")
    return refused


def console_pages(rows: ConsoleRows, staff_user) -> tuple[list[str], list[str]]:
    """(full pages, everything else that answered) for every staff-only GET route the user may open."""
    client = Client()
    client.force_login(staff_user)
    pages, others = [], []
    for _route, name, entry in console_patterns():
        if is_public(entry.callback) or not entry.name:
            continue
        if not may(staff_user, name, method="GET"):
            continue  # refused by the role's policy: tests/console/test_staff_only.py checks the 403
        path = console_path(name, entry, rows)
        response = client.get(path)
        if response.status_code == 405:
            continue  # a POST-only action
        assert response.status_code == 200, f"{name} ({path}) answered {response.status_code}"
        is_page = response["Content-Type"].startswith("text/html") and b"<html" in response.content[:300]
        (pages if is_page else others).append(path)
    return pages, others


@pytest.fixture(params=[ConsoleRole.ADMIN, ConsoleRole.VIEWER])
def walk(request, browser, live_server, staff_password):
    role = request.param
    staff_user = StaffFactory(console_role=role)
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
            if role != ConsoleRole.ADMIN:
                offered = page.evaluate(OFFERED_ACTIONS)
                found += [f"offers {a}" for a in refused_actions(offered, staff_user, live_server.url)]
            problems += [f"{path} at {width} px as {role}: {p}" for p in found]
            name = re.sub(r"\d+", "id", path.split("?")[0].strip("/").replace("/", "_")) or "dashboard"
            screenshot(page, name)
        context.close()
        assert not problems, "\n".join(problems)

    return visit


def test_every_page_at_1280_px_has_no_errors_and_every_action_on_screen(walk, screenshot):
    walk(1280, 860, screenshot)


def test_every_page_at_375_px_has_no_errors_and_every_action_on_screen(walk, screenshot):
    walk(375, 800, screenshot)
