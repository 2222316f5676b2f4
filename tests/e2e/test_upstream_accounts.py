"""Upstream accounts in real Chromium: the quota badge's display rule, the reset dialog, the Bedrock form."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import UpstreamAccount
from accounts.selectors.upstream import upstream_account_credentials
from accounts.services.upstream import upstream_account_quota_charge
from tests.factories import GroupAccountFactory, GroupFactory, UpstreamAccountFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_daily_usage_shows_inside_the_period_then_zero_with_the_next_reset_and_the_dialog_zeroes_it(
    staff_page, screenshot
):
    account = UpstreamAccountFactory(
        name="metered",
        quota_limit_usd=Decimal("100"),
        quota_daily_limit_usd=Decimal("10"),
        quota_daily_reset_mode="fixed",
        quota_daily_reset_hour=0,
        quota_timezone="UTC",
    )
    UpstreamAccountFactory(name="no-limits")
    UpstreamAccountFactory(name="broken", type="oauth", status="error", error_message="401 invalid token")
    upstream_account_quota_charge(account_id=account.pk, amount_usd=Decimal("8.5"))
    page = staff_page
    page.goto("/accounts/")
    daily = page.locator(f"#quota-badge-{account.pk} [data-quota=D]")
    expect(daily).to_contain_text("$8.50/$10.00")
    expect(daily).to_have_class(re.compile("quota-warning"))
    screenshot(page, "list")

    # The period passes: move the stored window start back two days instead of freezing the clock.
    UpstreamAccount.objects.filter(pk=account.pk).update(quota_daily_start=timezone.now() - timedelta(days=2))
    page.reload()
    expect(daily).to_contain_text("$0.00/$10.00")
    next_midnight = (timezone.now() + timedelta(days=1)).strftime("%b %-d")
    # The next reset is in the cell itself, not only in a tooltip.
    reset = page.locator(f"#quota-badge-{account.pk} [data-reset=D]")
    expect(reset).to_be_visible()
    expect(reset).to_have_text(f"resets {next_midnight} 00:00 UTC")
    account.refresh_from_db()
    assert account.quota_daily_used_usd == Decimal("8.5")  # shown as 0, not written

    page.evaluate("window.marker = 'same page'")
    page.get_by_role("button", name="Reset quota of metered").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.locator("#reset-amounts")).to_contain_text("Total used$8.50")
    screenshot(page, "reset-dialog")
    dialog.get_by_role("button", name="Reset quota").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    expect(page.locator(f"#quota-badge-{account.pk} [data-quota='$']")).to_contain_text("$0.00/$100.00")
    expect(page.locator("#account-table tbody tr")).to_have_count(3)
    assert page.evaluate("window.marker") == "same page"  # only the badge re-rendered
    assert page.url.endswith("/accounts/")
    account.refresh_from_db()
    assert (account.quota_used_usd, account.quota_daily_used_usd, account.quota_daily_start) == (0, 0, None)
    assert page.console_errors == []


def test_row_actions_refresh_the_badge_alone(staff_page, screenshot):
    account = UpstreamAccountFactory(name="busy", status="error", error_message="529 overloaded")
    page = staff_page
    page.goto("/accounts/")
    page.evaluate("window.marker = 'same page'")
    with page.expect_response(re.compile(rf"/accounts/{account.pk}/quota-badge")):
        page.get_by_role("switch", name="Schedulable: busy").uncheck()
    account.refresh_from_db()
    assert account.schedulable is False
    expect(page.locator("#account-table tbody tr")).to_have_count(1)
    with page.expect_response(re.compile(rf"/accounts/{account.pk}/quota-badge")):
        page.get_by_role("button", name="Clear error").click()
    expect(page.locator(f"#account-status-{account.pk}")).to_contain_text("Active")
    expect(page.locator("#account-table tbody tr")).to_have_count(1)
    assert page.evaluate("window.marker") == "same page"
    assert page.url.endswith("/accounts/")  # row actions never push their URL into history
    account.refresh_from_db()
    assert account.status == "active"


def test_bedrock_is_one_form_with_an_auth_mode_radio(staff_page, screenshot):
    GroupFactory(name="aws-pool")
    page = staff_page
    page.goto("/accounts/new")
    screenshot(page, "apikey")
    expect(page.locator("#id_apikey__api_key")).to_be_visible()
    expect(page.get_by_role("radio", name="Access key (SigV4)")).to_be_hidden()

    page.get_by_label("Name").fill("bedrock-east")
    page.get_by_label("Type").select_option("bedrock")
    expect(page.get_by_role("radio", name="Access key (SigV4)")).to_be_checked()
    expect(page.get_by_label("Access key ID")).to_be_visible()
    expect(page.locator("#id_apikey__api_key")).to_be_hidden()
    page.get_by_label("Access key ID").fill("AKIAEXAMPLE")
    page.get_by_label("Secret access key").fill("wJalrXUtnFEMI")
    page.locator("#id_bedrock_sigv4__aws_region").fill("us-east-1")
    screenshot(page, "bedrock-sigv4")

    page.get_by_role("radio", name="Bedrock API key").check()
    expect(page.get_by_label("Access key ID")).to_be_hidden()
    expect(page.locator("#id_bedrock_apikey__api_key")).to_be_visible()
    screenshot(page, "bedrock-apikey")
    page.get_by_role("radio", name="Access key (SigV4)").check()

    # Bedrock is Anthropic only: the type is not offered on another platform.
    page.get_by_label("Platform").select_option("openai")
    expect(page.locator("#id_type option[value=bedrock]")).to_be_disabled()
    page.get_by_label("Platform").select_option("anthropic")
    page.get_by_label("Groups").select_option(label="aws-pool")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/accounts/$"))
    expect(page.locator("#account-table")).to_contain_text("Anthropic | AWS")
    account = UpstreamAccount.objects.get(name="bedrock-east")
    assert upstream_account_credentials(account) == {
        "auth_mode": "sigv4",
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "wJalrXUtnFEMI",
        "aws_region": "us-east-1",
    }

    page.goto(f"/accounts/{account.pk}/")
    expect(page.get_by_label("Secret access key")).to_have_value("")
    expect(page.get_by_label("Secret access key")).to_have_attribute(
        "placeholder", "Stored; leave blank to keep it"
    )
    assert "wJalrXUtnFEMI" not in page.content()
    screenshot(page, "edit")


def test_the_account_list_is_usable_on_a_phone(staff_page, screenshot):
    group = GroupFactory(name="pool")
    GroupAccountFactory(
        group=group,
        account=UpstreamAccountFactory(name="phone-account", quota_weekly_limit_usd=Decimal("50")),
    )
    page = staff_page
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/accounts/")
    expect(page.locator("#account-table")).to_contain_text("phone-account")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # only the table scrolls sideways
    screenshot(page, "phone")


def test_the_models_section_saves_what_the_gateway_reads(staff_page, screenshot):
    page = staff_page
    page.goto("/accounts/new")
    page.get_by_label("Name").fill("mapped")
    page.get_by_label("Platform").select_option("openai")
    page.locator("#id_apikey__api_key").fill("sk-proj-1")
    page.get_by_label("Models it serves").fill("gpt-4o\no3-*")
    page.get_by_label("Model mapping").fill("gpt-4o → gpt-4o-2024-11-20")
    screenshot(page, "models")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/accounts/$"))
    account = UpstreamAccount.objects.get(name="mapped")
    assert (account.supported_models, account.model_mapping) == (
        ["gpt-4o", "o3-*"],
        {"gpt-4o": "gpt-4o-2024-11-20"},
    )
    page.goto(f"/accounts/{account.pk}/")
    expect(page.get_by_label("Model mapping")).to_have_value("gpt-4o → gpt-4o-2024-11-20")
    page.set_viewport_size({"width": 375, "height": 900})
    screenshot(page, "models-phone")


def test_an_api_key_account_with_quotas_is_created_then_edited(staff_page, screenshot):
    pool = GroupFactory(name="claude-pool")
    GroupFactory(name="gpt-pool", platform="openai")
    page = staff_page
    page.goto("/accounts/")
    page.get_by_role("link", name="New account").click()
    page.get_by_label("Name").fill("anthropic-main")
    page.get_by_label("Groups").select_option(label="claude-pool")
    page.locator("#id_apikey__api_key").fill("sk-ant-api03-secret")
    page.locator("#id_apikey__base_url").fill("https://relay.example.eu/v1")
    page.get_by_label("Priority").fill("10")
    page.get_by_label("Rate multiplier").fill("0,85")
    page.get_by_label("Total quota (USD)").fill("500")
    page.get_by_label("Daily quota (USD)").fill("25,5")
    page.get_by_label("Daily period").select_option("fixed")
    page.get_by_label("Daily reset at").select_option(label="06:00")
    page.get_by_label("Quota timezone").fill("Europe/Berlin")
    screenshot(page, "new")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/accounts/$"))
    account = UpstreamAccount.objects.get(name="anthropic-main")
    assert (account.priority, account.rate_multiplier, account.quota_limit_usd) == (10, Decimal("0.85"), 500)
    assert (account.quota_daily_limit_usd, account.quota_daily_reset_mode) == (Decimal("25.5"), "fixed")
    assert (account.quota_daily_reset_hour, account.quota_timezone) == (6, "Europe/Berlin")
    assert list(account.groups.all()) == [pool]
    assert upstream_account_credentials(account) == {
        "api_key": "sk-ant-api03-secret",
        "base_url": "https://relay.example.eu/v1",
    }

    page.get_by_role("link", name="anthropic-main", exact=True).click()
    page.get_by_label("Weekly quota (USD)").fill("100")
    page.get_by_label("Notes").fill("main production key")
    page.get_by_label("Status").select_option("inactive")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status").first).to_contain_text("Saved anthropic-main.")
    account.refresh_from_db()
    assert (account.quota_weekly_limit_usd, account.notes, account.status) == (
        100,
        "main production key",
        "inactive",
    )
    assert upstream_account_credentials(account)["api_key"] == "sk-ant-api03-secret"  # blank kept it
    assert page.console_errors == []


def test_a_bedrock_account_with_a_bedrock_api_key_is_created(staff_page):
    page = staff_page
    page.goto("/accounts/new")
    page.get_by_label("Name").fill("bedrock-key")
    page.get_by_label("Type").select_option("bedrock")
    page.get_by_role("radio", name="Bedrock API key").check()
    page.locator("#id_bedrock_apikey__api_key").fill("bedrock-api-key-1")
    page.locator("#id_bedrock_apikey__aws_region").fill("eu-west-3")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/accounts/$"))
    account = UpstreamAccount.objects.get(name="bedrock-key")
    assert (account.platform, account.type) == ("anthropic", "bedrock")
    assert upstream_account_credentials(account) == {
        "auth_mode": "apikey",
        "api_key": "bedrock-api-key-1",
        "aws_region": "eu-west-3",
    }
    assert page.console_errors == []


def test_the_account_page_resets_the_quota_and_deletes_the_account(staff_page):
    account = UpstreamAccountFactory(name="metered", quota_limit_usd=Decimal("50"))
    GroupAccountFactory(account=account)
    upstream_account_quota_charge(account_id=account.pk, amount_usd=Decimal("12"))
    page = staff_page
    page.goto(f"/accounts/{account.pk}/")
    expect(page.locator(f"#quota-badge-{account.pk} [data-quota='$']")).to_contain_text("$12.00/$50.00")
    page.get_by_role("button", name="Reset quota").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.locator("#reset-amounts")).to_contain_text("Total used$12.00 of $50.00")
    dialog.get_by_role("button", name="Reset quota").click()
    expect(page.locator(f"#quota-badge-{account.pk} [data-quota='$']")).to_contain_text("$0.00/$50.00")
    account.refresh_from_db()
    assert account.quota_used_usd == 0

    page.get_by_role("button", name="Delete").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("The account leaves 1 group")
    dialog.get_by_role("button", name="Delete account").click()
    expect(page).to_have_url(re.compile(r"/accounts/$"))
    expect(page.get_by_role("status").first).to_contain_text("Account metered deleted.")
    assert not UpstreamAccount.objects.filter(pk=account.pk).exists()
    assert page.console_errors == []


def test_an_account_is_deleted_from_the_list(staff_page):
    UpstreamAccountFactory(name="keep-me")
    gone = UpstreamAccountFactory(name="old-relay")
    page = staff_page
    page.goto("/accounts/")
    page.get_by_role("button", name="Delete old-relay").click()
    page.locator("dialog[open]").get_by_role("button", name="Delete account").click()
    expect(page.get_by_role("status").first).to_contain_text("Account old-relay deleted.")
    expect(page.locator("#account-table tbody tr")).to_have_count(1)
    assert not UpstreamAccount.objects.filter(pk=gone.pk).exists()
    assert page.console_errors == []
