"""Subscriptions in real Chromium, and seed 000 reproduced through the console pages."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import APIKey, Group, Subscription, User
from accounts.rules import api_key_hash
from accounts.services.subscriptions import subscription_usage_charge
from tests.factories import GroupFactory, SubscriptionFactory, SubscriptionGroupFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SEED_GROUP = "Hermes Subscription Group"
SEED_EMAIL = "relay-sub-090176@sub2api.local"
SEED_KEY = "relay-sub-090176-key"


def test_seed_000_a_subscription_and_a_key_bound_to_its_group(
    staff_page, staff_user, live_server, screenshot
):
    """Seed 000: a subscription group on openai, a user, a 30-day subscription, a key bound to the group."""
    group = GroupFactory(
        name=SEED_GROUP,
        description="for subscription validation",
        platform="openai",
        subscription_type=Group.SubscriptionType.SUBSCRIPTION,
        is_exclusive=False,
        daily_limit_usd=None,
        weekly_limit_usd=None,
        monthly_limit_usd=None,
    )
    page = staff_page

    # The user, through the users page.
    page.goto("/users/new")
    page.get_by_label("Email address").fill(SEED_EMAIL)
    page.get_by_label("Username").fill("relay-sub-090176")
    page.get_by_label("Concurrency").fill("0")
    page.get_by_role("button", name="Create user").click()
    expect(page).to_have_url(re.compile(r"/users/\d+/$"))
    user = User.objects.get(email=SEED_EMAIL)

    # Before the subscription the group is offered to the user's keys, but unavailable, and why.
    page.goto("/keys/new")
    page.get_by_label("User").select_option(label=SEED_EMAIL)
    expect(page.locator("#unavailable-groups")).to_contain_text(
        f"{SEED_GROUP}: Subscription group: {SEED_EMAIL} has no live subscription to it. Assign one first."
    )
    expect(page.get_by_label("Group").locator("option", has_text=SEED_GROUP)).to_be_disabled()
    screenshot(page, "key-form-before")

    # The 30-day subscription, through the assign page.
    page.goto("/subscriptions/")
    page.get_by_role("link", name="Assign").click()
    page.wait_for_load_state("networkidle")  # htmx listens to the search box once the page has loaded
    page.get_by_label("Users").fill("relay-sub")
    page.get_by_role("button", name=f"Add {SEED_EMAIL}").click()
    page.get_by_label("Subscription group").select_option(label=f"{SEED_GROUP} (OpenAI, 30 days)")
    page.get_by_label("Days").fill("30")
    page.get_by_label("Notes").fill("hermes subscription validation")
    screenshot(page, "assign")
    page.get_by_role("button", name="Assign").click()
    expect(page).to_have_url(re.compile(r"/subscriptions/\d+/$"))
    expect(page.get_by_role("status").first).to_contain_text("1 new subscription, 0 extended")
    sub = Subscription.objects.get()
    facts = page.locator("#subscription-facts")
    expect(facts.locator("[data-fact=status]")).to_have_text("Active")
    expect(facts.locator("[data-fact=term]")).to_have_text("30 days")
    expect(facts.locator("[data-fact=notes]")).to_have_text("hermes subscription validation")
    expect(facts).to_contain_text(staff_user.email)
    local = timezone.localtime
    expect(facts.locator("[data-fact=starts]")).to_contain_text(
        local(sub.starts_at).strftime("%Y-%m-%d %H:%M")
    )
    expect(facts.locator("[data-fact=expires]")).to_contain_text(
        local(sub.expires_at).strftime("%Y-%m-%d %H:%M")
    )
    windows = page.locator("#subscription-windows tbody tr")
    expect(windows).to_have_count(3)
    for kind in ("daily", "weekly", "monthly"):
        window = page.locator(f"#subscription-windows tr[data-window={kind}]")
        expect(window).to_contain_text("$0.00")
        expect(window).to_contain_text("no limit")  # the seed's limits are null
        expect(window.locator("[data-cell=start]")).to_have_text("not started")
        expect(window.locator("[data-cell=reset]")).to_have_text("starts with the first request")
    screenshot(page, "subscription")
    assert (sub.user, sub.group, sub.status, sub.assigned_by) == (user, group, "active", staff_user)
    assert sub.expires_at - sub.starts_at == timedelta(days=30)
    assert (sub.daily_window_start, sub.weekly_window_start, sub.monthly_window_start) == (None, None, None)
    assert (sub.daily_usage_usd, sub.weekly_usage_usd, sub.monthly_usage_usd) == (Decimal(0),) * 3

    # The key, bound to the group: quota 0 (unlimited), no expiry, no limits.
    page.goto("/keys/new")
    page.get_by_label("User").select_option(label=SEED_EMAIL)
    expect(page.locator("#unavailable-groups")).to_have_count(0)
    page.get_by_label("Group").select_option(label=f"{SEED_GROUP} (OpenAI, subscription)")
    page.get_by_label("Name").fill(SEED_KEY)
    page.get_by_role("button", name="Create key").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text(f"Key created: {SEED_KEY}")
    expect(dialog).to_contain_text(SEED_GROUP)
    expect(dialog).to_contain_text("unlimited")
    secret = dialog.locator("#new-key-secret").input_value()
    assert re.fullmatch(r"sk-[0-9a-f]{64}", secret)  # the seed's key has the same shape
    screenshot(page, "secret")
    dialog.get_by_role("link", name="Done, go to the keys").click()

    key = APIKey.objects.get(key_hash=api_key_hash(secret))
    row = page.locator(f"#key-row-{key.pk}")
    expect(row).to_contain_text(SEED_KEY)
    expect(row).to_contain_text(SEED_EMAIL)
    expect(row).to_contain_text(SEED_GROUP)
    expect(page.locator(f"#key-{key.pk}-status")).to_have_text("Active")
    expect(page.locator(f"#key-{key.pk}-quota")).to_have_text("$0.00 / unlimited")
    expect(page.locator(f"#key-{key.pk}-expires")).to_have_text("never")
    expect(row.locator("td").nth(6)).to_have_text("never")  # last used
    screenshot(page, "keys")
    assert (key.user, key.group, key.name, key.status) == (user, group, SEED_KEY, "active")
    assert (key.quota_usd, key.quota_used_usd, key.expires_at, key.last_used_at) == (0, 0, None, None)
    assert (key.rate_limit_5h_usd, key.rate_limit_1d_usd, key.rate_limit_7d_usd) == (0, 0, 0)
    assert (key.usage_5h_usd, key.usage_1d_usd, key.usage_7d_usd) == (0, 0, 0)
    assert (key.window_5h_start, key.window_1d_start, key.window_7d_start) == (None, None, None)
    assert (key.ip_allowlist, key.ip_denylist) == ([], [])
    assert page.console_errors == []


def test_extending_and_suspending_from_the_list_refreshes_the_table(staff_page, screenshot):
    group = SubscriptionGroupFactory(
        name="Plus",
        daily_limit_usd=Decimal("10"),
        weekly_limit_usd=Decimal("50"),
        monthly_limit_usd=Decimal("150"),
    )
    now = timezone.now()
    heavy = SubscriptionFactory(
        group=group, user=UserFactory(email="heavy@example.com"), starts_at=now - timedelta(days=3)
    )
    subscription_usage_charge(subscription_id=heavy.pk, amount_usd=Decimal("20"), now=now - timedelta(days=2))
    subscription_usage_charge(subscription_id=heavy.pk, amount_usd=Decimal("9.2"), now=now)
    light = SubscriptionFactory(
        group=group, user=UserFactory(email="light@example.com"), starts_at=now - timedelta(days=26)
    )
    subscription_usage_charge(subscription_id=light.pk, amount_usd=Decimal("2"), now=now)
    SubscriptionFactory(
        group=group,
        user=UserFactory(email="gone@example.com"),
        starts_at=now - timedelta(days=45),
        status="expired",
    )
    page = staff_page
    page.goto("/subscriptions/")
    screenshot(page, "list")
    row = page.locator("#subscription-table tbody tr", has_text="light@example.com")
    expect(row).to_contain_text("3 days, 23 hours from now")
    row.get_by_role("button", name=re.compile("^Actions")).click()
    row.get_by_role("button", name="Extend…").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text(timezone.localtime(light.expires_at).strftime("%Y-%m-%d %H:%M"))
    dialog.get_by_label("Days (negative to shorten)").fill("-10")
    dialog.get_by_role("button", name="Extend").click()
    expect(dialog).to_contain_text("which is not in the future")
    screenshot(page, "extend-error")
    dialog.get_by_label("Days (negative to shorten)").fill("30")
    dialog.get_by_role("button", name="Extend").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    extended = timezone.localtime(light.expires_at + timedelta(days=30)).strftime("%Y-%m-%d %H:%M")
    expect(row).to_contain_text(extended)  # the table re-rendered with the new expiry

    row.get_by_role("button", name=re.compile("^Actions")).click()
    row.get_by_role("button", name="Suspend…").click()
    page.locator("dialog[open]").get_by_role("button", name="Suspend").click()
    expect(row).to_contain_text("Suspended")

    page.get_by_label("Status").select_option("expired")
    expect(page).to_have_url(re.compile(r"status=expired"))
    expect(page.locator("#subscription-table tbody tr")).to_have_count(1)
    expect(page.locator("#subscription-table")).to_contain_text("gone@example.com")
    assert page.console_errors == []

    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/subscriptions/")
    screenshot(page, "list-375")
    page.goto(f"/subscriptions/{heavy.pk}/")
    screenshot(page, "detail-375")
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(f"/subscriptions/{heavy.pk}/")
    screenshot(page, "detail")


def test_every_dialog_of_the_detail_page_opens_confirms_and_refreshes_the_page(staff_page, screenshot):
    group = SubscriptionGroupFactory(
        name="Pro", daily_limit_usd=Decimal("10"), weekly_limit_usd=Decimal("40")
    )
    now = timezone.now()
    subscription = SubscriptionFactory(
        group=group, user=UserFactory(email="dee@example.com"), starts_at=now - timedelta(days=2)
    )
    subscription_usage_charge(subscription_id=subscription.pk, amount_usd=Decimal("3"), now=now)
    page = staff_page
    page.goto(f"/subscriptions/{subscription.pk}/")
    facts = page.locator("#subscription-facts")

    page.get_by_role("button", name="Extend").click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_label("Days (negative to shorten)").fill("10")
    dialog.get_by_role("button", name="Extend").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    expires = timezone.localtime(subscription.expires_at + timedelta(days=10)).strftime("%Y-%m-%d %H:%M")
    expect(facts.locator("[data-fact=expires]")).to_contain_text(expires)
    expect(facts.locator("[data-fact=term]")).to_have_text("40 days")

    page.get_by_role("button", name="Reset windows").click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_label("Daily: $3.00 used of $10.00").check()
    dialog.get_by_role("button", name="Reset").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    expect(page.locator("#subscription-windows tr[data-window=daily]")).to_contain_text("$0.00 / $10.00")
    expect(page.locator("#subscription-windows tr[data-window=weekly]")).to_contain_text("$3.00 / $40.00")

    page.get_by_role("button", name="Suspend").click()
    page.locator("dialog[open]").get_by_role("button", name="Suspend").click()
    expect(facts.locator("[data-fact=status]")).to_have_text("Suspended")
    page.get_by_role("button", name="Resume").click()
    page.locator("dialog[open]").get_by_role("button", name="Resume").click()
    expect(facts.locator("[data-fact=status]")).to_have_text("Active")

    page.get_by_role("button", name="Revoke").click()
    page.locator("dialog[open]").get_by_role("button", name="Revoke").click()
    expect(facts.locator("[data-fact=status]")).to_have_text("Revoked")
    expect(page.get_by_role("button", name="Extend")).to_have_count(0)
    subscription.refresh_from_db()
    assert subscription.status == "revoked" and subscription.daily_usage_usd == 0
    assert subscription.weekly_usage_usd == Decimal("3")
    assert subscription.expires_at - subscription.starts_at == timedelta(days=40)
    assert page.console_errors == []
    screenshot(page, "revoked")


def test_assigning_several_users_found_by_typing(staff_page, screenshot):
    group = SubscriptionGroupFactory(name="Team", default_validity_days=14)
    User.objects.bulk_create(
        User(email=f"member{n:04d}@example.com", username=f"Member {n}", password="!") for n in range(2_000)
    )
    existing = SubscriptionFactory(group=group, user=User.objects.get(email="member0007@example.com"))
    page = staff_page
    page.goto("/subscriptions/assign")
    search = page.get_by_label("Users")
    search.fill("member000")
    results = page.locator("#id_users-results [data-pick-user]")
    expect(results).to_have_count(10)
    page.get_by_role("button", name="Add member0003@example.com").click()
    page.get_by_role("button", name="Add member0007@example.com").click()
    expect(results).to_have_count(8)  # chosen users leave the results
    search.fill("Member 1999")
    search.press("Enter")  # adds the first match rather than submitting the form
    chosen = page.locator("#id_users-picked .picked-user")
    expect(chosen).to_have_text(
        ["member0003@example.com×", "member0007@example.com×", "member1999@example.com×"]
    )
    page.get_by_role("button", name="Remove member0003@example.com").click()
    expect(chosen).to_have_count(2)
    page.get_by_label("Subscription group").select_option(label="Team (OpenAI, 14 days)")
    page.get_by_label("Notes").fill("team plan")
    screenshot(page, "picker")
    page.get_by_role("button", name="Assign", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/subscriptions/\?group={group.pk}$"))
    expect(page.get_by_role("status").first).to_contain_text("Team: 1 new subscription, 1 extended.")
    live = Subscription.objects.filter(group=group).order_by("user__email")
    assert [s.user.email for s in live] == ["member0007@example.com", "member1999@example.com"]
    existing.refresh_from_db()
    assert existing.term_days == 30 + 14
    assert live.get(user__email="member1999@example.com").notes == "team plan"
    assert page.console_errors == []


def test_reset_windows_resume_and_revoke_from_the_list(staff_page):
    group = SubscriptionGroupFactory(name="Plus", daily_limit_usd=Decimal("10"))
    now = timezone.now()
    paused = SubscriptionFactory(
        group=group, user=UserFactory(email="paused@example.com"), status="suspended"
    )
    subscription_usage_charge(subscription_id=paused.pk, amount_usd=Decimal("4"), now=now)
    page = staff_page
    page.goto("/subscriptions/")
    row = page.locator("#subscription-table tbody tr", has_text="paused@example.com")

    def act(action: str, button: str):
        row.get_by_role("button", name=re.compile("^Actions")).click()
        row.get_by_role("button", name=action).click()
        dialog = page.locator("dialog[open]")
        expect(dialog).to_be_visible()
        return dialog, button

    dialog, _ = act("Reset windows…", "Reset")
    dialog.get_by_label("Daily: $4.00 used of $10.00").check()
    dialog.get_by_role("button", name="Reset").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    expect(row).to_contain_text("$0.00")
    dialog, _ = act("Resume…", "Resume")
    dialog.get_by_role("button", name="Resume").click()
    expect(row).to_contain_text("Active")
    dialog, _ = act("Revoke…", "Revoke")
    dialog.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("Revoked")
    paused.refresh_from_db()
    assert (paused.status, paused.daily_usage_usd, paused.daily_window_start) == ("revoked", 0, None)
    assert page.console_errors == []
