"""The usage log in real Chromium: filter by model, open a breakdown, download the CSV."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from billing.cost import Usage
from billing.models import UsageLog
from billing.services import usage_record
from tests.factories import APIKeyFactory, GroupFactory, UpstreamAccountFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def usage():
    group = GroupFactory(name="claude-pool", rate_multiplier=Decimal("1.5"))
    user = UserFactory(email="dana@example.com", balance=Decimal("50"))
    key = APIKeyFactory(user=user, group=group, name="dana-laptop")
    account = UpstreamAccountFactory(name="anthropic-main")
    # Every row falls inside today, newest first, at any time of day: the tests below count the
    # rows "today" shows and expect none before it (fixed offsets like "2 hours ago" were
    # yesterday's rows for the first two hours after midnight).
    now = timezone.now()
    since_midnight = now - timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)

    def moment(eighths: int):
        return now - since_midnight * eighths / 8

    for index in range(6):
        model = "claude-sonnet-4-5" if index % 2 == 0 else "claude-haiku-4-5"
        usage_record(
            request_id=f"req-{index}",
            api_key_id=key.pk,
            account_id=account.pk,
            requested_model=model,
            usage=Usage(input_tokens=12_000 + index, output_tokens=1_000, cache_read_tokens=2_000 * index),
            stream=index % 3 == 0,
            duration_ms=800 + 350 * index,
            first_token_ms=300,
            status_code=429 if index == 5 else 200,
            client_ip="203.0.113.7",
            user_agent="claude-cli/2.0",
            created_at=moment(index),
        )
    usage_record(
        request_id="req-unpriced",
        api_key_id=key.pk,
        account_id=account.pk,
        requested_model="acme-llm-9000",
        usage=Usage(input_tokens=500, output_tokens=50),
        created_at=moment(7),
    )
    return key


def test_filter_by_model_open_a_breakdown_and_download_the_csv(staff_page, usage, screenshot):
    page = staff_page
    page.goto("/usage/")
    rows = page.locator("#usage-table tbody:not(.usage-totals) tr")
    expect(rows).to_have_count(7)
    screenshot(page, "usage-list")

    page.evaluate("window.marker = 'same page'")
    page.get_by_label("Model", exact=True).focus()  # loads the suggestions
    expect(page.locator("#usage-models option")).to_have_count(3)
    page.get_by_label("Model", exact=True).fill("claude-haiku-4-5")
    page.get_by_label("Model", exact=True).press("Tab")  # leaving the field applies it
    expect(page).to_have_url(re.compile(r"model=claude-haiku-4-5"))
    expect(rows).to_have_count(3)
    expect(page.locator(".usage-totals")).to_contain_text("3 requests")
    assert page.evaluate("window.marker") == "same page"

    first = rows.first
    first.get_by_role("button", name="Cost breakdown").click()
    breakdown = page.locator("tr.usage-breakdown")
    expect(breakdown).to_be_visible()
    expect(breakdown).to_contain_text("claude-haiku-4-5, catalog price, token mode")
    expect(breakdown).to_contain_text("× 1.5 (group rate)")
    screenshot(page, "usage-breakdown")
    first.get_by_role("button", name="Cost breakdown").click()
    expect(breakdown).to_be_hidden()
    first.get_by_role("button", name="Cost breakdown").click()
    expect(breakdown).to_be_visible()
    expect(page.locator("tr.usage-breakdown")).to_have_count(1)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").click()
    download = download_info.value
    assert re.fullmatch(r"usage-\d{8}-\d{4}\.csv", download.suggested_filename)
    exported = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert sorted(row["request_id"] for row in exported) == ["req-1", "req-3", "req-5"]
    expected = {
        log.request_id: str(log.actual_cost)
        for log in UsageLog.objects.filter(requested_model="claude-haiku-4-5")
    }
    assert {row["request_id"]: row["actual_cost"] for row in exported} == expected
    assert page.console_errors == []


def test_the_usage_log_is_usable_on_a_phone(staff_page, usage, screenshot):
    page = staff_page
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/usage/")
    rows = page.locator("#usage-table tbody:not(.usage-totals) tr")
    expect(rows).to_have_count(7)
    # The filters fold behind a button, so the first screen shows the log itself.
    expect(page.get_by_label("Price from")).to_be_hidden()
    assert rows.first.bounding_box()["y"] < 800
    screenshot(page, "usage-phone")
    page.get_by_role("button", name="Filters").click()
    page.get_by_label("Price from").select_option("missing")
    expect(page.locator("#usage-table tbody:not(.usage-totals) tr")).to_have_count(1)
    expect(page.locator("#usage-table")).to_contain_text("acme-llm-9000")
    screenshot(page, "usage-phone-unpriced")


def test_typing_a_date_makes_the_range_custom_and_a_preset_clears_it(staff_page, usage):
    page = staff_page
    page.goto("/usage/")
    rows = page.locator("#usage-table tbody:not(.usage-totals) tr")
    expect(rows).to_have_count(7)
    yesterday = (timezone.localdate() - timedelta(days=1)).isoformat()
    page.get_by_label("To", exact=True).fill(yesterday)
    expect(page.get_by_label("Period")).to_have_value("custom")
    expect(page).to_have_url(re.compile(rf"period=custom.*date_to={yesterday}"))
    expect(rows).to_have_count(1)  # the "No usage matches" row
    expect(page.locator("#usage-table")).to_contain_text("No usage matches these filters")
    page.get_by_label("Period").select_option("today")
    expect(page.get_by_label("To", exact=True)).to_have_value("")
    expect(page).to_have_url(re.compile(r"period=today&date_from=&date_to=&"))


def test_an_invalid_range_shows_its_message_and_no_rows_until_it_is_fixed(staff_page, usage, screenshot):
    page = staff_page
    page.goto("/usage/")
    rows = page.locator("#usage-table tbody:not(.usage-totals) tr")
    today = timezone.localdate()
    page.get_by_label("From", exact=True).fill(today.isoformat())
    page.get_by_label("To", exact=True).fill((today - timedelta(days=3)).isoformat())
    date_to = page.get_by_label("To", exact=True)
    expect(page.locator("#id_date_to_errors")).to_have_text("The end date is before the start date.")
    expect(date_to).to_have_class(re.compile("is-invalid"))
    expect(page.locator("#usage-range")).to_have_text("Nothing is shown: fix the filters marked above.")
    expect(rows).to_have_count(1)
    expect(page.locator(".usage-totals")).to_contain_text("0 requests")
    expect(page.get_by_role("link", name="Download CSV")).to_have_attribute("aria-disabled", "true")
    screenshot(page, "refused")

    page.get_by_label("To", exact=True).fill("9999-12-31")  # the date picker's last day: no end
    expect(page.locator("#id_date_to_errors")).to_have_text("")
    expect(date_to).not_to_have_class(re.compile("is-invalid"))
    expect(rows).to_have_count(7)
    expect(page.locator("#usage-range")).to_contain_text("Since")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").click()
    exported = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text(encoding="utf-8"))))
    assert len(exported) == 7
    assert page.console_errors == []
