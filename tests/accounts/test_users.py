from __future__ import annotations

import json
from decimal import Decimal

import pytest

from accounts.models import BalanceHistory, User
from tests.factories import GroupFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_the_user_list_shows_users_and_filters_them(staff_client):
    UserFactory(email="alice@example.com", username="Alice")
    UserFactory(email="bob@example.com", username="Bob", status=User.Status.DISABLED)
    page = staff_client.get("/users/").content.decode()
    assert "alice@example.com" in page and "bob@example.com" in page

    page = staff_client.get("/users/", {"q": "alic"}).content.decode()
    assert "alice@example.com" in page and "bob@example.com" not in page

    page = staff_client.get("/users/", {"status": "disabled"}).content.decode()
    assert "bob@example.com" in page and "alice@example.com" not in page


def test_an_htmx_request_gets_only_the_table(staff_client):
    UserFactory(email="alice@example.com")
    response = staff_client.get("/users/", {"q": "alice"}, headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="table"')
    assert "<nav" not in body and "alice@example.com" in body
    assert "HX-Request" in response["Vary"]


def test_a_history_restore_request_gets_the_whole_page(staff_client):
    response = staff_client.get(
        "/users/", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )
    assert "<nav" in response.content.decode()


def test_the_user_list_sorts_by_balance(staff_client):
    UserFactory(email="poor@example.com", balance=Decimal("1"))
    UserFactory(email="rich@example.com", balance=Decimal("900"))
    page = staff_client.get("/users/", {"sort": "-balance"}).content.decode()
    assert page.index("rich@example.com") < page.index("poor@example.com")
    page = staff_client.get("/users/", {"sort": "balance"}).content.decode()
    assert page.index("poor@example.com") < page.index("rich@example.com")


def test_the_user_list_runs_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    UserFactory.create_batch(200)
    # session + staff user + count + page of rows (with key counts annotated)
    with django_assert_max_num_queries(6):
        response = staff_client.get("/users/", {"per_page": 200})
    assert response.status_code == 200


def test_staff_can_create_a_user_with_an_initial_balance(staff_client, staff_user):
    response = staff_client.post(
        "/users/new",
        {
            "email": "New.Person@Example.com",
            "username": "New Person",
            "console_access": "none",
            "status": "active",
            "concurrency": 5,
            "rpm_limit": 0,
            "initial_balance": "12.5",
            "notes": "",
        },
    )
    user = User.objects.get(email="new.person@example.com")
    assert response.status_code == 302 and response["Location"] == f"/users/{user.pk}/"
    assert user.balance == Decimal("12.5")
    entry = user.balance_history.get()
    assert (entry.operation, entry.amount, entry.changed_by) == ("add", Decimal("12.5"), staff_user)
    assert not user.has_usable_password()


def test_the_create_form_keeps_values_and_names_each_problem(staff_client):
    UserFactory(email="taken@example.com")
    response = staff_client.post(
        "/users/new",
        {
            "email": "taken@example.com",
            "username": "Kept Name",
            "status": "active",
            "concurrency": "-1",
            "rpm_limit": 0,
            "console_access": "viewer",
        },
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "Another user already has this email address." in page
    assert "Staff need a password to sign in to the console." in page
    assert "Ensure this value is greater than or equal to 0." in page
    assert 'value="Kept Name"' in page
    assert User.objects.filter(email="taken@example.com").count() == 1


def test_editing_a_user_saves_fields_and_allowed_groups(staff_client):
    user = UserFactory(email="edit@example.com")
    exclusive = GroupFactory(is_exclusive=True)
    response = staff_client.post(
        f"/users/{user.pk}/",
        {
            "email": "edit@example.com",
            "username": "Edited",
            "console_access": "none",
            "status": "active",
            "concurrency": 9,
            "rpm_limit": 30,
            "allowed_groups": [exclusive.pk],
            "notes": "VIP",
        },
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert (user.username, user.concurrency, user.rpm_limit, user.notes) == ("Edited", 9, 30, "VIP")
    assert list(user.allowed_groups.all()) == [exclusive]


def test_editing_never_touches_the_balance(staff_client):
    user = UserFactory(balance=Decimal("7"))
    staff_client.post(
        f"/users/{user.pk}/",
        {
            "email": user.email,
            "username": "x",
            "console_access": "none",
            "status": "active",
            "concurrency": 5,
            "rpm_limit": 0,
            "balance": "999",
        },
    )
    user.refresh_from_db()
    assert user.balance == Decimal("7")


def test_disabling_a_user_goes_through_a_confirm_dialog(staff_client):
    user = UserFactory()
    dialog = staff_client.get(f"/users/{user.pk}/status").content.decode()
    assert "<dialog" in dialog and "Disable" in dialog
    response = staff_client.post(f"/users/{user.pk}/status", headers={"HX-Request": "true"})
    assert response.status_code == 204
    assert json.loads(response["HX-Trigger"])["dialog:close"] is True
    user.refresh_from_db()
    assert user.status == "disabled" and not user.is_active
    staff_client.post(f"/users/{user.pk}/status")
    user.refresh_from_db()
    assert user.status == "active" and user.is_active


def test_staff_cannot_disable_themselves(staff_client, staff_user):
    staff_client.post(f"/users/{staff_user.pk}/status")
    staff_user.refresh_from_db()
    assert staff_user.status == "active"


@pytest.mark.parametrize(
    ("operation", "amount", "expected"),
    [("add", "2.5", "12.5"), ("subtract", "2.5", "7.5"), ("set", "3", "3"), ("set", "0", "0")],
)
def test_the_balance_dialog_applies_each_operation_and_records_it(staff_client, operation, amount, expected):
    user = UserFactory(balance=Decimal("10"))
    response = staff_client.post(
        f"/users/{user.pk}/balance", {"operation": operation, "amount": amount, "note": "support ticket 42"}
    )
    assert response.status_code == 204
    events = json.loads(response["HX-Trigger"])
    assert events["balance:changed"] is True and expected in events["toast"]["message"].replace(",", "")
    user.refresh_from_db()
    assert user.balance == Decimal(expected)
    entry = user.balance_history.get()
    assert (entry.operation, entry.balance_before, entry.balance_after, entry.note) == (
        operation,
        Decimal("10"),
        Decimal(expected),
        "support ticket 42",
    )


def test_a_subtraction_below_zero_is_refused_in_the_dialog(staff_client):
    user = UserFactory(balance=Decimal("1"))
    response = staff_client.post(
        f"/users/{user.pk}/balance", {"operation": "subtract", "amount": "5", "note": "x"}
    )
    page = response.content.decode()
    assert response.status_code == 200 and "would make it negative" in page
    assert 'value="5"' in page
    user.refresh_from_db()
    assert user.balance == Decimal("1") and not BalanceHistory.objects.exists()


def test_the_balance_dialog_requires_a_note_and_a_positive_amount(staff_client):
    user = UserFactory()
    page = staff_client.post(
        f"/users/{user.pk}/balance", {"operation": "add", "amount": "-1"}
    ).content.decode()
    assert "This field is required." in page
    assert "Ensure this value is greater than or equal to 0." in page
    assert not BalanceHistory.objects.exists()


def test_the_user_page_lists_the_balance_history(staff_client):
    user = UserFactory(balance=Decimal("0"))
    staff_client.post(
        f"/users/{user.pk}/balance", {"operation": "add", "amount": "20", "note": "first top-up"}
    )
    staff_client.post(f"/users/{user.pk}/balance", {"operation": "subtract", "amount": "5", "note": "refund"})
    page = staff_client.get(f"/users/{user.pk}/").content.decode()
    assert page.index("refund") < page.index("first top-up")  # newest first
    assert "$15.00" in page
    partial = staff_client.get(f"/users/{user.pk}/summary").content.decode()
    assert "refund" in partial and "<nav" not in partial


def test_a_group_rate_override_is_set_replaced_and_removed(staff_client):
    user = UserFactory()
    group = GroupFactory(name="claude-pool", rate_multiplier=Decimal("1.5"))
    page = staff_client.post(
        f"/users/{user.pk}/rates", {"group": group.pk, "rate_multiplier": "0.8"}
    ).content.decode()
    assert "claude-pool" in page and "×0.8" in page and "<nav" not in page
    staff_client.post(f"/users/{user.pk}/rates", {"group": group.pk, "rate_multiplier": "1.2"})
    rate = user.group_rates.get()
    assert rate.rate_multiplier == Decimal("1.2")
    staff_client.post(f"/users/{user.pk}/rates/{rate.pk}/remove")
    assert not user.group_rates.exists()


def test_a_zero_rate_override_is_refused_with_the_value_kept(staff_client):
    user = UserFactory()
    group = GroupFactory()
    page = staff_client.post(
        f"/users/{user.pk}/rates", {"group": group.pk, "rate_multiplier": "0"}
    ).content.decode()
    assert "Ensure this value is greater than or equal to 0.000001." in page
    assert 'value="0"' in page
    assert not user.group_rates.exists()


def test_the_status_badge_carries_the_stored_value_as_its_class(staff_client):
    UserFactory(status=User.Status.DISABLED)
    page = staff_client.get("/users/", {"status": "disabled"}).content.decode()
    assert '<span class="badge badge-status-disabled">Disabled</span>' in page


def test_a_refused_new_user_form_keeps_the_password_typed_into_it(staff_client):
    response = staff_client.post(
        "/users/new",
        {
            "email": "not-an-email",
            "password": "a-long-enough-password-1",
            "concurrency": "5",
            "rpm_limit": "0",
            "console_access": "none",
            "status": "active",
        },
    )
    page = response.content.decode()
    assert "Enter a valid email address." in page
    assert 'value="a-long-enough-password-1"' in page
    assert "no-store" in response["Cache-Control"]
