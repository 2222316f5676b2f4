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

psycopg rewrites a statement's `%(name)s` placeholders into PostgreSQL's `$1, $2…` in Python on
each execute, and remembers the rewrite only for texts of at most 4096 characters (its
`MAX_CACHED_STATEMENT_LENGTH`): the one-statement hold of a subscription key with an account quota
(about 5 kB) was rewritten for every request, about 0.3 ms of CPU each, on the event loop too
(docs/gateway.md#placeholders-rewritten-once). So these cursors are psycopg's raw cursors, which
send the text as given, and `server_form` rewrites each text once, whatever its length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Self

import psycopg
from django.db import connection
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from psycopg.abc import Params, Query

from common.statements import numbered_placeholders


@lru_cache(maxsize=256)
def server_form(sql: str, encoding: str = "utf-8") -> tuple[bytes, tuple[str | int, ...]]:
    """`sql` as psycopg sends it to the server ($1, $2… for its placeholders, encoded), and the
    parameter each number takes (a name, or a position for `%s`). Rewritten once per text, then
    the same bytes every time: psycopg's prepared statements are keyed on them."""
    numbered = numbered_placeholders(sql)
    if numbered is None:
        raise psycopg.ProgrammingError(
            f"a prepared statement takes %s and %(name)s placeholders only: {sql[:80]!r}"
        )
    text, order = numbered
    return text.encode(encoding), order


def _in_server_form(query: Query, params: Params | None, encoding: str) -> tuple[Query, Params | None]:
    """`query` and `params` for a raw cursor: the text numbered, the values in their numbers' order."""
    if params is None or not isinstance(query, str):
        return query, params  # nothing to bind (psycopg leaves the text as written), or not text
    text, order = server_form(query, encoding)
    if not isinstance(params, Mapping):
        return text, params
    try:
        return text, [params[name] for name in order]
    except KeyError as missing:
        raise psycopg.ProgrammingError(f"query parameter missing: {missing}") from None


class _PreparingCursor(psycopg.RawCursor):
    """psycopg's cursor (the server binds; Django's binds on the client) that prepares every
    statement it runs, its text rewritten once (`server_form`)."""

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        query, params = _in_server_form(query, params, self.connection.info.encoding)
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

    def executemany(self, query: Query, params_seq: Iterable[Params], *, returning: bool = False) -> None:
        encoding = self.connection.info.encoding
        sent = [_in_server_form(query, params, encoding) for params in params_seq]
        super().executemany(
            sent[0][0] if sent else query, [params for _, params in sent], returning=returning
        )


class PreparingAsyncCursor(psycopg.AsyncRawCursor):
    """`prepared_cursor`'s cursor for a psycopg AsyncConnection of one's own (gateway.holds.LoopHolds),
    opened with a `prepare_threshold` (0): every statement prepared, its text rewritten once."""

    async def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        query, params = _in_server_form(query, params, self.connection.info.encoding)
        return await super().execute(query, params, prepare=True, binary=binary)


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
