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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Self

import psycopg
from django.db import connection
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from psycopg.abc import Params, Query
from psycopg.sql import Composable

from common.statements import numbered_placeholders


@lru_cache(maxsize=256)
def server_form(sql: str, encoding: str) -> tuple[bytes, tuple[str | int, ...]]:
    """`sql` as psycopg sends it to the server ($1, $2… for its placeholders, encoded in the
    connection's `encoding`), and the parameter each number takes (a name, or a position for
    `%s`). Rewritten once per text, then the same bytes every time: psycopg's prepared statements
    are keyed on them."""
    numbered = numbered_placeholders(sql)
    if numbered is None:
        raise psycopg.ProgrammingError(
            "a prepared statement takes %s or %(name)s placeholders (not both) and %%, "
            f"not %b or %t: {sql[:80]!r}"
        )
    text, order = numbered
    return text.encode(encoding), order


def _as_text(query: Query, raw: psycopg.Connection | psycopg.AsyncConnection) -> str:
    """`query` as the text `server_form` takes. A Composable is written out as psycopg would
    (its identifiers and literals quoted for this connection). bytes are decoded with the
    connection's encoding, which `server_form` encodes them back with: psycopg takes bytes
    queries, and the bytes sent are the ones given."""
    if isinstance(query, str):
        return query
    if isinstance(query, Composable):
        return query.as_string(raw)
    if isinstance(query, bytes | bytearray | memoryview):
        try:
            return bytes(query).decode(raw.info.encoding)
        except UnicodeDecodeError as error:
            raise psycopg.ProgrammingError(
                f"a query's bytes are not in the connection's encoding ({raw.info.encoding}): {error}"
            ) from None
    raise psycopg.ProgrammingError(f"a query is str, bytes or sql.Composable, not {type(query).__qualname__}")


def _in_order(order: tuple[str | int, ...], params: Params) -> Sequence[Any]:
    """`params` in their numbers' `order`, after the checks psycopg makes before sending anything:
    `%(name)s` takes a mapping with every name, `%s` a sequence of exactly one value each. A
    mistake raised here leaves the transaction as it was; sent, it would abort it."""
    named = bool(order) and isinstance(order[0], str)
    if isinstance(params, Sequence) and not isinstance(params, str | bytes | bytearray):
        if named:
            raise psycopg.ProgrammingError(
                f"named placeholders (%(name)s) require a mapping of parameters, got {type(params).__qualname__}"
            )
        if len(params) != len(order):
            raise psycopg.ProgrammingError(
                f"the query has {len(order)} placeholders but {len(params)} parameters were passed"
            )
        return params
    if isinstance(params, Mapping):
        if order and not named:
            raise psycopg.ProgrammingError(
                f"positional placeholders (%s) require a sequence of parameters, got {type(params).__qualname__}"
            )
        missing = sorted(str(name) for name in order if name not in params)
        if missing:
            raise psycopg.ProgrammingError(f"query parameter missing: {', '.join(missing)}")
        return [params[name] for name in order]
    raise psycopg.ProgrammingError(
        f"query parameters should be a sequence or a mapping, got {type(params).__qualname__}"
    )


def _in_server_form(
    query: Query, params: Params | None, raw: psycopg.Connection | psycopg.AsyncConnection
) -> tuple[Query, Params | None]:
    """`query` and `params` for a raw cursor: the text numbered, the values in their numbers' order."""
    if params is None:
        return query, params  # nothing to bind: psycopg sends the text as written, %% and all
    text, order = server_form(_as_text(query, raw), raw.info.encoding)
    return text, _in_order(order, params)


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
        query, params = _in_server_form(query, params, self.connection)
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
        raw = self.connection
        if params_seq := list(params_seq):
            query = _as_text(query, raw)
        sent = [_in_server_form(query, params, raw) for params in params_seq]
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
        query, params = _in_server_form(query, params, self.connection)
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
    only), wrapped as `connection.cursor()` wraps Django's own.

    A statement takes `%s` or `%(name)s` placeholders, not both, and `%%` for a percent sign.
    psycopg's `%b` and `%t` (this value in binary, or in text) are refused with a
    ProgrammingError: the text goes to a raw cursor in PostgreSQL's own form (`server_form`),
    which has no format per placeholder, so every value goes in psycopg's automatic format.
    `%(name)s` takes a mapping with every name, `%s` a sequence of exactly one value each;
    anything else is a ProgrammingError raised before the statement is sent, so the transaction
    is not aborted. The query is a str, bytes in the connection's encoding, or a
    `psycopg.sql.Composable`."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = _PreparingCursor(connection.connection)
    cursor = (
        _PreparedDebugCursor(raw, connection) if connection.queries_logged else connection.make_cursor(raw)
    )
    with cursor:
        yield cursor
