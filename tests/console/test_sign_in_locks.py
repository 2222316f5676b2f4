"""Sign-in locks: the console page that lists and lifts them, and `manage.py unlock_sign_in`."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from accounts.models import SignInCounter
from tests.factories import StaffFactory

pytestmark = pytest.mark.django_db


def sign_in(client, email: str, password: str, ip: str = "10.0.0.1"):
    return client.post("/login/", {"username": email, "password": password}, REMOTE_ADDR=ip)


def lock_email(client, email: str, settings, ip: str = "10.0.0.1") -> None:
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        sign_in(client, email, "wrong", ip=ip)


def counter(kind: str, value: str, attempts: int, *, minutes_left: float = 10) -> SignInCounter:
    now = timezone.now()
    return SignInCounter.objects.create(
        kind=kind,
        value=value,
        attempts=attempts,
        window_ends_at=now + timedelta(minutes=minutes_left),
        last_attempt_at=now,
    )


def test_the_page_lists_locked_emails_and_throttled_addresses_only(staff_client, settings):
    counter("username", "locked@example.com", settings.LOGIN_FAILURE_LIMIT)
    counter("ip", "203.0.113.7", settings.LOGIN_IP_FAILURE_LIMIT + 3)
    counter("username", "below-limit@example.com", settings.LOGIN_FAILURE_LIMIT - 1)
    counter("username", "lapsed@example.com", settings.LOGIN_FAILURE_LIMIT, minutes_left=-1)
    page = staff_client.get("/sign-in-locks/").content.decode()
    assert "locked@example.com" in page and "Email locked" in page
    assert "203.0.113.7" in page and "Address throttled" in page
    assert "below-limit@example.com" not in page
    assert "lapsed@example.com" not in page


def test_the_page_says_how_long_each_lock_lasts(staff_client, settings):
    counter("username", "locked@example.com", settings.LOGIN_FAILURE_LIMIT, minutes_left=6.5)
    assert "(in 7 minutes)" in staff_client.get("/sign-in-locks/").content.decode()


def test_an_empty_page_says_nothing_is_locked(staff_client):
    assert "No sign-in is locked" in staff_client.get("/sign-in-locks/").content.decode()


def test_the_console_menu_links_to_the_page(staff_client):
    assert 'href="/sign-in-locks/"' in staff_client.get("/").content.decode()


@pytest.fixture
def admin_client(db):
    admin = Client()
    admin.force_login(StaffFactory())
    return admin


def test_unlocking_an_email_lets_its_owner_sign_in_again(
    client, admin_client, staff_user, staff_password, settings
):
    lock_email(client, staff_user.email, settings)
    assert "Too many failed" in sign_in(client, staff_user.email, staff_password).content.decode()
    lock = SignInCounter.objects.get(kind="username", value=staff_user.email)
    response = admin_client.post(f"/sign-in-locks/{lock.pk}/unlock")
    assert response.status_code == 302 and response["Location"] == "/sign-in-locks/"
    assert not SignInCounter.objects.filter(kind="username").exists()
    assert f"Unlocked {staff_user.email}." in admin_client.get("/sign-in-locks/").content.decode()
    assert sign_in(client, staff_user.email, staff_password).status_code == 302


def test_unlocking_an_address_lifts_its_throttle(client, admin_client, staff_user, staff_password, settings):
    for attempt in range(settings.LOGIN_IP_FAILURE_LIMIT):
        sign_in(client, f"nobody{attempt}@example.com", "wrong", ip="10.9.9.9")
    sign_in(client, staff_user.email, "typo", ip="10.9.9.9")
    assert "Too many" in sign_in(client, staff_user.email, staff_password, ip="10.9.9.9").content.decode()
    lock = SignInCounter.objects.get(kind="ip")
    admin_client.post(f"/sign-in-locks/{lock.pk}/unlock")
    assert sign_in(client, staff_user.email, staff_password, ip="10.9.9.9").status_code == 302


def test_unlocking_over_htmx_refreshes_the_table_and_says_so(staff_client, settings):
    lock = counter("username", "locked@example.com", settings.LOGIN_FAILURE_LIMIT)
    response = staff_client.post(f"/sign-in-locks/{lock.pk}/unlock", headers={"HX-Request": "true"})
    assert response.status_code == 204
    events = json.loads(response["HX-Trigger"])
    assert events["sign-in-locks:changed"] is True
    assert events["toast"]["message"] == "Unlocked locked@example.com."
    table = staff_client.get("/sign-in-locks/", headers={"HX-Request": "true"}).content.decode()
    assert table.lstrip().startswith('<div id="table"') and "locked@example.com" not in table


def test_unlocking_a_lock_that_already_ended_says_so(staff_client):
    response = staff_client.post("/sign-in-locks/999999/unlock", follow=True)
    assert "That lock had already ended." in response.content.decode()


def test_unlock_needs_a_post(staff_client, settings):
    lock = counter("username", "locked@example.com", settings.LOGIN_FAILURE_LIMIT)
    assert staff_client.get(f"/sign-in-locks/{lock.pk}/unlock").status_code == 405
    assert SignInCounter.objects.filter(pk=lock.pk).exists()


def test_the_page_runs_a_fixed_number_of_queries(staff_client, settings, django_assert_max_num_queries):
    for n in range(60):
        counter("username", f"locked{n}@example.com", settings.LOGIN_FAILURE_LIMIT)
        counter("ip", f"203.0.113.{n}", settings.LOGIN_IP_FAILURE_LIMIT)
    with django_assert_max_num_queries(6):
        page = staff_client.get("/sign-in-locks/").content.decode()
    assert page.count("Unlock<span") == 120


# -- manage.py unlock_sign_in -----------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("unlock_sign_in", *args, stdout=out)
    return out.getvalue()


def test_the_command_lists_the_current_locks(settings):
    counter("username", "locked@example.com", settings.LOGIN_FAILURE_LIMIT, minutes_left=6.5)
    counter("ip", "203.0.113.7", settings.LOGIN_IP_FAILURE_LIMIT)
    out = run("--list")
    assert f"email locked@example.com: {settings.LOGIN_FAILURE_LIMIT} failed attempts" in out
    assert "(in 7 min)" in out
    assert "address 203.0.113.7" in out
    assert SignInCounter.objects.count() == 2


def test_the_command_unlocks_emails_in_any_case_and_addresses(settings):
    counter("username", "locked@example.com", settings.LOGIN_FAILURE_LIMIT)
    counter("ip", "203.0.113.7", settings.LOGIN_IP_FAILURE_LIMIT)
    counter("username", "other@example.com", settings.LOGIN_FAILURE_LIMIT)
    out = run("Locked@Example.com", "203.0.113.7", "nobody@example.com")
    assert "Unlocked Locked@Example.com." in out and "Unlocked 203.0.113.7." in out
    assert "Nothing to unlock for nobody@example.com." in out
    assert list(SignInCounter.objects.values_list("value", flat=True)) == ["other@example.com"]


def test_the_command_unlocks_everything(settings):
    counter("username", "locked@example.com", settings.LOGIN_FAILURE_LIMIT)
    counter("ip", "203.0.113.7", 1)
    assert "2 counters" in run("--all")
    assert not SignInCounter.objects.exists()


def test_the_command_asks_what_to_unlock():
    with pytest.raises(CommandError, match="--all, or --list"):
        run()


def test_the_lockout_message_points_to_the_unlock(client, staff_user, settings):
    lock_email(client, staff_user.email, settings)
    page = sign_in(client, staff_user.email, "anything").content.decode()
    assert "Sign-in locks" in page and "manage.py unlock_sign_in" in page
