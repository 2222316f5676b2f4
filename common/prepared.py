"""Prepared statements on Django's PostgreSQL connection, for the few statements every gateway
request runs (billing.holds).

Django's cursor binds on the client: psycopg quotes each parameter into the SQL text in Python,
and PostgreSQL parses and plans the whole text again each time. `prepared_cursor` is psycopg's
own cursor on the same connection (so the same transaction): the server binds the parameters, and
a statement is prepared the first time a connection runs it, then only bound and executed.
psycopg keeps the prepared statements per connection: a connection Django closes and opens again
prepares them again, and psycopg deallocates them all when a transaction rolls back.

A prepared statement is planned for its parameters' declared types, so each placeholder needs
one: a cast in the SQL where psycopg sends a value untyped (str, None: `%(name)s::varchar`,
`::bigint`, `::jsonb`), and psycopg's `Int8(value)` for an int, which psycopg otherwise declares
as the smallest type that holds the value (one prepared statement per combination of sizes).

The statements still go through Django's cursor wrapper: its execute wrappers and query log see
them (tests count the hot path's statements), and its database errors are Django's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg
from django.db import connection
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from psycopg.abc import Params, Query


class _PreparingCursor(psycopg.Cursor):
    """psycopg's plain cursor (the server binds; Django's binds on the client) that prepares every
    statement it runs."""

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        raw = self.connection
        threshold = raw.prepare_threshold
        # Django leaves psycopg's prepared statements off (a threshold of None, for poolers that
        # drop them between transactions), and psycopg then ignores prepare=True. On for this
        # statement only, so the ORM's statements keep Django's behaviour.
        if threshold is None:
            raw.prepare_threshold = 0
        try:
            return super().execute(query, params, prepare=True, binary=binary)
        finally:
            raw.prepare_threshold = threshold


class _PreparedDebugCursor(CursorDebugWrapper):
    """Django's query log (DEBUG, CaptureQueriesContext) keeps the statement as written: psycopg
    keeps no text of a prepared execution, and Django's log would read "QUERY = ... - PARAMS"."""

    def execute(self, sql: str, params: Any = None) -> Any:
        with self.debug_sql(sql, params):
            return CursorWrapper.execute(self, sql, params)


@contextmanager
def prepared_cursor() -> Iterator[CursorWrapper]:
    """A cursor whose statements are server-bound and prepared once per connection (PostgreSQL
    only), wrapped as `connection.cursor()` wraps Django's own."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = _PreparingCursor(connection.connection)
    cursor = (
        _PreparedDebugCursor(raw, connection) if connection.queries_logged else connection.make_cursor(raw)
    )
    with cursor:
        yield cursor
