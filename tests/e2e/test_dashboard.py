"""The dashboard in real Chromium: the model-source toggle swaps the top models over HTMX."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_dashboard_shows_demo_usage_and_toggles_the_model_names(staff_page, live_server, screenshot):
    call_command("seed_demo", password="x-demo-pass-1", stdout=StringIO())
    page = staff_page
    page.goto("/")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    top = page.locator("#top-models")
    expect(top.locator("tbody tr").first).to_be_visible()
    expect(top.get_by_role("columnheader", name="Requested model")).to_be_visible()
    expect(page.get_by_role("img", name="Charged cost per day")).to_be_visible()
    screenshot(page, "1280")

    top.get_by_role("link", name="Mapping").click()
    expect(page).to_have_url(re.compile(r"/\?models=mapping$"))
    expect(top.get_by_role("columnheader", name="Requested → upstream")).to_be_visible()
    expect(top.get_by_role("link", name="Mapping")).to_have_attribute("aria-current", "true")
    expect(top.locator("tbody tr").first).to_contain_text("→")
    top.get_by_role("link", name="Upstream").click()
    expect(top.get_by_role("columnheader", name="Upstream model")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/\?models=upstream$"))

    page.get_by_text("Show the figures as a table").click()
    expect(page.locator("#trend-table tbody tr")).to_have_count(7)
    screenshot(page, "1280-toggled")
    page.set_viewport_size({"width": 375, "height": 800})
    screenshot(page, "375")
    assert page.console_errors == []
