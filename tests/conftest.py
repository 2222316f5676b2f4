"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.factories import STAFF_PASSWORD, StaffFactory, UserFactory

pytest_plugins = ["tests.browser", "tests.fake_upstream"]

# Two shared cores under a full suite make per-example timings meaningless:
# properties are judged on results, never on speed (benchmarks live in bench/).
hypothesis_settings.register_profile(
    "tollgate", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
hypothesis_settings.load_profile("tollgate")


@pytest.fixture(autouse=True)
def _clear_cache():
    # The sign-in throttle and future auth snapshots live in the cache.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def staff_user(db):
    return StaffFactory()


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def customer(db):
    return UserFactory()


@pytest.fixture
def staff_password() -> str:
    return STAFF_PASSWORD


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2 at full strength costs ~0.3 s per user on this machine; tests make hundreds.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def psycopg_rewrites(monkeypatch) -> list[bytes]:
    """Each statement text psycopg turns from `%(name)s` into PostgreSQL's `$1…` in Python for
    server-side binding (its cached rewrite and the uncached one it uses for a text over 4096
    characters), as it is sent: a statement sent in PostgreSQL's own form is not in the list."""
    from psycopg import _queries

    rewritten: list[bytes] = []

    def counted(rewrite):
        def rewrite_counted(query: bytes, *args):
            rewritten.append(query)
            return rewrite(query, *args)

        return rewrite_counted

    monkeypatch.setattr(_queries, "_query2pg", counted(_queries._query2pg))
    monkeypatch.setattr(_queries, "_query2pg_nocache", counted(_queries._query2pg_nocache))
    return rewritten
