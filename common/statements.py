"""Statements built apart from running them, so a caller can send several in one round trip.

A counter charge (api_key_usage_charge, user_balance_charge, …) is one precompiled UPDATE …
RETURNING on PostgreSQL. Its `*_statement` builder answers a `BuiltStatement`: the SQL, its parameters
and how to read the row it returns; the single-call function runs it with `BuiltStatement.run`.
A batch recording (billing.services.usage_record_batch) instead sends all its charges with
`run_at_once`: one query string, which PostgreSQL runs statement after statement, so the hot rows
the first one locks are not held across one round trip (and one wait for the GIL) per statement
(docs/recording.md#batches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection


def _no_row(row: tuple | None) -> None:
    return None


@dataclass(frozen=True, slots=True)
class BuiltStatement:
    """One PostgreSQL statement, built but not run: what `read` makes of the row it returns (the
    first row of its RETURNING, None when it returned no row or has no RETURNING)."""

    sql: str
    params: Any
    read: Callable[[tuple | None], Any] = _no_row

    def run(self) -> Any:
        with connection.cursor() as cursor:
            cursor.execute(self.sql, self.params)
            return self.read(cursor.fetchone() if cursor.description else None)


def run_at_once(statements: list[BuiltStatement]) -> list:
    """Run `statements` in order, in the caller's transaction, in one round trip; what each one's
    `read` answers, in order. PostgreSQL only.

    With client-side binding (psycopg's ClientCursor, Django's default) the statements are bound
    here and sent as ONE query string (simple query protocol): a single network write, a single
    wait for the results (one release and re-acquisition of the GIL, however many statements).
    PostgreSQL runs them one after the other in the order given, so rows are locked in that order,
    as running them one by one would. The first failing statement raises here (the rest are not
    run) and the caller's atomic block rolls its transaction back, as with one-by-one execution.
    A `read` that raises (a row that does not exist) does so after all the statements ran, still
    inside that transaction.

    With server-side binding the statements go through psycopg's pipeline mode instead: one round
    trip too, but psycopg polls the socket (and gives up the GIL) once per statement queued.
    """
    if not statements:
        return []
    with connection.cursor() as cursor:
        if not _binds_client_side(cursor.cursor):
            return _run_pipelined(statements)
        # Each statement bound as execute() would bind it; no parameters left for the whole.
        sql = ";\n".join(cursor.cursor.mogrify(statement.sql, statement.params) for statement in statements)
        cursor.execute(sql)
        answers = []
        for index, statement in enumerate(statements):
            if index:
                cursor.nextset()
            answers.append(statement.read(cursor.fetchone() if cursor.description else None))
        return answers


def _binds_client_side(cursor: Any) -> bool:
    """A psycopg ClientCursor (Django's default; "server_side_binding" in OPTIONS turns it off)."""
    return hasattr(cursor, "mogrify")


def _run_pipelined(statements: list[BuiltStatement]) -> list:
    """run_at_once through psycopg's pipeline mode (for server-side binding cursors)."""
    connection.ensure_connection()
    cursors = []
    try:
        with connection.connection.pipeline():
            for statement in statements:
                cursor = connection.cursor()  # one per statement: a cursor keeps only its last result
                cursors.append(cursor)
                cursor.execute(statement.sql, statement.params)
        # Leaving the block synced the pipeline: every result is in, no further round trip.
        return [
            statement.read(cursor.fetchone() if cursor.description else None)
            for statement, cursor in zip(statements, cursors, strict=True)
        ]
    finally:
        for cursor in cursors:
            cursor.close()
