"""The dashboard in real Chromium: Chart.js draws every chart under the CSP, the period switcher
and the model-source toggle swap their parts over HTMX, and a top user opens their breakdown."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHARTS = ("trend", "models", "users", "keys", "groups")

# How many labels a canvas's chart has, and how many of its pixels are painted (0 = blank).
CHART_STATE = """(canvas) => {
  const chart = window.Chart && window.Chart.getChart(canvas);
  if (!chart) return null;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted++;
  return {labels: chart.data.labels.length, painted: painted, width: canvas.width, height: canvas.height};
}"""


def chart_state(page, name: str) -> dict:
    selector = f'canvas[data-chart="chart-{name}-data"]'
    canvas = page.locator(selector)
    expect(canvas).to_be_visible()
    page.wait_for_function(
        f"() => window.Chart && window.Chart.getChart(document.querySelector('{selector}'))"
    )
    state = canvas.evaluate(CHART_STATE)
    assert state and state["painted"] > 500, f"{name}: {state}"
    return state


def test_the_dashboard_draws_its_charts_and_switches_period(staff_page, live_server, screenshot):
    call_command("seed_demo", password="x-demo-pass-1", stdout=StringIO())
    page = staff_page
    page.goto("/")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_role("heading", name="Usage, 7 days")).to_be_visible()
    for name in CHARTS:
        chart_state(page, name)
    assert chart_state(page, "trend")["labels"] == 7
    screenshot(page, "1280")

    # The period switcher swaps the charts section and redraws it.
    page.get_by_role("group", name="Period").get_by_role("link", name="30 days").click()
    expect(page).to_have_url(re.compile(r"/\?period=30d&models=requested$"))
    expect(page.get_by_role("heading", name="Usage, 30 days")).to_be_visible()
    expect(page.locator("#trend-table tbody tr")).to_have_count(30)
    assert chart_state(page, "trend")["labels"] == 30
    for name in CHARTS[1:]:
        chart_state(page, name)
    page.get_by_role("group", name="Period").get_by_role("link", name="Today").click()
    expect(page.get_by_role("heading", name="Usage, today")).to_be_visible()
    assert chart_state(page, "trend")["labels"] == timezone.localtime().hour + 1
    page.get_by_role("group", name="Period").get_by_role("link", name="7 days").click()
    expect(page.get_by_role("heading", name="Usage, 7 days")).to_be_visible()
    assert chart_state(page, "trend")["labels"] == 7

    # The model-source toggle swaps the model card only, chart included.
    top = page.locator("#top-models")
    top.get_by_role("link", name="Mapping").click()
    expect(page).to_have_url(re.compile(r"/\?period=7d&models=mapping$"))
    expect(top.get_by_role("link", name="Mapping")).to_have_attribute("aria-current", "true")
    chart_state(page, "models")
    top.get_by_text("Show the models as a table").click()
    expect(top.get_by_role("columnheader", name="Requested → upstream")).to_be_visible()
    expect(top.locator("tbody tr").first).to_contain_text("→")
    page.get_by_text("Show the figures as a table").click()
    expect(page.locator("#trend-table tbody tr")).to_have_count(7)
    screenshot(page, "1280-tables")
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/?period=30d")
    for name in CHARTS:
        chart_state(page, name)
    screenshot(page, "375")
    assert page.console_errors == [], "\n".join(e[:300] for e in page.console_errors if e.startswith("CSP"))


def test_a_top_user_opens_their_breakdown_which_sorts_and_exports(staff_page, live_server, screenshot):
    call_command("seed_demo", password="x-demo-pass-1", stdout=StringIO())
    page = staff_page
    page.goto("/?period=30d")
    users = page.locator("#top-users")
    users.get_by_text("Show the users as a table").click()
    first = users.locator("tbody tr").first.get_by_role("link")
    email = first.inner_text()
    first.click()
    expect(page.get_by_role("heading", name=f"Usage of {email}")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/users/\d+/usage/\?period=30d$"))
    for table in ("group", "model", "key"):
        expect(page.locator(f"#breakdown-{table} tbody tr").first).to_be_visible()
    screenshot(page, "1280")
    keys = page.locator("#breakdown-key")
    keys.get_by_role("link", name="Requests").click()
    expect(keys.get_by_role("columnheader", name="Requests")).to_have_attribute("aria-sort", "descending")
    counts = [int(text.replace(",", "")) for text in keys.locator("tbody td:nth-child(2)").all_inner_texts()]
    assert counts == sorted(counts, reverse=True)
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    assert download.value.suggested_filename.endswith("-30d.csv")
    page.set_viewport_size({"width": 375, "height": 800})
    screenshot(page, "375")
    assert page.console_errors == [], "\n".join(e[:300] for e in page.console_errors if e.startswith("CSP"))
