"""Browser fixtures: Playwright driving Debian's Chromium against live_server.

Usage in a test:  def test_x(staff_page, live_server, screenshot): ...
`staff_page` is a page whose browser context is already signed in as staff.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Playwright's sync API keeps an event loop running in the test thread, which
# makes Django think the ORM is being called from async code. It is not.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_DIR = Path(
    os.getenv("SCREENSHOT_DIR", Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots")
)


def chromium_path() -> str:
    path = os.getenv("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "Chromium not found: install Debian's package (apt-get install chromium) or set CHROMIUM_PATH."
        )
    return path


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()


# Every Content-Security-Policy violation is reported to the test, whatever Chromium logs.
CSP_REPORTER = """
document.addEventListener("securitypolicyviolation", function (event) {
  window.reportCspViolation(event.violatedDirective + " blocked " + (event.blockedURI || "inline") +
    " at " + (event.sourceFile || "") + ":" + event.lineNumber + " " + (event.sample || ""));
});
"""


def watch_errors(context) -> list[str]:
    """Console errors, uncaught exceptions and CSP violations of every page of `context`."""
    errors: list[str] = []
    context.expose_binding("reportCspViolation", lambda _source, text: errors.append(f"CSP: {text}"))
    context.add_init_script(CSP_REPORTER)
    context.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    context.on("weberror", lambda error: errors.append(str(error.error)))
    return errors


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=live_server.url)
    context.set_default_timeout(10_000)
    errors = watch_errors(context)
    page = context.new_page()
    page.console_errors = errors
    yield page
    context.close()


@pytest.fixture
def staff_page(page, live_server, staff_user, staff_password):
    """A page signed in through the real login form."""
    page.goto("/login/")
    page.get_by_label("Email").fill(staff_user.email)
    page.get_by_label("Password").fill(staff_password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/")
    return page


@pytest.fixture
def screenshot(request):
    """Save a full-page PNG under test-artifacts/screenshots/, named after the test."""

    def take(page, name: str = "") -> Path:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        stem = request.node.name.replace("/", "_") + (f"-{name}" if name else "")
        path = SCREENSHOT_DIR / f"{stem}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
