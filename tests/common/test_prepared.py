"""common.prepared: statements bound by the server and prepared once per connection, their text
rewritten into PostgreSQL's own form once per process, exactly as psycopg would rewrite it
(docs/gateway.md#placeholders-rewritten-once)."""

from __future__ import annotations

import pytest
from django.db import ProgrammingError, connection, transaction
from psycopg import _queries
from psycopg.pq import TransactionStatus
from psycopg.sql import SQL, Identifier, Literal

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


def encoding() -> str:
    """The connection's encoding, which prepared_cursor rewrites with: the same cache entries."""
    connection.ensure_connection()
    return connection.connection.info.encoding


def test_a_text_is_rewritten_as_psycopg_rewrites_it_and_once_however_long_it_is():
    assert len(LONG) > _queries.MAX_CACHED_STATEMENT_LENGTH  # psycopg would rewrite it every time
    for sql in TEXTS:
        text, order = server_form(sql, encoding())
        theirs, formats, named, _parts = _queries._query2pg_nocache(sql.encode(), encoding())
        assert text == theirs
        # psycopg's format list has one entry per number: its names, or its %s positions in turn.
        assert order == (tuple(named) if named is not None else tuple(range(len(formats))))
    assert server_form(LONG, encoding())[0] is server_form(LONG, encoding())[0]
    with pytest.raises(TypeError):
        server_form(LONG)  # no default encoding: a test reads the cache entries the cursor made


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
    for text in ("SELECT %(a)b", "SELECT %(a)t", "SELECT %(a)s, %s"):
        with prepared_cursor() as cursor, pytest.raises(ProgrammingError, match="placeholders"):
            cursor.execute(text, {"a": 1})
    with prepared_cursor() as cursor, pytest.raises(ProgrammingError, match="missing: b$"):
        cursor.execute("SELECT %(a)s::int + %(b)s::int", {"a": 1})


@pytest.mark.parametrize(
    ("sql", "params", "message"),
    [
        (
            "SELECT %(a)s::int",
            [1],
            r"named placeholders \(%\(name\)s\) require a mapping of parameters, got list",
        ),
        ("SELECT %(a)s::int", (1,), "named placeholders .* got tuple"),
        ("SELECT %s::int, %s::int", [1], "the query has 2 placeholders but 1 parameters were passed"),
        ("SELECT %s::int", [1, 2], "the query has 1 placeholders but 2 parameters were passed"),
        ("SELECT 1", [1], "the query has 0 placeholders but 1 parameters were passed"),
        (
            "SELECT %s::int",
            {"0": 1},
            r"positional placeholders \(%s\) require a sequence of parameters, got dict",
        ),
        ("SELECT %(a)s::int + %(b)s::int + %(c)s::int", {"b": 1}, "query parameter missing: a, c"),
        ("SELECT %s::int", 1, "query parameters should be a sequence or a mapping, got int"),
    ],
)
def test_values_that_do_not_fit_the_placeholders_are_refused_before_the_transaction_sees_them(
    sql, params, message
):
    with transaction.atomic():
        with prepared_cursor() as cursor, pytest.raises(ProgrammingError, match=message):
            cursor.execute(sql, params)
        assert connection.connection.info.transaction_status == TransactionStatus.INTRANS, "not aborted"
        with prepared_cursor() as cursor:
            cursor.execute("SELECT %s::int", [7])
            assert cursor.fetchone() == (7,)


def test_a_composed_or_bytes_query_is_rewritten_as_its_text(psycopg_rewrites):
    composed = SQL("SELECT {value}::int + %(b)s::int AS {name}, %(b)s::text").format(
        value=Literal(2), name=Identifier("sum")
    )
    with prepared_cursor() as cursor:
        cursor.execute(composed, {"b": 3})
        assert cursor.fetchone() == (5, "3")
        assert cursor.description[0].name == "sum"
        cursor.execute("SELECT %s::text || 'é', '100%%'".encode(encoding()), ["caf"])
        assert cursor.fetchone() == ("café", "100%")
        cursor.executemany(SQL("SELECT %(a)s::int + {}").format(Literal(1)), [{"a": 1}, {"a": 2}])
        with pytest.raises(ProgrammingError, match="not in the connection's encoding"):
            cursor.execute(b"SELECT %s::text, '\xff'", ["x"])
    assert psycopg_rewrites == []
