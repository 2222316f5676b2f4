from __future__ import annotations

import pytest

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def sign_in(client, email: str, password: str, ip: str = "10.0.0.1"):
    return client.post("/login/", {"username": email, "password": password}, REMOTE_ADDR=ip)


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


def test_non_staff_cannot_sign_in(client, staff_password):
    customer = UserFactory()
    response = sign_in(client, customer.email, staff_password)
    assert response.status_code == 200
    assert "not allowed to use the console" in response.content.decode()


def test_repeated_failures_lock_the_username_out(client, staff_user, staff_password, settings):
    for attempt in range(settings.LOGIN_FAILURE_LIMIT):
        sign_in(client, staff_user.email, "wrong", ip=f"10.0.1.{attempt}")
    # Even the right password is refused now, from a fresh IP.
    response = sign_in(client, staff_user.email, staff_password, ip="10.0.2.1")
    assert response.status_code == 200
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_repeated_failures_lock_the_ip_out_for_every_username(client, staff_user, staff_password, settings):
    for attempt in range(settings.LOGIN_FAILURE_LIMIT):
        sign_in(client, f"nobody{attempt}@example.com", "wrong", ip="10.9.9.9")
    response = sign_in(client, staff_user.email, staff_password, ip="10.9.9.9")
    assert "Too many failed sign-in attempts" in response.content.decode()
    # The same user from another address is still welcome.
    assert sign_in(client, staff_user.email, staff_password, ip="10.9.9.10").status_code == 302


def test_failures_below_the_limit_do_not_lock(client, staff_user, staff_password, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        sign_in(client, staff_user.email, "wrong")
    assert sign_in(client, staff_user.email, staff_password).status_code == 302


def test_sign_out_needs_a_post_and_ends_the_session(staff_client):
    assert staff_client.post("/logout/").status_code == 302
    assert staff_client.get("/").status_code == 302


def test_password_change_page_renders_for_staff(staff_client):
    response = staff_client.get("/password/")
    assert response.status_code == 200
    assert "New password" in response.content.decode()
