"""Simultaneous wrong guesses for one email: the attempt is counted before the password is checked."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import authenticate
from django.test import Client
from django.utils import timezone

from accounts.models import SignInCounter
from console import throttle
from tests.concurrency import run_in_threads
from tests.hashers import COUNTING_HASHERS, CountingMD5PasswordHasher

pytestmark = pytest.mark.django_db(transaction=True)

GUESSES = 40
# What a real password hasher costs, roughly: long enough for racing requests to overlap.
HASH_SECONDS = 0.05


@pytest.fixture
def counted_checks(settings):
    settings.PASSWORD_HASHERS = COUNTING_HASHERS
    CountingMD5PasswordHasher.reset(delay_seconds=HASH_SECONDS)
    yield CountingMD5PasswordHasher
    CountingMD5PasswordHasher.reset()


def test_forty_simultaneous_wrong_guesses_check_at_most_the_limit(staff_user, counted_checks):
    def guess(index: int) -> None:
        # Each guess from its own address, so only the email's counter can stop them.
        data = {"username": staff_user.email, "password": f"guess-{index}"}
        response = Client().post("/login/", data, REMOTE_ADDR=f"10.1.{index}.1")
        assert response.status_code == 200

    assert run_in_threads(GUESSES, guess) == []
    assert 1 <= counted_checks.checks <= settings.LOGIN_FAILURE_LIMIT
    assert SignInCounter.objects.get(kind="username").attempts == GUESSES


def test_control_checking_before_counting_lets_more_guesses_through(staff_user, counted_checks):
    """The old order, written here: read the count, check the password, count the failure."""

    def locked() -> bool:
        return SignInCounter.objects.filter(
            kind="username",
            value=staff_user.email,
            attempts__gte=settings.LOGIN_FAILURE_LIMIT,
            window_ends_at__gt=timezone.now(),
        ).exists()

    def guess(index: int) -> None:
        if locked():
            return
        if authenticate(None, username=staff_user.email, password=f"guess-{index}") is None:
            throttle.attempt_begin(username=staff_user.email, ip=f"10.1.{index}.1")

    assert run_in_threads(GUESSES, guess) == []
    assert counted_checks.checks > settings.LOGIN_FAILURE_LIMIT
