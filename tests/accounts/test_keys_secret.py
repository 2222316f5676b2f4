"""A key's secret is in exactly one response, and nowhere in the database or the logs."""

from __future__ import annotations

import logging
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import APIKey
from accounts.rules import api_key_hash
from accounts.services.keys import api_key_usage_charge
from tests.factories import GroupFactory, UserFactory

pytestmark = pytest.mark.django_db


def every_row_as_text() -> list[tuple[str, str]]:
    """Every row of every table, each cast to text by PostgreSQL: a dump of the whole database."""
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT t::text FROM {connection.ops.quote_name(table)} t")
            rows += [(table, text) for (text,) in cursor.fetchall()]
    return rows


def test_the_secret_is_in_one_response_and_nowhere_in_the_database_or_the_logs(staff_client, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    user = UserFactory()
    group = GroupFactory()
    responses = []
    # Capturing queries turns on the debug cursor, so django.db.backends logs every statement too.
    with CaptureQueriesContext(connection) as queries:
        responses.append(
            staff_client.post(
                "/keys/new",
                {
                    "user": user.pk,
                    "group": group.pk,
                    "name": "secret-test",
                    "quota_usd": "5",
                    "rate_limit_5h_usd": "0",
                    "rate_limit_1d_usd": "0",
                    "rate_limit_7d_usd": "0",
                },
            )
        )
        secret = re.search(r"sk-[0-9a-f]{64}", responses[0].content.decode()).group(0)
        key = APIKey.objects.get()
        api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("1"))
        for url in ("/keys/", f"/keys/{key.pk}/", f"/keys/{key.pk}/cells", f"/keys/{key.pk}/reset-quota"):
            responses.append(staff_client.get(url))
        responses.append(staff_client.post(f"/keys/{key.pk}/reset-quota"))
        responses.append(staff_client.get("/keys/", {"q": key.key_prefix}))

    # Headers and cookies included (a flash message would travel in a cookie).
    assert [secret in response.serialize().decode() for response in responses] == [True] + [False] * 6

    assert 'INSERT INTO "accounts_apikey"' in caplog.text  # the SQL really was logged …
    assert api_key_hash(secret) in caplog.text  # … with its parameters
    assert secret[3:] not in caplog.text  # but never the secret, with or without its "sk-"
    assert not any(secret[3:] in query["sql"] for query in queries.captured_queries)

    dump = every_row_as_text()
    assert any(table == "accounts_apikey" and api_key_hash(secret) in text for table, text in dump)
    leaks = [table for table, text in dump if secret[3:] in text]
    assert leaks == []
