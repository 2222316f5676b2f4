"""common.prepared: statements bound by the server and prepared once per connection, their text
rewritten into PostgreSQL's own form once per process, exactly as psycopg would rewrite it
(docs/gateway.md#placeholders-rewritten-once)."""

from __future__ import annotations

import pytest
from django.db import ProgrammingError, connection
from psycopg import _queries

from common.prepared import prepared_cursor, server_form

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's"),
]

LONG = "SELECT %(a)s::int + %(b)s::int, %(a)s::text, 7 %% 4 /*" + " padding" * 600 + " */"
TEXTS = [
    "SELECT %(a)s::int + %(b)s::int, %(a)s::text, 7 %% 4",
    "SELECT %s::int, %s::text, '100%%'",
    "SELECT 1",
    LONG,
]


def test_a_text_is_rewritten_as_psycopg_rewrites_it_and_once_however_long_it_is():
    assert len(LONG) > _queries.MAX_CACHED_STATEMENT_LENGTH  # psycopg would rewrite it every time
    for sql in TEXTS:
        text, order = server_form(sql)
        theirs, _formats, named, _parts = _queries._query2pg_nocache(sql.encode(), "utf-8")
        assert text == theirs
        assert order == (tuple(named) if named is not None else tuple(range(len(order))))
    assert server_form(LONG)[0] is server_form(LONG)[0]


def test_a_prepared_statement_runs_with_named_or_positional_values_and_psycopg_rewrites_nothing(
    psycopg_rewrites,
):
    with prepared_cursor() as cursor:
        for _ in range(2):
            cursor.execute(LONG, {"a": 2, "b": 3})
            assert cursor.fetchone() == (5, "2", 3)
        cursor.execute(TEXTS[1], [1, "one"])
        assert cursor.fetchone() == (1, "one", "100%")
        cursor.executemany("SELECT %(a)s::int", [{"a": 1}, {"a": 2}])
    assert psycopg_rewrites == []


def test_a_placeholder_other_than_s_or_a_missing_value_is_refused():
    with prepared_cursor() as cursor, pytest.raises(ProgrammingError, match="placeholders only"):
        cursor.execute("SELECT %(a)b", {"a": 1})
    with prepared_cursor() as cursor, pytest.raises(ProgrammingError, match="missing: 'b'"):
        cursor.execute("SELECT %(a)s::int + %(b)s::int", {"a": 1})
