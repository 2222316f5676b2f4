"""common.statements.bind: the hot statements' values written into SQL as psycopg's client-side
binding writes them, so a query string run_at_once sends is the one psycopg would have built."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from psycopg.types.json import Jsonb
from psycopg.types.numeric import Int2, Int4, Int8

import common.statements
from billing.models import RequestOutcome
from common.statements import BuiltStatement, bind, literal, run_at_once

D0 = Decimal(0)

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="client-side binding is psycopg's"),
]

VALUES = [
    None,
    True,
    False,
    0,
    -0,
    7,
    -1,
    2**63 - 1,
    -(2**63),
    Int8(5),
    Int8(-5),
    Int4(3),
    Int2(-2),
    Decimal("0"),
    Decimal("-0"),
    Decimal("0E-8"),
    Decimal("0.01267500"),
    Decimal("-12345678901.12345678"),
    Decimal("1E+2"),
    Decimal("NaN"),
    Decimal("-Infinity"),
    datetime(2026, 12, 3, 12, 0, tzinfo=UTC),
    datetime(2026, 12, 3, 12, 0, 1, 123456, tzinfo=UTC),
    datetime(2026, 12, 3, 21, 0, 1, 5, tzinfo=ZoneInfo("Asia/Tokyo")),
    datetime(2026, 7, 1, 3, 0, tzinfo=ZoneInfo("America/St_Johns")),  # -02:30
    datetime(1890, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo")),  # +09:18:59, seconds in the offset
    datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5))),
    datetime(2026, 12, 3, 12, 0),  # naive
    "",
    "gpt-4o-mini",
    "it's 'quoted'",
    "é ü 中文 \u2028 \t\n",
    "back\\slash",
    "-- not a comment",
    RequestOutcome.COMPLETED,  # a str subclass
    date(2026, 12, 3),
    [Decimal("1.5"), None],
    Jsonb({"a": 1}),
    1.5,
]


@pytest.fixture
def client_cursor():
    with connection.cursor() as cursor:
        yield cursor.cursor  # psycopg's ClientCursor under Django's wrapper


def test_every_value_is_written_as_psycopg_writes_it(client_cursor):
    written_here = 0
    for value in VALUES:
        ours = literal(value)
        if ours is not None:
            assert ours == client_cursor.mogrify("%s", (value,)), value
            written_here += 1
        assert bind(client_cursor, "SELECT %s", (value,)) == client_cursor.mogrify("SELECT %s", (value,)), (
            value
        )
    assert written_here >= 25  # the check is not vacuous: most of them skip psycopg


def test_a_value_written_here_reads_back_as_itself(client_cursor):
    for value in VALUES:
        if literal(value) is None or value is None:
            continue
        client_cursor.execute(bind(client_cursor, "SELECT %s", (value,)))
        assert client_cursor.fetchone()[0] == value, value


def test_named_positional_and_percent_placeholders_bind_as_psycopg_binds_them(client_cursor):
    cases = [
        ("SELECT %(a)s, %(b)s, %(a)s WHERE 'x' LIKE 'x%%'", {"a": Decimal("-1.5"), "b": "o'k", "unused": 1}),
        ("SELECT %s, %s, 100 %% 7", (Int8(9), datetime(2026, 1, 1, tzinfo=UTC))),
        ("SELECT 1", None),
        ("SELECT %s", ("back\\slash",)),
    ]
    for sql, params in cases:
        assert bind(client_cursor, sql, params) == client_cursor.mogrify(sql, params), sql


def test_a_placeholder_bind_does_not_know_and_mixed_placeholders_are_left_to_psycopg(client_cursor):
    assert bind(client_cursor, "SELECT %t", (5,)) == client_cursor.mogrify("SELECT %t", (5,))
    with pytest.raises(Exception) as ours:
        bind(client_cursor, "SELECT %s, %(a)s", {"a": 1})
    with pytest.raises(Exception) as theirs:
        client_cursor.mogrify("SELECT %s, %(a)s", {"a": 1})
    assert type(ours.value) is type(theirs.value)


def test_recording_and_hold_batches_send_every_value_as_psycopg_would_bind_it(monkeypatch):
    # Every value of real batches (counters, rollup; holds), written both ways.
    from billing.holds import pending_hold_many
    from billing.services import usage_record_batch
    from tests.billing.test_record_batch import records, world
    from tests.factories import APIKeyFactory, UpstreamAccountFactory
    from tests.gateway.test_hold_batches import request

    compared = []
    real = common.statements._literal_of

    def both(cursor, value):
        ours = real(cursor, value)
        assert ours == cursor.mogrify("%s", (value,)), value
        compared.append(value)
        return ours

    monkeypatch.setattr(common.statements, "_literal_of", both)
    w = world("a")
    usage_record_batch(records(w))
    usage_record_batch(
        [dataclasses.replace(record, request_id=f"{record.request_id}-again") for record in records(w)]
    )
    recorded = len(compared)
    key = APIKeyFactory(user__balance=Decimal("10"))
    account = UpstreamAccountFactory(platform="openai", quota_limit_usd=Decimal("5"))
    held = pending_hold_many([request(key, f"r{n}", "0.1", [account]) for n in range(3)])
    assert all(result.held for result in held)
    assert recorded >= 30 and len(compared) >= recorded + 3 * 20


def _sum_and_echo(a: Decimal, b: Decimal, text: str) -> BuiltStatement:
    return BuiltStatement(
        "SELECT %(a)s::numeric + %(b)s::numeric, %(text)s::text, %(a)s::numeric",
        {"a": a, "b": b, "text": text},
        read=tuple,
    )


def _prepared_here(statement: BuiltStatement) -> list[list[str]]:
    """The parameter types the session prepared `statement` with, once per preparation."""
    values = [statement.params[key] for key in common.statements._numbered(statement.sql)[1]]
    types = tuple(common.statements._declared_type(value) for value in values)
    name, _ = common.statements._prepared_as(statement.sql, types, common.statements._generation)
    with connection.cursor() as cursor:
        cursor.execute("SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %s", [name])
        return [row[0] for row in cursor.fetchall()]


def test_a_statement_run_at_once_is_prepared_once_a_session_and_executed_by_name_with_its_values():
    first = run_at_once([_sum_and_echo(Decimal("1.5"), Decimal("2.25"), "it's, (here)")])
    with CaptureQueriesContext(connection) as queries:
        again = run_at_once([_sum_and_echo(Decimal("-0.1"), Decimal("0.1"), "\\ and é")] * 2)

    assert first == [(Decimal("3.75"), "it's, (here)", Decimal("1.5"))]
    assert again == [(Decimal("0.0"), "\\ and é", Decimal("-0.1"))] * 2
    assert _prepared_here(_sum_and_echo(D0, D0, "")) == [["numeric", "numeric", "text"]]
    [sent] = [query["sql"] for query in queries.captured_queries]
    assert sent.count("EXECUTE tollgate_") == 2 and sent.count("tollgate_prepare(") == 1


def test_a_statement_is_prepared_again_after_psycopg_deallocates_every_prepared_statement():
    statement = _sum_and_echo(Decimal("1"), Decimal("2"), "x")
    assert run_at_once([statement]) == [(Decimal("3"), "x", Decimal("1"))]
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what psycopg sends after a rollback when it prepared its own
    assert _prepared_here(statement) == []
    assert run_at_once([statement]) == [(Decimal("3"), "x", Decimal("1"))]
    assert _prepared_here(statement) == [["numeric", "numeric", "text"]]


def test_each_parameter_is_declared_with_the_type_its_literal_had_and_the_rest_is_inferred():
    statement = BuiltStatement(
        "SELECT %(limit)s < 0, %(id)s = 1, %(at)s, %(flag)s, %(name)s::varchar, %(none)s::numeric",
        {"limit": Decimal("2.50"), "id": Int8(7), "at": datetime(2026, 1, 1, tzinfo=UTC), "flag": True},
        read=tuple,
    )
    statement = dataclasses.replace(statement, params={**statement.params, "name": "n", "none": None})
    assert run_at_once([statement]) == [(False, False, datetime(2026, 1, 1, tzinfo=UTC), True, "n", None)]
    # Left undeclared, `%(limit)s < 0` would make the limit an integer (2.50 read as 3).
    assert _prepared_here(statement) == [
        ["numeric", "bigint", "timestamp with time zone", "boolean", "character varying", "numeric"]
    ]


def test_a_guarded_statement_has_one_text_whatever_its_place_in_the_string():
    positional = BuiltStatement("UPDATE t SET a = %s WHERE id = %s", [1, 2], requires_row=True)
    named = BuiltStatement("UPDATE t SET a = %(a)s", {"a": 1}, requires_row=True)
    for statement in (positional, named):
        first, fifth = common.statements._guarded(statement, 0), common.statements._guarded(statement, 4)
        assert first.sql == fifth.sql and first.params != fifth.params


def test_a_statement_whose_result_changed_shape_after_a_migration_is_prepared_again_under_a_new_name():
    from django.db import DatabaseError, transaction

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE tollgate_shape_test (id bigint PRIMARY KEY, a text)")
        cursor.execute("INSERT INTO tollgate_shape_test VALUES (1, 'one')")
    statement = BuiltStatement("SELECT * FROM tollgate_shape_test WHERE id = %s", [1], read=tuple)
    assert run_at_once([statement]) == [(1, "one")]
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE tollgate_shape_test ADD COLUMN b text DEFAULT 'two'")

    with pytest.raises(DatabaseError, match="cached plan must not change result type"), transaction.atomic():
        run_at_once([statement])
    assert run_at_once([statement]) == [(1, "one", "two")]
