"""Subscriptions: assign, extend, reset, suspend, revoke, and their pages (docs/entities.md#subscriptions)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Subscription, User
from accounts.services.subscriptions import (
    subscription_assign,
    subscription_assign_bulk,
    subscription_expire_due,
    subscription_extend,
    subscription_resume,
    subscription_revoke,
    subscription_suspend,
    subscription_usage_charge,
    subscription_windows_reset,
)
from tests.factories import GroupFactory, SubscriptionFactory, SubscriptionGroupFactory, UserFactory

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


@pytest.fixture
def now():
    return timezone.now()


# --- assign ----------------------------------------------------------------------------------------------


def test_assigning_gives_the_group_for_its_default_validity_with_empty_windows(now, staff_user):
    user = UserFactory()
    group = SubscriptionGroupFactory(default_validity_days=30)
    assignment = subscription_assign(
        user=user, group=group, notes="  trial ", assigned_by=staff_user, now=now
    )
    sub = assignment.subscription
    sub.refresh_from_db()
    assert assignment.created
    assert (sub.status, sub.starts_at, sub.expires_at) == ("active", now, now + 30 * DAY)
    assert (sub.daily_window_start, sub.weekly_window_start, sub.monthly_window_start) == (None, None, None)
    assert (sub.daily_usage_usd, sub.weekly_usage_usd, sub.monthly_usage_usd) == (Decimal(0),) * 3
    assert (sub.assigned_by, sub.notes) == (staff_user, "trial")


def test_only_subscription_groups_take_subscriptions():
    with pytest.raises(ValidationError, match="is a standard group"):
        subscription_assign(user=UserFactory(), group=GroupFactory(name="payg"), days=5)
    assert not Subscription.objects.exists()


@pytest.mark.parametrize("days", [0, -3, 3651])
def test_assigning_needs_a_sensible_number_of_days(days):
    with pytest.raises(ValidationError, match="Enter a whole number of days"):
        subscription_assign(user=UserFactory(), group=SubscriptionGroupFactory(), days=days)


def test_assigning_again_extends_the_live_subscription_from_its_expiry(now):
    user = UserFactory()
    group = SubscriptionGroupFactory()
    first = subscription_assign(user=user, group=group, days=30, now=now, notes="first").subscription
    again = subscription_assign(user=user, group=group, days=10, now=now + DAY, notes="second")
    assert not again.created and again.subscription.pk == first.pk
    first.refresh_from_db()
    assert first.expires_at == now + 40 * DAY and first.starts_at == now
    assert first.notes == "first\nsecond"
    assert Subscription.objects.count() == 1


def test_assigning_again_after_the_term_ended_extends_from_now(now):
    user = UserFactory()
    group = SubscriptionGroupFactory()
    # Its term ended 10 days ago, but nothing has flipped it to expired yet.
    old = SubscriptionFactory(user=user, group=group, starts_at=now - 40 * DAY)
    assignment = subscription_assign(user=user, group=group, days=30, now=now)
    assert assignment.subscription.pk == old.pk and assignment.subscription.expires_at == now + 30 * DAY


def test_assigning_after_a_revocation_starts_a_new_subscription(now):
    user = UserFactory()
    group = SubscriptionGroupFactory()
    revoked = SubscriptionFactory(user=user, group=group, status="revoked")
    assignment = subscription_assign(user=user, group=group, days=7, now=now)
    assert assignment.created and assignment.subscription.pk != revoked.pk


def test_bulk_assignment_creates_and_extends_in_one_go(now):
    group = SubscriptionGroupFactory()
    fresh, existing = UserFactory(), UserFactory()
    live = SubscriptionFactory(user=existing, group=group, starts_at=now, expires_at=now + 5 * DAY)
    assignments = subscription_assign_bulk(users=[existing, fresh], group=group, days=10, now=now)
    assert {(a.subscription.user_id, a.created) for a in assignments} == {
        (existing.pk, False),
        (fresh.pk, True),
    }
    live.refresh_from_db()
    assert live.expires_at == now + 15 * DAY
    assert Subscription.objects.get(user=fresh).expires_at == now + 10 * DAY


def test_the_database_allows_one_live_subscription_per_user_and_group():
    sub = SubscriptionFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        SubscriptionFactory(user=sub.user, group=sub.group, status="suspended")
    SubscriptionFactory(user=sub.user, group=sub.group, status="expired")  # history is fine


# --- extend ----------------------------------------------------------------------------------------------


def test_extending_a_live_subscription_moves_its_expiry(now):
    sub = SubscriptionFactory(starts_at=now, expires_at=now + 10 * DAY)
    assert subscription_extend(subscription_id=sub.pk, days=5, now=now).expires_at == now + 15 * DAY
    assert subscription_extend(subscription_id=sub.pk, days=-14, now=now).expires_at == now + DAY


def test_shortening_into_the_past_is_refused_with_the_dates(now):
    sub = SubscriptionFactory(starts_at=now, expires_at=now + 10 * DAY)
    with pytest.raises(ValidationError) as error:
        subscription_extend(subscription_id=sub.pk, days=-10, now=now)
    assert "-10 days from the expiry" in error.value.message_dict["days"][0]
    assert "which is not in the future" in error.value.message_dict["days"][0]
    sub.refresh_from_db()
    assert sub.expires_at == now + 10 * DAY


def test_extending_an_expired_subscription_counts_from_now_and_reactivates_it(now):
    sub = SubscriptionFactory(starts_at=now - 60 * DAY, expires_at=now - 30 * DAY, status="expired")
    extended = subscription_extend(subscription_id=sub.pk, days=7, now=now)
    assert (extended.expires_at, extended.status) == (now + 7 * DAY, "active")
    with pytest.raises(ValidationError, match="not in the future"):
        subscription_extend(subscription_id=sub.pk, days=-8, now=now)


def test_an_expired_subscription_cannot_come_back_next_to_a_live_one(now):
    old = SubscriptionFactory(starts_at=now - 60 * DAY, expires_at=now - 30 * DAY, status="expired")
    SubscriptionFactory(user=old.user, group=old.group)
    with pytest.raises(ValidationError, match="already has a live subscription"):
        subscription_extend(subscription_id=old.pk, days=7, now=now)
    old.refresh_from_db()
    assert old.status == "expired"


def test_a_revoked_subscription_cannot_be_extended():
    sub = SubscriptionFactory(status="revoked")
    with pytest.raises(ValidationError, match="revoked"):
        subscription_extend(subscription_id=sub.pk, days=3)


# --- windows, suspend, revoke, expiry -------------------------------------------------------------------------


def test_resetting_chosen_windows_leaves_the_others(now):
    sub = SubscriptionFactory(starts_at=now)
    subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal("3"), now=now)
    subscription_windows_reset(subscription_id=sub.pk, kinds=["daily", "monthly"])
    sub.refresh_from_db()
    assert (sub.daily_usage_usd, sub.daily_window_start) == (Decimal(0), None)
    assert (sub.monthly_usage_usd, sub.monthly_window_start) == (Decimal(0), None)
    assert (sub.weekly_usage_usd, sub.weekly_window_start) == (Decimal(3), now)
    with pytest.raises(ValidationError):
        subscription_windows_reset(subscription_id=sub.pk, kinds=["hourly"])


def test_suspend_resume_and_revoke_move_between_the_right_states():
    sub = SubscriptionFactory()
    assert subscription_suspend(subscription_id=sub.pk).status == "suspended"
    with pytest.raises(ValidationError, match="Only active subscriptions can be suspended"):
        subscription_suspend(subscription_id=sub.pk)
    assert subscription_resume(subscription_id=sub.pk).status == "active"
    assert subscription_revoke(subscription_id=sub.pk).status == "revoked"
    with pytest.raises(ValidationError):
        subscription_revoke(subscription_id=sub.pk)


def test_the_tidy_up_job_expires_live_subscriptions_past_their_term(now):
    due = SubscriptionFactory(starts_at=now - 31 * DAY)
    suspended_due = SubscriptionFactory(starts_at=now - 31 * DAY, status="suspended")
    live = SubscriptionFactory(starts_at=now)
    assert subscription_expire_due(now=now) == 2
    statuses = dict(Subscription.objects.values_list("pk", "status"))
    assert statuses == {due.pk: "expired", suspended_due.pk: "expired", live.pk: "active"}


# --- pages ----------------------------------------------------------------------------------------------------


def test_the_list_shows_a_bar_per_window_with_expired_windows_as_zero(staff_client, now):
    group = SubscriptionGroupFactory(
        name="plus", daily_limit_usd=Decimal("10"), weekly_limit_usd=None, monthly_limit_usd=Decimal("0")
    )
    sub = SubscriptionFactory(group=group, user=UserFactory(email="sam@example.com"), starts_at=now - 3 * DAY)
    subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal("9"), now=now - 2 * DAY)
    subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal("8.5"), now=now)
    page = staff_client.get("/subscriptions/").content.decode()
    assert "sam@example.com" in page and "plus" in page
    assert re.search(r'<meter min="0" max="10\.0+" value="8\.50+"', page)  # today only: yesterday reset
    assert "$8.50" in page and "$17.50" in page  # daily, and weekly (no limit: no bar)
    assert "0: blocks all usage" in page  # a 0 limit
    assert "next reset" in page
    assert 'style="' not in page


def test_an_expired_window_reads_zero_on_the_page(staff_client, now):
    group = SubscriptionGroupFactory(daily_limit_usd=Decimal("10"))
    sub = SubscriptionFactory(group=group, starts_at=now - 3 * DAY)
    subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal("9"), now=now - 2 * DAY)
    page = staff_client.get("/subscriptions/").content.decode()
    assert re.search(r'<meter min="0" max="10\.0+" value="0"', page)
    assert "$9.00" in page  # the weekly and monthly windows still hold it


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "active"}, {"a@example.com"}),
        ({"status": "expired"}, {"b@example.com", "c@example.com"}),
        ({"status": "suspended"}, {"d@example.com"}),
        ({"expiring": "7"}, {"d@example.com"}),
        ({"q": "a@ex"}, {"a@example.com"}),
    ],
)
def test_the_list_filters(staff_client, now, query, expected):
    SubscriptionFactory(user=UserFactory(email="a@example.com"), starts_at=now)
    SubscriptionFactory(user=UserFactory(email="b@example.com"), starts_at=now - 60 * DAY, status="expired")
    SubscriptionFactory(user=UserFactory(email="c@example.com"), starts_at=now - 31 * DAY)  # past its term
    SubscriptionFactory(
        user=UserFactory(email="d@example.com"), starts_at=now - 25 * DAY, status="suspended"
    )  # 5 days left
    page = staff_client.get("/subscriptions/", query).content.decode()
    assert set(re.findall(r">([a-d]@example\.com)</a>", page)) == expected


def test_the_list_filters_by_group(staff_client):
    a, b = SubscriptionFactory(), SubscriptionFactory()
    page = staff_client.get("/subscriptions/", {"group": a.group.pk}).content.decode()
    assert a.user.email in page and b.user.email not in page


def test_the_subscription_list_runs_a_fixed_number_of_queries(
    staff_client, django_assert_max_num_queries, now
):
    groups = [
        SubscriptionGroupFactory(daily_limit_usd=Decimal("5"), timezone=tz) for tz in ("", "Asia/Tokyo")
    ]
    users = UserFactory.create_batch(150)
    for i in range(300):
        SubscriptionFactory(
            user=users[i % 150],
            group=groups[i // 150],
            starts_at=now - timedelta(days=i % 40),
            daily_usage_usd=Decimal("1"),
            daily_window_start=now - timedelta(hours=1),
            assigned_by=users[0],
        )
    # session + staff user + count + one page of rows (user, group, assigner joined) + the group filter.
    with django_assert_max_num_queries(5):
        response = staff_client.get("/subscriptions/", {"per_page": 300})
    assert response.status_code == 200 and response.content.decode().count("<meter") == 300


def test_assigning_one_user_through_the_page_opens_the_subscription(staff_client, staff_user):
    user = UserFactory()
    group = SubscriptionGroupFactory(default_validity_days=30)
    response = staff_client.post(
        "/subscriptions/assign", {"users": [user.pk], "group": group.pk, "days": "", "notes": "hello"}
    )
    sub = Subscription.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/subscriptions/{sub.pk}/"
    assert sub.term_days == 30 and sub.assigned_by == staff_user
    page = staff_client.get(response["Location"]).content.decode()
    assert page.count('data-cell="start" data-label="Window start">not started<') == 3
    assert page.count('data-cell="reset" data-label="Next reset">starts with the first request<') == 3
    assert "30 days" in page and "hello" in page and "1 new subscription, 0 extended" in page


def test_assigning_several_users_at_once(staff_client):
    group = SubscriptionGroupFactory()
    users = UserFactory.create_batch(3)
    SubscriptionFactory(user=users[0], group=group)
    response = staff_client.post(
        "/subscriptions/assign", {"users": [u.pk for u in users], "group": group.pk, "days": "14"}
    )
    assert response.status_code == 302 and response["Location"] == f"/subscriptions/?group={group.pk}"
    assert Subscription.objects.filter(group=group).count() == 3
    page = staff_client.get(response["Location"]).content.decode()
    assert "2 new subscriptions, 1 extended" in page


def test_the_assign_form_keeps_values_and_names_problems(staff_client):
    group = SubscriptionGroupFactory()
    page = staff_client.post(
        "/subscriptions/assign", {"group": group.pk, "days": "0", "notes": "kept"}
    ).content.decode()
    assert "This field is required." in page and "greater than or equal to 1" in page
    assert "kept</textarea>" in page and not Subscription.objects.exists()


def test_the_extend_dialog_names_the_expiry_and_refreshes_on_success(staff_client, now):
    sub = SubscriptionFactory(starts_at=now, expires_at=now + 10 * DAY)
    dialog = staff_client.get(f"/subscriptions/{sub.pk}/extend").content.decode()
    assert timezone.localtime(sub.expires_at).strftime("%Y-%m-%d %H:%M") in dialog
    response = staff_client.post(f"/subscriptions/{sub.pk}/extend", {"days": "5"})
    assert response.status_code == 204
    assert json.loads(response["HX-Trigger"])["subscriptions:changed"] is True
    sub.refresh_from_db()
    assert sub.term_days == 15


def test_the_extend_dialog_shows_the_service_error(staff_client, now):
    sub = SubscriptionFactory(starts_at=now, expires_at=now + 2 * DAY)
    response = staff_client.post(f"/subscriptions/{sub.pk}/extend", {"days": "-3"})
    assert response.status_code == 200 and "which is not in the future" in response.content.decode()
    assert 'value="-3"' in response.content.decode()


def test_the_reset_windows_dialog_lists_usage_and_resets_the_chosen_ones(staff_client, now):
    sub = SubscriptionFactory(starts_at=now)
    subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal("4.2"), now=now)
    dialog = staff_client.get(f"/subscriptions/{sub.pk}/reset-windows").content.decode()
    assert dialog.count("$4.20") == 3
    assert "Choose at least one window." in (
        staff_client.post(f"/subscriptions/{sub.pk}/reset-windows", {}).content.decode()
    )
    staff_client.post(f"/subscriptions/{sub.pk}/reset-windows", {"windows": ["weekly"]})
    sub.refresh_from_db()
    assert (sub.daily_usage_usd, sub.weekly_usage_usd) == (Decimal("4.2"), Decimal(0))


def test_suspending_and_revoking_through_the_dialogs(staff_client):
    sub = SubscriptionFactory()
    assert "Suspend" in staff_client.get(f"/subscriptions/{sub.pk}/status").content.decode()
    staff_client.post(f"/subscriptions/{sub.pk}/status")
    sub.refresh_from_db()
    assert sub.status == "suspended"
    assert "Resume" in staff_client.get(f"/subscriptions/{sub.pk}/status").content.decode()
    assert "cannot be extended" in staff_client.get(f"/subscriptions/{sub.pk}/revoke").content.decode()
    staff_client.post(f"/subscriptions/{sub.pk}/revoke")
    sub.refresh_from_db()
    assert sub.status == "revoked"
    summary = staff_client.get(f"/subscriptions/{sub.pk}/summary").content.decode()
    assert "Revoked" in summary and "Extend" not in summary and "<nav" not in summary


def test_an_ended_window_says_it_restarts_on_the_next_request_instead_of_a_reset_time(staff_client):
    now = timezone.now()
    group = SubscriptionGroupFactory(daily_limit_usd=Decimal("10"))
    sub = SubscriptionFactory(group=group, starts_at=now - timedelta(days=3))
    subscription_usage_charge(subscription_id=sub.pk, amount_usd=Decimal("2"), now=now - timedelta(days=2))
    page = staff_client.get(f"/subscriptions/{sub.pk}/").content.decode()
    daily = page[page.index('data-window="daily"') :]
    daily = daily[: daily.index("</tr>")]
    assert 'data-cell="start" data-label="Window start">ended<' in daily
    assert 'data-cell="reset" data-label="Next reset">restarts on the next request<' in daily
    assert ">$0.00</span>" in daily


@pytest.fixture
def ten_thousand_users(db):
    User.objects.bulk_create(
        User(email=f"customer{n:05d}@example.com", username=f"Customer {n}", password="!")
        for n in range(10_000)
    )


def test_the_assign_page_never_lists_every_user(
    staff_client, ten_thousand_users, django_assert_max_num_queries
):
    SubscriptionGroupFactory(name="Plus")
    # session, staff user, the subscription groups (twice: the select and the "none yet" check)
    with django_assert_max_num_queries(5):
        response = staff_client.get("/subscriptions/assign")
    page = response.content.decode()
    assert response.status_code == 200
    assert "customer0" not in page and len(page) < 30_000
    chosen = User.objects.get(email="customer04242@example.com")
    page = staff_client.get("/subscriptions/assign", {"user": chosen.pk}).content.decode()
    assert f'<input type="hidden" name="users" value="{chosen.pk}">' in page  # a preselected user


def test_the_user_picker_finds_users_among_ten_thousand_in_one_query(
    staff_client, ten_thousand_users, django_assert_max_num_queries
):
    chosen = User.objects.get(email="customer04242@example.com")
    with django_assert_max_num_queries(3):  # session, staff user, the matches
        body = staff_client.get("/users/picker", {"users_search": "customer0424"}).content.decode()
    assert body.count("data-pick-user=") == 10  # customer04240 … customer04249
    with django_assert_max_num_queries(3):
        body = staff_client.get(
            "/users/picker", {"users_search": "CUSTOMER04242", "users": [chosen.pk]}
        ).content.decode()
    assert "No user matches “CUSTOMER04242”." in body  # the chosen one is not offered twice
    body = staff_client.get("/users/picker", {"users_search": "customer"}).content.decode()
    assert body.count("data-pick-user=") == 20 and "More users match: type more of the email or name." in body
    body = staff_client.get("/users/picker", {"users_search": "Customer 77"}).content.decode()
    assert 'data-user-email="customer00077@example.com"' in body  # by name too
