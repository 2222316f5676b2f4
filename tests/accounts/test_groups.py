from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from accounts.models import APIKey, Group, GroupAccount
from accounts.rules import group_routed_account_ids
from accounts.services.groups import group_delete_rebinding_keys, group_reorder
from tests.factories import (
    APIKeyFactory,
    GroupAccountFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
)

pytestmark = pytest.mark.django_db


def order() -> list[str]:
    return list(Group.objects.order_by("sort_order", "id").values_list("name", flat=True))


def form_data(**overrides) -> dict:
    data = {
        "name": "claude-pool",
        "description": "",
        "platform": "anthropic",
        "rate_multiplier": "1.5",
        "status": "active",
        "subscription_type": "standard",
        "daily_limit_usd": "",
        "weekly_limit_usd": "",
        "monthly_limit_usd": "",
        "default_validity_days": "30",
        "timezone": "",
        "image_price_1k": "",
        "image_price_2k": "",
        "image_price_4k": "",
        "allow_image_generation": "on",
        "fallback_group": "",
        "fallback_group_on_invalid_request": "",
        "rpm_limit": "0",
        "routing-TOTAL_FORMS": "1",
        "routing-INITIAL_FORMS": "0",
        "routing-MIN_NUM_FORMS": "0",
        "routing-MAX_NUM_FORMS": "100",
        "routing-0-pattern": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# --- List and reorder ----------------------------------------------------------------------------


def test_the_list_shows_groups_in_sort_order_with_account_and_key_counts(staff_client):
    second = GroupFactory(name="second", sort_order=20)
    first = GroupFactory(name="first", sort_order=10, is_exclusive=True)
    GroupAccountFactory.create_batch(2, group=second)
    APIKeyFactory.create_batch(3, group=second)
    page = staff_client.get("/groups/").content.decode()
    assert page.index(">first<") < page.index(">second<")
    row = page[page.index(f'data-group-id="{second.pk}"') :]
    row = row[: row.index("</tr>")]
    assert (
        '<td class="num" data-label="Accounts">2</td>' in row
        and '<td class="num" data-label="Keys">3</td>' in row
    )
    assert f'name="ids" value="{first.pk}"' in page
    assert 'aria-label="Move first up"' in page


def test_the_group_list_runs_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    groups = GroupFactory.create_batch(200)
    GroupAccountFactory.create_batch(20, group=groups[0])
    APIKeyFactory.create_batch(5, group=groups[1])
    # session + staff user + groups with their counts
    with django_assert_max_num_queries(3):
        response = staff_client.get("/groups/")
    assert response.status_code == 200
    assert response.content.decode().count('name="ids"') == 200


def test_reordering_applies_positions_spaced_by_ten_in_one_update(staff_client):
    a, b, c = GroupFactory(name="a"), GroupFactory(name="b"), GroupFactory(name="c")
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.post(
            "/groups/sort-order", {"ids": [c.pk, a.pk, b.pk]}, headers={"HX-Request": "true"}
        )
    assert response.status_code == 200
    assert order() == ["c", "a", "b"]
    assert list(Group.objects.order_by("sort_order").values_list("sort_order", flat=True)) == [10, 20, 30]
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1 and "CASE" in updates[0]
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="table"') and "<nav" not in body
    assert json.loads(response["HX-Trigger"])["toast"]["message"] == "Group order saved."


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda ids: [*ids, 999_999], "unknown group id 999999"),
        (lambda ids: [ids[0], *ids], "listed twice"),
        (lambda ids: ids[1:], "1 group missing"),
        (lambda ids: [*ids[:-1], "x"], "not a number"),
    ],
)
def test_a_tampered_order_is_refused_whole_and_changes_nothing(staff_client, tamper, message):
    a, b, c = GroupFactory(name="a"), GroupFactory(name="b"), GroupFactory(name="c")
    before = list(Group.objects.order_by("id").values_list("sort_order", flat=True))
    response = staff_client.post(
        "/groups/sort-order", {"ids": tamper([c.pk, b.pk, a.pk])}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert message in body and 'role="alert"' in body
    assert list(Group.objects.order_by("id").values_list("sort_order", flat=True)) == before


def test_a_refused_order_without_htmx_comes_back_as_a_message(staff_client):
    GroupFactory(name="a")
    response = staff_client.post("/groups/sort-order", {"ids": [999_999]}, follow=True)
    assert "The new order was not saved" in response.content.decode()


@pytest.mark.parametrize(("move", "expected"), [("up", ["a", "c", "b"]), ("down", ["a", "b", "c"])])
def test_move_buttons_post_the_full_order_with_the_move(staff_client, move, expected):
    a, b, c = GroupFactory(name="a"), GroupFactory(name="b"), GroupFactory(name="c")
    staff_client.post("/groups/sort-order", {"ids": [a.pk, b.pk, c.pk], "move": f"{move}:{c.pk}"})
    assert order() == expected


def test_moving_the_first_group_up_keeps_the_order():
    a, b = GroupFactory(name="a"), GroupFactory(name="b")
    from accounts.rules import group_order_move

    assert group_order_move([a.pk, b.pk], a.pk, -1) == [a.pk, b.pk]
    assert group_order_move([a.pk, b.pk], a.pk, 1) == [b.pk, a.pk]


def test_an_empty_order_is_fine_when_there_are_no_groups():
    group_reorder(ordered_ids=[])


# --- Create and edit -----------------------------------------------------------------------------


def test_creating_a_group_puts_it_at_the_end_and_keeps_limits_as_typed(staff_client):
    GroupFactory(sort_order=70)
    response = staff_client.post(
        "/groups/new", form_data(daily_limit_usd="0", weekly_limit_usd="25.5", timezone="Asia/Tokyo")
    )
    group = Group.objects.get(name="claude-pool")
    assert response.status_code == 302 and response["Location"] == f"/groups/{group.pk}/"
    assert group.sort_order == 80
    assert group.daily_limit_usd == Decimal("0")  # 0 = no usage allowed, kept as 0
    assert group.weekly_limit_usd == Decimal("25.5") and group.monthly_limit_usd is None
    assert group.rate_multiplier == Decimal("1.5") and group.timezone == "Asia/Tokyo"


def test_creating_a_group_needs_no_routing_rows_as_the_create_page_posts_none(staff_client):
    page = staff_client.get("/groups/new").content.decode()
    assert "routing-TOTAL_FORMS" not in page
    data = {k: v for k, v in form_data().items() if not k.startswith("routing-")}
    response = staff_client.post("/groups/new", data)
    group = Group.objects.get(name="claude-pool")
    assert response.status_code == 302 and response["Location"] == f"/groups/{group.pk}/"
    assert group.model_routing == {}


def test_the_form_explains_empty_and_zero_limits(staff_client):
    page = staff_client.get("/groups/new").content.decode()
    assert "Empty = no limit. 0 = no usage at all: it blocks every request to this group." in page


def test_a_zero_limit_is_said_to_block_all_usage_and_an_unreachable_one_is_named(staff_client):
    group = GroupFactory(name="plus", subscription_type="subscription", daily_limit_usd=Decimal("0"))
    page = staff_client.get(f"/groups/{group.pk}/edit").content.decode()
    hint = page[page.index('id="id_daily_limit_usd_hint"') :]
    assert hint[: hint.index("</div>")].endswith(
        "0 blocks all usage: subscribers of this group cannot make any request."
    )
    response = staff_client.post(
        f"/groups/{group.pk}/edit",
        form_data(name="plus", daily_limit_usd="20", weekly_limit_usd="10", monthly_limit_usd="0"),
        follow=True,
    )
    page = response.content.decode()
    group.refresh_from_db()
    assert (group.daily_limit_usd, group.weekly_limit_usd, group.monthly_limit_usd) == (20, 10, 0)
    assert "Group plus saved." in page
    assert (
        "Higher than the weekly limit ($10), which is reached first: the daily limit never applies." in page
    )
    assert "0 blocks all usage" in page


def test_the_form_refuses_bad_values_and_keeps_what_was_typed(staff_client):
    response = staff_client.post(
        "/groups/new", form_data(name="kept-name", rate_multiplier="0", timezone="Mars/Olympus")
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "The rate multiplier must be greater than 0." in page
    assert "&#x27;Mars/Olympus&#x27; is not an IANA timezone name" in page
    assert 'value="kept-name"' in page
    assert not Group.objects.exists()


def test_a_group_cannot_fall_back_to_itself(staff_client):
    group = GroupFactory(name="solo")
    page = staff_client.post(
        f"/groups/{group.pk}/edit", form_data(name="solo", fallback_group=str(group.pk))
    ).content.decode()
    # The form offers only other groups, so a forged self-reference is an invalid choice.
    assert "Select a valid choice" in page
    group.refresh_from_db()
    assert group.fallback_group is None


def test_a_fallback_cycle_is_refused_and_named(staff_client):
    a = GroupFactory(name="A")
    c = GroupFactory(name="C", fallback_group=a)
    b = GroupFactory(name="B", fallback_group=c)
    page = staff_client.post(
        f"/groups/{a.pk}/edit", form_data(name="A", fallback_group=str(b.pk))
    ).content.decode()
    assert "This fallback would make a cycle: A → B → C → A." in page
    a.refresh_from_db()
    assert a.fallback_group is None


def test_a_fallback_chain_without_a_cycle_is_saved(staff_client):
    a, b = GroupFactory(name="A"), GroupFactory(name="B")
    GroupFactory(name="C", fallback_group=b)
    staff_client.post(f"/groups/{a.pk}/edit", form_data(name="A", fallback_group=str(b.pk)))
    a.refresh_from_db()
    assert a.fallback_group == b


def test_model_routing_is_edited_as_rows_of_pattern_and_accounts(staff_client):
    group = GroupFactory(name="routed")
    fast = GroupAccountFactory(group=group, priority=5).account
    slow = GroupAccountFactory(group=group, priority=90).account
    data = form_data(
        name="routed",
        model_routing_enabled="on",
        **{
            "routing-TOTAL_FORMS": "3",
            "routing-0-pattern": "claude-opus-*",
            "routing-0-accounts": [slow.pk, fast.pk],
            "routing-1-pattern": "claude-haiku-4-5",
            "routing-1-accounts": [slow.pk],
            "routing-2-pattern": "",
        },
    )
    response = staff_client.post(f"/groups/{group.pk}/edit", data)
    assert response.status_code == 302
    group.refresh_from_db()
    assert group.model_routing == {"claude-opus-*": [fast.pk, slow.pk], "claude-haiku-4-5": [slow.pk]}
    page = staff_client.get(f"/groups/{group.pk}/edit").content.decode()
    assert 'value="claude-opus-*"' in page


def test_routing_can_only_name_accounts_of_the_group(staff_client):
    group = GroupFactory(name="routed")
    GroupAccountFactory(group=group)
    stranger = UpstreamAccountFactory()
    page = staff_client.post(
        f"/groups/{group.pk}/edit",
        form_data(name="routed", **{"routing-0-pattern": "gpt-*", "routing-0-accounts": [stranger.pk]}),
    ).content.decode()
    assert "Select a valid choice" in page
    group.refresh_from_db()
    assert group.model_routing == {}


def test_routing_patterns_must_be_model_names_listed_once(staff_client):
    group = GroupFactory(name="routed")
    member = GroupAccountFactory(group=group).account
    page = staff_client.post(
        f"/groups/{group.pk}/edit",
        form_data(
            name="routed",
            **{
                "routing-TOTAL_FORMS": "2",
                "routing-0-pattern": "gpt-*",
                "routing-0-accounts": [member.pk],
                "routing-1-pattern": "GPT-*",
                "routing-1-accounts": [member.pk],
            },
        ),
    ).content.decode()
    assert "This pattern is already listed above." in page
    page = staff_client.post(
        f"/groups/{group.pk}/edit",
        form_data(name="routed", **{"routing-0-pattern": "gpt*4*", "routing-0-accounts": [member.pk]}),
    ).content.decode()
    assert "is not a model pattern" in page


def test_an_exact_routing_pattern_beats_a_prefix_and_the_longest_prefix_wins():
    group = GroupFactory(
        model_routing_enabled=True,
        model_routing={"claude-*": [1], "claude-opus-*": [2], "claude-opus-4-5": [3]},
    )
    assert group_routed_account_ids(group, "claude-opus-4-5") == [3]
    assert group_routed_account_ids(group, "Claude-Opus-4-1") == [2]
    assert group_routed_account_ids(group, "claude-haiku") == [1]
    assert group_routed_account_ids(group, "gpt-5") is None
    group.model_routing_enabled = False
    assert group_routed_account_ids(group, "claude-opus-4-5") is None


def test_editing_never_changes_the_sort_order(staff_client):
    group = GroupFactory(name="g", sort_order=40)
    staff_client.post(f"/groups/{group.pk}/edit", form_data(name="g", sort_order="1"))
    group.refresh_from_db()
    assert group.sort_order == 40


# --- Detail ------------------------------------------------------------------------------------


def test_the_detail_page_shows_accounts_with_their_priority_and_counts_of_keys_and_subscriptions(
    staff_client,
):
    group = SubscriptionGroupFactory(name="openai-sub")
    GroupAccountFactory(
        group=group, account=UpstreamAccountFactory(name="acc-low", platform="openai"), priority=1
    )
    GroupAccountFactory(
        group=group, account=UpstreamAccountFactory(name="acc-high", platform="openai"), priority=70
    )
    APIKeyFactory.create_batch(2, group=group)
    SubscriptionFactory.create_batch(3, group=group)
    SubscriptionFactory(group=group, status="revoked")
    page = staff_client.get(f"/groups/{group.pk}/").content.decode()
    assert page.index("acc-low") < page.index("acc-high")
    assert 'value="70"' in page
    assert '<div class="value" id="key-count">2</div>' in page
    assert f'href="/keys/?group={group.pk}"' in page
    assert '<div class="value" id="subscription-count">3</div>' in page and "of 4 in total" in page


def test_changing_an_accounts_priority_in_a_group_reorders_its_routing(staff_client):
    group = GroupFactory()
    first = GroupAccountFactory(group=group, priority=10).account
    second = GroupAccountFactory(group=group, priority=20).account
    group.model_routing = {"claude-*": [first.pk, second.pk]}
    group.save()
    response = staff_client.post(
        f"/groups/{group.pk}/accounts/{first.pk}/priority", {"priority": "30"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200 and 'id="group-members"' in response.content.decode()
    assert GroupAccount.objects.get(group=group, account=first).priority == 30
    group.refresh_from_db()
    assert group.model_routing == {"claude-*": [second.pk, first.pk]}


def test_a_bad_priority_is_reported_in_the_members_card(staff_client):
    group = GroupFactory()
    account = GroupAccountFactory(group=group).account
    response = staff_client.post(
        f"/groups/{group.pk}/accounts/{account.pk}/priority",
        {"priority": "-4"},
        headers={"HX-Request": "true"},
    )
    assert "greater than or equal to 0" in response.content.decode()
    assert GroupAccount.objects.get(group=group, account=account).priority == 50


# --- Delete --------------------------------------------------------------------------------------


def test_deleting_a_group_with_keys_is_refused_with_the_count_and_a_link(staff_client):
    group = GroupFactory(name="busy")
    APIKeyFactory.create_batch(3, group=group)
    dialog = staff_client.get(f"/groups/{group.pk}/delete").content.decode()
    assert "3 API keys are bound to it" in dialog
    assert f'href="/keys/?group={group.pk}"' in dialog
    response = staff_client.post(f"/groups/{group.pk}/delete", headers={"HX-Request": "true"})
    assert response.status_code == 200 and "cannot be deleted yet" in response.content.decode()
    assert Group.objects.filter(pk=group.pk).exists()


def test_deleting_a_group_with_subscriptions_is_refused(staff_client):
    group = SubscriptionGroupFactory()
    SubscriptionFactory(group=group)
    staff_client.post(f"/groups/{group.pk}/delete")
    assert Group.objects.filter(pk=group.pk).exists()


def test_deleting_an_unused_group_keeps_its_accounts_and_clears_fallbacks_to_it(staff_client):
    group = GroupFactory(name="old")
    membership = GroupAccountFactory(group=group)
    dependent = GroupFactory(fallback_group=group)
    dialog = staff_client.get(f"/groups/{group.pk}/delete").content.decode()
    assert "1 account membership will be deleted" in dialog
    response = staff_client.post(f"/groups/{group.pk}/delete", headers={"HX-Request": "true"})
    assert response.status_code == 204 and response["HX-Redirect"] == "/groups/"
    assert not Group.objects.filter(pk=group.pk).exists()
    membership.account.refresh_from_db()
    dependent.refresh_from_db()
    assert dependent.fallback_group is None


# --- Delete, moving the keys first ------------------------------------------------------------------


def bound_key_groups(keys) -> set[int | None]:
    return set(APIKey.objects.filter(pk__in=[k.pk for k in keys]).values_list("group_id", flat=True))


def test_the_refusal_offers_to_move_the_keys_to_another_group(staff_client):
    group = GroupFactory(name="busy")
    GroupFactory(name="spare")
    GroupFactory(name="elsewhere", platform="openai", is_exclusive=True)
    APIKeyFactory.create_batch(2, group=group)
    dialog = staff_client.get(f"/groups/{group.pk}/delete").content.decode()
    assert "Move the 2 keys and delete this group" in dialog
    assert "spare (Anthropic)" in dialog
    assert "elsewhere" not in dialog  # keys work on their own platform only
    assert ">busy (" not in dialog
    assert "the gateway may refuse a moved key" in dialog


def test_moving_the_keys_rebinds_them_all_and_deletes_the_group(staff_client):
    group = GroupFactory(name="busy")
    target = GroupFactory(name="spare")
    keys = APIKeyFactory.create_batch(3, group=group)
    other = APIKeyFactory(group=GroupFactory())
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.post(
            f"/groups/{group.pk}/delete",
            {"rebind": "1", "target_group": target.pk},
            headers={"HX-Request": "true"},
        )
    assert response.status_code == 204 and response["HX-Redirect"] == "/groups/"
    assert not Group.objects.filter(pk=group.pk).exists()
    assert bound_key_groups(keys) == {target.pk}
    other.refresh_from_db()
    assert other.group_id != target.pk
    key_updates = [q for q in queries.captured_queries if q["sql"].startswith('UPDATE "accounts_apikey"')]
    assert len(key_updates) == 1
    page = staff_client.get("/groups/").content.decode()
    assert "Moved 3 keys to spare and deleted group busy." in page


def test_a_target_on_another_platform_is_refused_and_nothing_changes(staff_client):
    group = GroupFactory(name="busy", platform="anthropic")
    GroupFactory(name="spare", platform="anthropic")
    target = GroupFactory(name="gpt-pool", platform="openai")
    keys = APIKeyFactory.create_batch(2, group=group)
    response = staff_client.post(
        f"/groups/{group.pk}/delete",
        {"rebind": "1", "target_group": target.pk},
        headers={"HX-Request": "true"},
    )
    dialog = response.content.decode()
    assert response.status_code == 200
    assert "Select a valid choice. That choice is not one of the available choices." in dialog
    assert "gpt-pool" not in dialog
    assert Group.objects.filter(pk=group.pk).exists()
    assert bound_key_groups(keys) == {group.pk}


def test_the_target_cannot_be_the_group_itself():
    group = GroupFactory()
    keys = APIKeyFactory.create_batch(2, group=group)
    with pytest.raises(ValidationError) as refused:
        group_delete_rebinding_keys(group=group, target_group_id=group.pk, actor=None)
    assert "Choose a different group" in refused.value.message_dict["target_group"][0]
    assert bound_key_groups(keys) == {group.pk}


def test_subscriptions_still_block_the_delete_and_no_key_is_moved(staff_client):
    group = SubscriptionGroupFactory(name="sub-pool")
    target = SubscriptionGroupFactory(name="other-sub")
    keys = APIKeyFactory.create_batch(2, group=group)
    SubscriptionFactory.create_batch(2, group=group)
    dialog = staff_client.get(f"/groups/{group.pk}/delete").content.decode()
    assert "Not possible while subscriptions use this group" in dialog
    response = staff_client.post(
        f"/groups/{group.pk}/delete",
        {"rebind": "1", "target_group": target.pk},
        headers={"HX-Request": "true"},
    )
    assert "2 subscriptions still use this group, so it cannot be deleted. No keys were moved." in (
        response.content.decode()
    )
    assert Group.objects.filter(pk=group.pk).exists()
    assert bound_key_groups(keys) == {group.pk}


@pytest.mark.django_db(transaction=True)
def test_a_target_deleted_while_the_move_waits_leaves_everything_as_it_was():
    group = GroupFactory(name="busy")
    target = GroupFactory(name="doomed")
    keys = APIKeyFactory.create_batch(3, group=group)
    deleted, release = threading.Event(), threading.Event()

    def delete_target() -> None:
        try:
            with transaction.atomic():
                Group.objects.filter(pk=target.pk).delete()
                deleted.set()
                release.wait(5)
        finally:
            connections.close_all()

    other = threading.Thread(target=delete_target)
    other.start()
    assert deleted.wait(5)
    # The move blocks on the target's row lock until the other transaction commits its delete.
    threading.Timer(0.3, release.set).start()
    with pytest.raises(ValidationError) as refused:
        group_delete_rebinding_keys(group=group, target_group_id=target.pk, actor=None)
    other.join(5)
    assert "no longer exists" in refused.value.message_dict["target_group"][0]
    assert Group.objects.filter(pk=group.pk).exists() and not Group.objects.filter(pk=target.pk).exists()
    assert bound_key_groups(keys) == {group.pk}


def test_a_fallback_on_another_platform_is_refused(staff_client):
    gpt = GroupFactory(name="gpt", platform="openai")
    page = staff_client.post("/groups/new", form_data(fallback_group=str(gpt.pk))).content.decode()
    assert "gpt is on OpenAI; a fallback must be on this group&#x27;s platform (Anthropic)." in page
    assert not Group.objects.filter(name="claude-pool").exists()
    claude = GroupFactory(name="claude")
    with pytest.raises(ValidationError) as refused:
        from accounts.services.groups import group_update

        group_update(group=claude, fields={"fallback_group_on_invalid_request": gpt}, actor=None)
    assert "a fallback must be on this group's platform" in str(refused.value)


def test_group_names_are_unique_whatever_their_case(staff_client):
    GroupFactory(name="openai-standard")
    page = staff_client.post("/groups/new", form_data(name="OPENAI-STANDARD")).content.decode()
    assert "Another group already has this name (names ignore case)." in page
    assert Group.objects.count() == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        Group.objects.create(name="OpenAI-Standard", platform="openai")


@pytest.mark.parametrize(
    "change",
    [
        {"name": "TAKEN"},
        {"name": "renamed", "timezone": "Mars/Olympus"},
        {"name": "renamed", "rate_multiplier": "0"},
    ],
)
def test_after_a_refused_rename_the_page_still_names_the_saved_group(staff_client, change):
    GroupFactory(name="taken")
    group = GroupFactory(name="kept")
    page = staff_client.post(f"/groups/{group.pk}/edit", form_data(**change)).content.decode()
    assert "<title>Edit kept · Tollgate</title>" in page
    assert "<h1>Edit kept</h1>" in page
    assert f'value="{change["name"]}"' in page  # what was typed stays in the field
    group.refresh_from_db()
    assert group.name == "kept"


@pytest.mark.parametrize("priority", [-1, 10_001])
def test_the_service_refuses_a_priority_in_a_group_outside_0_to_10000(priority):
    from accounts.services.groups import group_set_account_priority

    membership = GroupAccountFactory(priority=50)
    with pytest.raises(ValidationError) as refused:
        group_set_account_priority(
            group=membership.group, account_id=membership.account_id, priority=priority
        )
    assert refused.value.message_dict["priority"] == ["The priority is a whole number from 0 to 10,000."]
    membership.refresh_from_db()
    assert membership.priority == 50
