from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import SignInCounter
from tests.factories import StaffFactory, UserFactory
from tests.hashers import COUNTING_HASHERS, CountingMD5PasswordHasher

pytestmark = pytest.mark.django_db


def sign_in(client, email: str, password: str, ip: str = "10.0.0.1"):
    return client.post("/login/", {"username": email, "password": password}, REMOTE_ADDR=ip)


def _errors(page: str) -> list[str]:
    return re.findall(r'class="[^"]*alert[^"]*"[^>]*>(.*?)</', page, re.S)


def test_staff_sign_in_lands_on_the_dashboard(client, staff_user, staff_password):
    response = sign_in(client, staff_user.email, staff_password)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_email_is_case_insensitive_at_sign_in(client, staff_user, staff_password):
    response = sign_in(client, staff_user.email.upper(), staff_password)
    assert response.status_code == 302


def test_a_wrong_password_says_so(client, staff_user):
    response = sign_in(client, staff_user.email, "wrong")
    assert response.status_code == 200
    assert "That email and password do not match a staff account." in response.content.decode()


def test_a_right_password_without_staff_gets_the_same_answer_as_a_wrong_one(client, staff_password):
    # Otherwise the form would confirm which customers' passwords are right.
    customer = UserFactory()
    right = sign_in(client, customer.email, staff_password).content.decode()
    wrong = sign_in(client, customer.email, "wrong-password").content.decode()
    assert "That email and password do not match a staff account." in right
    assert "not allowed" not in right
    assert _errors(right) == _errors(wrong)
    assert "_auth_user_id" not in client.session


def test_an_inactive_staff_member_gets_the_same_answer_as_a_wrong_password(client, staff_password):
    retired = StaffFactory(is_active=False)
    response = sign_in(client, retired.email, staff_password)
    assert "That email and password do not match a staff account." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_repeated_failures_lock_the_username_out(client, staff_user, staff_password, settings):
    for attempt in range(settings.LOGIN_FAILURE_LIMIT):
        sign_in(client, staff_user.email, "wrong", ip=f"10.0.1.{attempt}")
    # Even the right password is refused now, from a fresh IP.
    response = sign_in(client, staff_user.email, staff_password, ip="10.0.2.1")
    assert response.status_code == 200
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_locked_email_is_refused_without_checking_its_password(
    client, staff_user, staff_password, settings
):
    settings.PASSWORD_HASHERS = COUNTING_HASHERS
    CountingMD5PasswordHasher.reset()
    for _ in range(settings.LOGIN_FAILURE_LIMIT + 10):
        sign_in(client, staff_user.email, "wrong")
    assert CountingMD5PasswordHasher.checks == settings.LOGIN_FAILURE_LIMIT


def test_the_lockout_message_says_how_many_minutes_are_left(client, staff_user, staff_password, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        sign_in(client, staff_user.email, "wrong")
    counter = SignInCounter.objects.get(kind="username", value=staff_user.email)
    # The lock lasts a full window from the failure that reached the limit.
    window = timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)
    assert abs(counter.window_ends_at - (timezone.now() + window)) < timedelta(seconds=30)
    page = sign_in(client, staff_user.email, staff_password).content.decode()
    assert f"sign-in is locked for {settings.LOGIN_FAILURE_WINDOW_SECONDS // 60} more minutes" in page
    SignInCounter.objects.filter(pk=counter.pk).update(
        window_ends_at=timezone.now() + timedelta(minutes=6, seconds=30)
    )
    page = sign_in(client, staff_user.email, staff_password).content.decode()
    assert "sign-in is locked for 7 more minutes" in page
    SignInCounter.objects.filter(pk=counter.pk).update(window_ends_at=timezone.now() + timedelta(seconds=20))
    page = sign_in(client, staff_user.email, staff_password).content.decode()
    assert "sign-in is locked for 1 more minute." in page
    assert "Sign-in locks" in page  # where an administrator lifts it


def test_a_lock_ends_when_its_window_has_passed(client, staff_user, staff_password, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        sign_in(client, staff_user.email, "wrong")
    SignInCounter.objects.update(window_ends_at=timezone.now() - timedelta(seconds=1))
    assert sign_in(client, staff_user.email, staff_password).status_code == 302


def test_a_successful_sign_in_forgives_earlier_failures(client, staff_user, staff_password, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        sign_in(client, staff_user.email, "wrong")
    assert sign_in(client, staff_user.email, staff_password).status_code == 302
    client.logout()
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        sign_in(client, staff_user.email, "wrong")
    assert sign_in(client, staff_user.email, staff_password).status_code == 302


def throttle_address(client, settings, ip: str) -> None:
    for attempt in range(settings.LOGIN_IP_FAILURE_LIMIT):
        sign_in(client, f"nobody{attempt}@example.com", "wrong", ip=ip)


def test_a_throttled_address_cannot_keep_guessing_an_email(client, staff_user, staff_password, settings):
    throttle_address(client, settings, "10.9.9.9")
    # One guess at an email with no failures is still checked...
    assert "do not match" in sign_in(client, staff_user.email, "wrong", ip="10.9.9.9").content.decode()
    # ...and from then on that email is refused from this address, right password or not.
    response = sign_in(client, staff_user.email, staff_password, ip="10.9.9.9")
    assert "Too many failed sign-in attempts" in response.content.decode()
    # The same user from another address is still welcome.
    assert sign_in(client, staff_user.email, staff_password, ip="10.9.9.10").status_code == 302


def test_a_throttled_address_cannot_lock_out_staff_who_have_not_failed(client, settings, staff_password):
    # Many staff behind one address (an office, or a proxy that is not in TRUSTED_PROXIES).
    colleagues = StaffFactory.create_batch(3)
    throttle_address(client, settings, "10.9.9.9")
    throttle_address(client, settings, "10.9.9.9")
    for colleague in colleagues:
        assert sign_in(client, colleague.email, staff_password, ip="10.9.9.9").status_code == 302
        client.logout()


def test_behind_a_trusted_proxy_each_client_is_counted_on_its_own(
    client, staff_user, staff_password, settings
):
    settings.TRUSTED_PROXIES = ["10.0.0.5"]

    def through_proxy(email, password, client_address):
        data = {"username": email, "password": password}
        return client.post("/login/", data, REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR=client_address)

    for attempt in range(settings.LOGIN_IP_FAILURE_LIMIT):
        through_proxy(f"nobody{attempt}@example.com", "wrong", "203.0.113.7")
    assert SignInCounter.objects.get(kind="ip").value == "203.0.113.7"
    # The attacker's address is throttled; a colleague behind the same proxy is not.
    through_proxy(staff_user.email, "wrong", "203.0.113.7")
    assert "Too many" in through_proxy(staff_user.email, staff_password, "203.0.113.7").content.decode()
    assert through_proxy(staff_user.email, staff_password, "198.51.100.4").status_code == 302


def test_sign_out_needs_a_post_and_ends_the_session(staff_client):
    assert staff_client.post("/logout/").status_code == 302
    assert staff_client.get("/").status_code == 302


def test_password_change_page_renders_for_staff(staff_client):
    response = staff_client.get("/password/")
    assert response.status_code == 200
    assert "New password" in response.content.decode()


# -- Django admin signs in through the same throttled form ------------------------------------------


def test_the_django_admin_sends_visitors_to_the_console_sign_in(client):
    response = client.get("/django-admin/", follow=True)
    assert response.redirect_chain[-1][0] == "/login/?next=/django-admin/"
    assert "Sign in" in response.content.decode()


def test_passwords_posted_to_the_admin_login_are_never_checked(client, staff_user, staff_password, settings):
    settings.PASSWORD_HASHERS = COUNTING_HASHERS
    CountingMD5PasswordHasher.reset()
    for _ in range(settings.LOGIN_FAILURE_LIMIT * 3):
        data = {"username": staff_user.email, "password": "wrong"}
        response = client.post("/django-admin/login/?next=/django-admin/", data)
        assert response.status_code == 302
        assert response["Location"] == "/login/?next=/django-admin/"
    # Not even the right password opens a session there.
    client.post("/django-admin/login/", {"username": staff_user.email, "password": staff_password})
    assert "_auth_user_id" not in client.session
    assert CountingMD5PasswordHasher.checks == 0


def test_staff_reach_the_admin_after_signing_in_through_the_console(client, staff_user, staff_password):
    data = {"username": staff_user.email, "password": staff_password, "next": "/django-admin/"}
    response = client.post("/login/", data, REMOTE_ADDR="10.0.0.1")
    assert response["Location"] == "/django-admin/"
    assert client.get("/django-admin/").status_code == 200


def test_a_signed_in_customer_gets_the_sign_in_form_not_a_redirect_loop(client, customer):
    client.force_login(customer)
    assert client.get("/login/?next=/django-admin/").status_code == 200
    assert client.get("/django-admin/", follow=True).status_code == 200


def test_the_embedded_default_counts_and_locks_on_sqlite(tmp_path):
    # The count is one INSERT … ON CONFLICT … RETURNING, run as is on SQLite too.
    from tests.test_settings import manage

    env = {"TOLLGATE_VAR_DIR": str(tmp_path)}
    assert manage("migrate", "--noinput", env=env).returncode == 0
    script = (
        "from console import throttle;"
        "tries = [throttle.attempt_begin(username='A@x.com', ip='10.0.0.1') for _ in range(7)];"
        "print(*[t.refused for t in tries], tries[-1].minutes_left, throttle.lockout_list().count());"
        "throttle.lockout_lift(kind='username', value='a@x.com', actor=None);"
        "print(throttle.attempt_begin(username='a@x.com', ip='10.0.0.2').refused)"
    )
    result = manage("shell", "--no-imports", "-c", script, env=env)
    assert result.stdout.split() == ["False"] * 5 + ["True", "True", "15", "1", "False"], result.stderr
