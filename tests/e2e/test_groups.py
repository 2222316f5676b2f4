"""Groups in real Chromium: drag-sort, keyboard moves, a refused order, the form and the detail page."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from accounts.models import APIKey, Group, GroupAccount
from tests.factories import APIKeyFactory, GroupAccountFactory, GroupFactory, UpstreamAccountFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def stored_order() -> list[str]:
    return list(Group.objects.order_by("sort_order", "id").values_list("name", flat=True))


def shown_order(page) -> list[str]:
    return page.locator("#group-table tbody tr td:nth-child(2)").all_inner_texts()


@pytest.fixture
def three_groups():
    alpha = GroupFactory(name="alpha")
    GroupAccountFactory.create_batch(2, group=alpha)
    APIKeyFactory(group=alpha)
    beta = GroupFactory(name="beta", platform="openai", subscription_type="subscription")
    gamma = GroupFactory(name="gamma", platform="gemini", is_exclusive=True)
    return alpha, beta, gamma


def test_dragging_the_third_group_to_the_top_persists_the_order(staff_page, three_groups, screenshot):
    page = staff_page
    page.goto("/groups/")
    expect(page.locator("#group-table tbody tr")).to_have_count(3)
    screenshot(page, "list")
    rows = page.locator("#group-table tbody tr")
    handle = rows.nth(2).locator(".drag-handle")
    target = rows.nth(0)
    box, goal = handle.bounding_box(), target.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    x, top = box["x"] + box["width"] / 2, goal["y"] + 3
    # SortableJS needs real movement, and ignores rows that are still animating: go slowly.
    for step in range(1, 21):
        page.mouse.move(x, box["y"] - (box["y"] - top) * step / 20)
        page.wait_for_timeout(25)
    page.wait_for_timeout(250)
    page.mouse.move(x, top - 1)
    page.wait_for_timeout(250)
    page.mouse.up()
    expect(page.get_by_role("status").last).to_contain_text("Group order saved.")
    assert stored_order() == ["gamma", "alpha", "beta"]
    assert list(Group.objects.order_by("sort_order").values_list("sort_order", flat=True)) == [10, 20, 30]
    page.reload()
    assert shown_order(page) == ["gamma", "alpha", "beta"]
    assert page.console_errors == []


def test_the_move_buttons_reorder_from_the_keyboard_and_keep_focus(staff_page, three_groups):
    page = staff_page
    page.goto("/groups/")
    page.get_by_role("button", name="Move gamma up").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#group-table tbody tr").nth(1)).to_contain_text("gamma")
    expect(page.get_by_role("button", name="Move gamma up")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#group-table tbody tr").first).to_contain_text("gamma")
    # At the top "up" is disabled; focus moves to the same group's other arrow.
    expect(page.get_by_role("button", name="Move gamma up")).to_be_disabled()
    expect(page.get_by_role("button", name="Move gamma down")).to_be_focused()
    assert stored_order() == ["gamma", "alpha", "beta"]
    page.reload()
    assert shown_order(page) == ["gamma", "alpha", "beta"]


def test_a_tampered_order_is_refused_and_nothing_changes(staff_page, three_groups, screenshot):
    page = staff_page
    page.goto("/groups/")
    page.locator('#group-order input[name="ids"]').first.evaluate("input => input.value = '999999'")
    page.get_by_role("button", name="Move beta up").click()
    alert = page.locator("#order-error")
    expect(alert).to_contain_text("The new order was not saved: unknown group id 999999")
    screenshot(page, "refused")
    assert stored_order() == ["alpha", "beta", "gamma"]
    assert shown_order(page) == ["alpha", "beta", "gamma"]
    # The list re-rendered from the database, so the next move works again.
    page.get_by_role("button", name="Move beta up").click()
    expect(page.locator("#group-table tbody tr").first).to_contain_text("beta")
    expect(alert).to_have_count(0)


def test_the_group_form_adds_routing_rows_and_names_a_fallback_cycle(staff_page, screenshot):
    a = GroupFactory(name="A")
    member = GroupAccountFactory(group=a, account=UpstreamAccountFactory(name="opus-account")).account
    c = GroupFactory(name="C", fallback_group=a)
    b = GroupFactory(name="B", fallback_group=c)
    page = staff_page
    page.goto("/groups/new")
    screenshot(page, "new")
    page.goto(f"/groups/{a.pk}/edit")
    page.get_by_label("Fallback group", exact=True).select_option(label="B (Anthropic)")
    page.get_by_label("Route models to specific accounts").check()
    page.get_by_label("Model pattern").first.fill("claude-opus-*")
    page.locator("#id_routing-0-accounts").select_option(label="opus-account")
    page.get_by_role("button", name="Add rule").click()
    expect(page.get_by_label("Model pattern")).to_have_count(2)
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("This fallback would make a cycle: A → B → C → A.")).to_be_visible()
    expect(page.get_by_label("Model pattern").first).to_have_value("claude-opus-*")
    screenshot(page, "cycle")
    page.get_by_label("Fallback group", exact=True).select_option(label="None")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("A")
    a.refresh_from_db()
    assert a.model_routing == {"claude-opus-*": [member.pk]} and a.fallback_group is None
    assert b.pk


def test_the_detail_page_and_a_refused_delete_that_moves_the_keys(staff_page, screenshot):
    group = GroupFactory(name="busy-pool")
    GroupAccountFactory(group=group, account=UpstreamAccountFactory(name="acc-1"), priority=5)
    GroupAccountFactory(group=group, account=UpstreamAccountFactory(name="acc-2"), priority=60)
    APIKeyFactory.create_batch(2, group=group)
    spare = GroupFactory(name="spare-pool", is_exclusive=True)
    GroupFactory(name="gpt-pool", platform="openai")
    page = staff_page
    page.goto(f"/groups/{group.pk}/")
    page.get_by_label("Priority of acc-2 in this group").fill("1")
    page.locator("#member-table tbody tr").nth(1).get_by_role("button", name="Save").click()
    expect(page.locator("#member-table tbody tr").first).to_contain_text("acc-2")
    assert GroupAccount.objects.get(group=group, account__name="acc-2").priority == 1
    screenshot(page, "detail")
    page.get_by_role("button", name="Delete").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("2 API keys are bound to it")
    expect(dialog.get_by_role("link", name="see the 2 keys")).to_have_attribute(
        "href", f"/keys/?group={group.pk}"
    )
    expect(dialog.get_by_role("button", name="Delete group")).to_be_hidden()
    screenshot(page, "delete-refused")
    # Keys only work on their own platform: the OpenAI group is not offered.
    expect(dialog.get_by_label("Move the keys to").locator("option")).to_have_text(
        ["Choose a group…", "spare-pool (Anthropic, exclusive)"]
    )
    dialog.get_by_role("button", name="Move the 2 keys and delete this group").click()
    expect(dialog.get_by_text("This field is required.")).to_be_visible()
    screenshot(page, "rebind-refused")
    dialog.get_by_label("Move the keys to").select_option(label="spare-pool (Anthropic, exclusive)")
    dialog.get_by_role("button", name="Move the 2 keys and delete this group").click()
    page.wait_for_url("**/groups/")
    expect(page.get_by_text("Moved 2 keys to spare-pool and deleted group busy-pool.")).to_be_visible()
    assert not Group.objects.filter(pk=group.pk).exists()
    assert set(APIKey.objects.values_list("group_id", flat=True)) == {spare.pk}
    assert page.console_errors == []


def test_the_group_list_is_usable_on_a_phone(staff_page, three_groups, screenshot):
    page = staff_page
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/groups/")
    expect(page.get_by_role("button", name="Move gamma up")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # only the table scrolls sideways
    screenshot(page, "phone")


def test_a_new_group_is_created_from_the_form(staff_page, screenshot):
    page = staff_page
    page.goto("/groups/")
    page.get_by_role("link", name="New group").first.click()
    page.get_by_label("Name").fill("openai-standard")
    page.get_by_label("Platform").select_option(label="OpenAI")
    page.get_by_label("Rate multiplier").fill("1.25")
    page.get_by_label("Billing").select_option(label="Subscription")
    page.get_by_label("Daily limit (USD)").fill("10")
    page.get_by_label("Weekly limit (USD)").fill("50")
    page.get_by_label("Requests per minute").fill("60")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("openai-standard")
    expect(page.get_by_role("status").first).to_contain_text("Group openai-standard created.")
    group = Group.objects.get()
    assert (group.name, group.platform, group.subscription_type) == (
        "openai-standard",
        "openai",
        "subscription",
    )
    assert (group.rate_multiplier, group.daily_limit_usd, group.weekly_limit_usd) == (
        Decimal("1.25"),
        Decimal("10"),
        Decimal("50"),
    )
    assert group.monthly_limit_usd is None and group.rpm_limit == 60 and group.model_routing == {}
    screenshot(page, "created")


def test_the_limits_say_what_zero_and_an_unreachable_limit_do_as_they_are_typed(staff_page):
    group = GroupFactory(name="plus", platform="openai", subscription_type="subscription")
    page = staff_page
    page.goto(f"/groups/{group.pk}/edit")
    page.get_by_label("Daily limit (USD)").fill("0")
    expect(page.locator("#id_daily_limit_usd_hint")).to_have_text(
        "0 blocks all usage: subscribers of this group cannot make any request."
    )
    page.get_by_label("Daily limit (USD)").fill("60")
    page.get_by_label("Weekly limit (USD)").fill("50")
    expect(page.locator("#id_daily_limit_usd_hint")).to_contain_text("Higher than the weekly limit ($50)")
    expect(page.locator("#id_weekly_limit_usd_hint")).to_have_text("")
    page.get_by_label("Daily limit (USD)").fill("10")
    expect(page.locator("#id_daily_limit_usd_hint")).to_have_text("")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status").first).to_contain_text("Group plus saved.")
    group.refresh_from_db()
    assert (group.daily_limit_usd, group.weekly_limit_usd, group.monthly_limit_usd) == (10, 50, None)
    assert page.console_errors == []


def test_fallbacks_are_offered_and_accepted_on_the_groups_platform_only(staff_page):
    claude = GroupFactory(name="claude-backup")
    gpt = GroupFactory(name="gpt-backup", platform="openai")
    page = staff_page
    page.goto("/groups/new")
    fallback = page.get_by_label("Fallback group", exact=True)
    page.get_by_label("Name").fill("gpt-main")
    page.get_by_label("Platform").select_option(label="OpenAI")
    expect(fallback.locator("option:not([disabled])")).to_have_text(["None", "gpt-backup (OpenAI)"])
    fallback.select_option(label="gpt-backup (OpenAI)")
    page.get_by_label("Platform").select_option(label="Anthropic")
    expect(fallback).to_have_value("")  # the OpenAI fallback no longer fits
    expect(fallback.locator("option:not([disabled])")).to_have_text(["None", "claude-backup (Anthropic)"])
    page.get_by_label("Platform").select_option(label="OpenAI")
    fallback.select_option(label="gpt-backup (OpenAI)")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("gpt-main")
    assert Group.objects.get(name="gpt-main").fallback_group == gpt
    assert claude.pk


def test_an_unused_group_is_deleted_from_its_page(staff_page):
    group = GroupFactory(name="retired")
    GroupAccountFactory(group=group)
    page = staff_page
    page.goto(f"/groups/{group.pk}/")
    page.get_by_role("button", name="Delete").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("retired and its 1 account membership will be deleted")
    dialog.get_by_role("button", name="Delete group").click()
    expect(page).to_have_url(re.compile(r"/groups/$"))
    expect(page.get_by_role("status").first).to_contain_text("Group retired deleted.")
    assert not Group.objects.filter(pk=group.pk).exists()
    assert page.console_errors == []
