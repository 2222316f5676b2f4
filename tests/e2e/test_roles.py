"""Staff roles in real Chromium: an admin gives console access on the user form, the users list
shows the role, an operator and a viewer see only what they may use (docs/console.md#roles)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from accounts.models import APIKey, User
from accounts.roles import ConsoleRole
from tests.factories import APIKeyFactory, StaffFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, live_server, user, password) -> None:
    page.goto("/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/")


@pytest.mark.parametrize("width", [1280, 375])
def test_an_admin_makes_a_customer_an_operator_and_the_list_shows_it(staff_page, width, screenshot):
    customer = UserFactory(email="dana@example.com", username="Dana")
    page = staff_page
    page.set_viewport_size({"width": width, "height": 860})
    page.goto(f"/users/{customer.pk}/")
    access = page.get_by_role("group", name="Console access")
    expect(access.get_by_role("radio", name="No access")).to_be_checked()
    access.get_by_role("radio", name="Operator").check()
    screenshot(page, "user-form")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status").first).to_contain_text("Saved dana@example.com.")
    customer.refresh_from_db()
    assert (customer.is_staff, customer.console_role) == (True, ConsoleRole.OPERATOR)
    expect(
        page.get_by_role("group", name="Console access").get_by_role("radio", name="Operator")
    ).to_be_checked()

    page.goto("/users/?access=operator")
    table = page.locator("#user-table")
    expect(table).to_contain_text("dana@example.com")
    expect(table.locator(".role-badge.role-operator")).to_have_count(1)
    screenshot(page, "users-list")
    assert page.console_errors == []


def test_an_admin_cannot_change_their_own_access(staff_page, staff_user):
    page = staff_page
    page.goto(f"/users/{staff_user.pk}/")
    access = page.get_by_role("group", name="Console access")
    expect(access).to_contain_text("You cannot change your own console access; another admin can.")
    for radio in access.get_by_role("radio").all():
        expect(radio).to_be_disabled()


@pytest.mark.parametrize("width", [1280, 375])
def test_an_operator_reads_a_staff_member_and_is_offered_nothing(
    page, live_server, staff_password, width, screenshot
):
    operator = StaffFactory(console_role=ConsoleRole.OPERATOR)
    admin = StaffFactory(console_role=ConsoleRole.ADMIN, email="boss@tollgate.test")
    page.set_viewport_size({"width": width, "height": 860})
    sign_in(page, live_server, operator, staff_password)
    page.goto(f"/users/{admin.pk}/")
    expect(page.get_by_role("note")).to_contain_text("Read only: only an admin can change a staff member.")
    expect(page.get_by_role("button", name="Adjust balance")).to_have_count(0)
    expect(page.get_by_role("button", name="Save changes")).to_have_count(0)
    expect(page.get_by_label("Notes")).to_be_disabled()
    screenshot(page, "staff-member")
    # Their own record is a staff member's too.
    page.goto(f"/users/{operator.pk}/")
    expect(page.get_by_role("button", name="Adjust balance")).to_have_count(0)
    assert page.console_errors == []


def test_an_operator_uses_a_key_dialog_but_gets_no_credentials_or_prices(page, live_server, staff_password):
    operator = StaffFactory(console_role=ConsoleRole.OPERATOR)
    key = APIKeyFactory(name="ci-runner")
    sign_in(page, live_server, operator, staff_password)
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    page.goto("/keys/")
    page.get_by_role("button", name="Actions for ci-runner").click()
    page.get_by_role("button", name="Disable…").click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_role("button", name="Disable").click()
    expect(dialog).to_have_count(0)
    assert APIKey.objects.get(pk=key.pk).status == APIKey.Status.DISABLED
    page.goto("/accounts/")
    expect(page.get_by_role("link", name="New account")).to_have_count(0)
    page.goto("/channels/")
    expect(page.get_by_role("link", name="New channel")).to_have_count(0)
    assert page.console_errors == []


def test_a_stale_button_a_viewer_should_not_have_says_why_in_a_toast(page, live_server, staff_password):
    # The page was rendered while they were an operator; the role changed since.
    viewer = StaffFactory(console_role=ConsoleRole.OPERATOR)
    key = APIKeyFactory(name="ci-runner")
    sign_in(page, live_server, viewer, staff_password)
    page.goto("/keys/")
    User.objects.filter(pk=viewer.pk).update(console_role=ConsoleRole.VIEWER)
    page.get_by_role("button", name="Actions for ci-runner").click()
    page.get_by_role("button", name="Delete…").click()
    expect(page.locator("#toast-host")).to_contain_text(
        "Only an operator or admin can open this page; you are a viewer."
    )
    expect(page.locator("dialog[open]")).to_have_count(0)
    assert APIKey.objects.filter(pk=key.pk).exists()
