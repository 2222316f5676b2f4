"""Statements built apart from running them, so a caller can send several in one round trip.

A counter charge (api_key_usage_charge, user_balance_charge, …) is one precompiled UPDATE …
RETURNING on PostgreSQL. Its `*_statement` builder answers a `BuiltStatement`: the SQL, its parameters
and how to read the row it returns; the single-call function runs it with `BuiltStatement.run`.
A batch recording (billing.services.usage_record_batch) instead sends all its charges with
`run_at_once`: one query string, which PostgreSQL runs statement after statement, so the hot rows
the first one locks are not held across one round trip (and one wait for the GIL) per statement.
With `commit=True` the string also ends the transaction, so those rows are free as soon as the
server has run it, not once this thread has read the answers and sent COMMIT
(docs/recording.md#batches).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.db import DatabaseError, connection
from psycopg.types.numeric import Int2, Int4, Int8


def _no_row(row: tuple | None) -> None:
    return None


@dataclass(frozen=True, slots=True)
class BuiltStatement:
    """One PostgreSQL statement, built but not run: what `read` makes of the row it returns (the
    first row of its RETURNING, None when it returned no row or has no RETURNING). `requires_row`:
    the statement must change a row, and `read(None)` raises the error for one that changed none;
    run_at_once(commit=True) checks it inside the database, before the COMMIT."""

    sql: str
    params: Any
    read: Callable[[tuple | None], Any] = _no_row
    requires_row: bool = False

    def run(self) -> Any:
        with connection.cursor() as cursor:
            cursor.execute(self.sql, self.params)
            return self.read(cursor.fetchone() if cursor.description else None)


def run_at_once(statements: list[BuiltStatement], *, commit: bool = False) -> list:
    """Run `statements` in order, in the caller's transaction, in one round trip; what each one's
    `read` answers, in order. PostgreSQL only.

    With client-side binding (psycopg's ClientCursor, Django's default) the statements are bound
    here and sent as ONE query string (simple query protocol): a single network write, a single
    wait for the results (one release and re-acquisition of the GIL, however many statements).
    PostgreSQL runs them one after the other in the order given, so rows are locked in that order,
    as running them one by one would. The first failing statement raises here (the rest are not
    run) and the caller's atomic block rolls its transaction back, as with one-by-one execution.

    `commit=True`, from the outermost atomic block, ends the string with COMMIT: the rows the
    statements lock are released when the server has run them, not a round trip (and a wait for
    the GIL) later; the atomic block's own commit then finds nothing to do. Each statement that
    `requires_row` is wrapped so that changing no row fails inside the database (SQLSTATE P0002,
    raised here as the error its `read(None)` raises) and the COMMIT never runs. The caller must have nothing left to
    write after this call. Inside a nested block (a savepoint: the caller's caller owns the
    transaction) `commit` is ignored, and a `read` that raises does so after all the statements
    ran, still inside that transaction.

    Each statement goes as `EXECUTE name(values)` of a statement the session prepared, and the
    string starts with the call that prepares those it lacks (below): PostgreSQL parses, analyses
    and plans a 4 kB hold statement in about 1.5 ms on a slow machine, which every request of a
    hold batch paid.

    With server-side binding the statements go through psycopg's pipeline mode instead: one round
    trip too, but psycopg polls the socket (and gives up the GIL) once per statement queued.
    """
    if not statements:
        return []
    commit = commit and len(connection.atomic_blocks) == 1
    sent = (
        [_guarded(statement, index) for index, statement in enumerate(statements)] if commit else statements
    )
    try:
        with connection.cursor() as cursor:
            if not _binds_client_side(cursor.cursor):
                return _run_pipelined(sent, commit=commit)
            # Each statement as the EXECUTE of its prepared statement, or bound as execute()
            # would bind it; no parameters left for the whole.
            executed = [_executed(cursor.cursor, statement) for statement in sent]
            prepares = list(dict.fromkeys(prepare for prepare, _ in executed if prepare))
            parts = [run for _, run in executed]
            if prepares:
                parts.insert(0, f"SELECT {', '.join(prepares)}")
            cursor.execute(";\n".join([*parts, "COMMIT"] if commit else parts))
            if prepares:
                cursor.nextset()
            answers = []
            for index, statement in enumerate(statements):
                if index:
                    cursor.nextset()
                answers.append(statement.read(cursor.fetchone() if cursor.description else None))
            return answers
    except DatabaseError as error:
        if getattr(error.__cause__, "sqlstate", None) == CACHED_PLAN_CHANGED:
            global _generation
            _generation += 1
        stopped = _stopped_statement(error, statements)
        if stopped is None:
            raise
        stopped.read(None)  # raises the statement's own "does not exist"
        raise


# A statement that must change a row, as run_at_once(commit=True) sends it: the guard row calls
# tollgate_row_required (common/migrations/0001) whether or not the statement returned a row.
# The statement's position is a parameter, so each statement has one text (one prepared statement).
_GUARDED = (
    "WITH changed AS ({sql}) SELECT changed.* FROM "
    "(SELECT tollgate_row_required(EXISTS (SELECT FROM changed), {index}::integer)) AS required "
    "LEFT JOIN changed ON true"
)
_GUARD_INDEX = "tollgate_statement"
_MISSING = "tollgate_row_required: statement "


def _guarded(statement: BuiltStatement, index: int) -> BuiltStatement:
    if not statement.requires_row:
        return statement
    if statement.params is None:  # nothing for psycopg to bind: the position goes in as text
        sql = _GUARDED.format(sql=statement.sql, index=index)
        return BuiltStatement(sql, None, statement.read, requires_row=True)
    if isinstance(statement.params, dict):
        sql = _GUARDED.format(sql=statement.sql, index=f"%({_GUARD_INDEX})s")
        params: Any = {**statement.params, _GUARD_INDEX: index}
    else:
        sql = _GUARDED.format(sql=statement.sql, index="%s")
        params = [*(statement.params or ()), index]
    return BuiltStatement(sql, params, statement.read, requires_row=True)


def _stopped_statement(error: DatabaseError, statements: list[BuiltStatement]) -> BuiltStatement | None:
    """The statement the row guard stopped at, if that is what `error` is."""
    cause = error.__cause__
    diag = getattr(cause, "diag", None)
    if getattr(cause, "sqlstate", None) != "P0002" or diag is None:
        return None
    message = diag.message_primary or ""
    if not message.startswith(_MISSING):
        return None
    return statements[int(message.removeprefix(_MISSING).split()[0])]


def _binds_client_side(cursor: Any) -> bool:
    """A psycopg ClientCursor (Django's default; "server_side_binding" in OPTIONS turns it off)."""
    return hasattr(cursor, "mogrify")


def _run_pipelined(statements: list[BuiltStatement], *, commit: bool) -> list:
    """run_at_once through psycopg's pipeline mode (for server-side binding cursors)."""
    connection.ensure_connection()
    cursors = []
    try:
        with connection.connection.pipeline():
            for statement in statements:
                cursor = connection.cursor()  # one per statement: a cursor keeps only its last result
                cursors.append(cursor)
                cursor.execute(statement.sql, statement.params)
            if commit:
                with connection.cursor() as cursor:
                    cursor.execute("COMMIT")
        # Leaving the block synced the pipeline: every result is in, no further round trip.
        return [
            statement.read(cursor.fetchone() if cursor.description else None)
            for statement, cursor in zip(statements, cursors, strict=True)
        ]
    finally:
        for cursor in cursors:
            cursor.close()


# --- binding on the client ----------------------------------------------------------------------
# psycopg's ClientCursor.mogrify looks up a dumper and quotes each value in Python: about 10 µs a
# value, 0.1-0.5 ms a statement, most of a recording batch's fixed cost and of a hold batch's
# binding. `bind` writes the few kinds of values these statements carry itself, exactly as psycopg
# writes them (tests/common/test_statements.py compares the two), and hands anything else to psycopg.

_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\))?(.)")
_INTS = (int, Int2, Int4, Int8)


@lru_cache(maxsize=512)
def _template(sql: str) -> tuple[tuple[str, ...], tuple[str | int, ...]] | None:
    """`sql` cut at its placeholders: the text around them, and each one's name (`%(name)s`) or
    position (`%s`); None when it has a placeholder other than %s, %(name)s and %%."""
    texts, keys, start, position = [], [], 0, 0
    pending = ""
    for match in _PLACEHOLDER.finditer(sql):
        name, kind = match.groups()
        if kind == "%" and name is None:
            pending += sql[start : match.start()] + "%"
            start = match.end()
            continue
        if kind != "s":
            return None
        texts.append(pending + sql[start : match.start()])
        pending, start = "", match.end()
        if name is None:
            keys.append(position)
            position += 1
        else:
            keys.append(name)
    texts.append(pending + sql[start:])
    if position and len(keys) != position:
        return None  # named and positional together: psycopg refuses it, let it say so
    return tuple(texts), tuple(keys)


def literal(value: Any) -> str | None:
    """`value` as psycopg's client-side binding writes it into SQL, for the kinds the hot
    statements carry; None for any other (psycopg quotes it)."""
    kind = type(value)
    if value is None:
        return "NULL"
    if kind is bool:
        return "true" if value else "false"
    if kind in _INTS:
        text = int.__repr__(value)  # Int8 and its kin have a repr of their own
        return " " + text if value < 0 else text  # a space, so "- -1" never reads as a comment
    if kind is Decimal:
        if not value.is_finite():
            return None
        text = str(value)
        return " " + text if text[0] == "-" else text
    if kind is datetime:
        offset = value.utcoffset()
        if offset is None or offset.seconds % 60 or offset.microseconds:
            return None
        return f"'{value}'::timestamptz"
    if kind is str:
        if "\\" in value or "\x00" in value:
            return None  # psycopg writes these E'...' or refuses them
        return "'" + value.replace("'", "''") + "'"
    return None


def bind(cursor: Any, sql: str, params: Any) -> str:
    """`cursor.mogrify(sql, params)` (a psycopg ClientCursor), with the common values written here."""
    template = _template(sql) if params else None
    if template is None:
        return cursor.mogrify(sql, params)
    texts, keys = template
    if keys and isinstance(params, dict) != isinstance(keys[0], str):
        return cursor.mogrify(sql, params)  # psycopg says what is wrong
    out = [texts[0]]
    for key, text in zip(keys, texts[1:], strict=True):
        out.append(_literal_of(cursor, params[key]))
        out.append(text)
    return "".join(out)


# --- statements prepared once per session -------------------------------------------------------
# A string of run_at_once executes each statement as EXECUTE name(values), after one
# SELECT tollgate_prepare(name, types, text), … (common/migrations/0002) that prepares those the
# session does not have yet. Nothing here remembers what a session prepared: psycopg deallocates
# every prepared statement after a rollback on a connection where it prepared its own, and
# SQL-level PREPARE outlives the transaction it ran in, so only the server knows.
#
# Each parameter is declared with the type its value had as a literal in the bound string (a
# Decimal is numeric, an int bigint, an aware datetime timestamptz, a bool boolean), so the
# statement means what it meant bound; the rest (text, NULL, what psycopg writes with a cast)
# is left for PostgreSQL to infer from where the parameter stands, as an untyped literal was.
# Undeclared, `%(limit)s < 0` reads the limit as an integer and EXECUTE would round 2.50 to 3.

_DOLLAR_QUOTE = "$tollgate_statement$"
_INT8_LOW, _INT8_HIGH = -(2**63), 2**63
# Bumped when PostgreSQL refuses a prepared statement whose result changed shape (a migration
# altered a column it returns): every statement is prepared again under a new name.
_generation = 0
CACHED_PLAN_CHANGED = "0A000"


def _declared_type(value: Any) -> str:
    kind = type(value)
    if kind is Decimal:
        return "numeric"
    if kind is bool:
        return "boolean"
    if kind in _INTS:
        return (
            "bigint" if _INT8_LOW <= value < _INT8_HIGH else "numeric"
        )  # (`in range` walks an int subclass)
    if kind is datetime and value.utcoffset() is not None:
        return "timestamptz"
    return "unknown"


def numbered_placeholders(sql: str) -> tuple[str, tuple[str | int, ...]] | None:
    """`sql` with PostgreSQL's $1, $2… for its placeholders, as psycopg numbers them for the
    server (one number per distinct name, in order of first appearance; %% as %), and the
    parameter each number takes; None when it has a placeholder other than %s, %(name)s and %%."""
    template = _template(sql)
    if template is None:
        return None
    texts, keys = template
    order = tuple(dict.fromkeys(keys))
    numbers = {key: f"${number}" for number, key in enumerate(order, start=1)}
    numbered = [texts[0]]
    for key, text in zip(keys, texts[1:], strict=True):
        numbered.append(numbers[key])
        numbered.append(text)
    return "".join(numbered), order


@lru_cache(maxsize=512)
def _numbered(sql: str) -> tuple[str, tuple[str | int, ...]] | None:
    """`sql` numbered (numbered_placeholders) for an EXECUTE of the string; None when it goes
    bound instead: no parameter, a placeholder bind would not take apart either, or one that,
    numbered, would run into the text beside it."""
    template = _template(sql)
    if template is None or _DOLLAR_QUOTE in sql:
        return None
    texts, keys = template
    if not keys:
        return None
    for before, after in zip(texts, texts[1:], strict=False):
        if (before and (before[-1].isalnum() or before[-1] in "_$")) or (after and after[0].isdigit()):
            return None
    return numbered_placeholders(sql)


@lru_cache(maxsize=512)
def _prepared_as(sql: str, types: tuple[str, ...], generation: int) -> tuple[str, str]:
    """The name `sql` is prepared under with these parameter types (from its text and types, so
    every process and session agrees on it) and the call that prepares it."""
    body, _order = _numbered(sql)
    declared = ", ".join(types)
    signature = f"{generation}\0{declared}\0{sql}"
    name = "tollgate_" + hashlib.blake2b(signature.encode(), digest_size=12).hexdigest()
    return name, f"tollgate_prepare('{name}', '{declared}', {_DOLLAR_QUOTE}{body}{_DOLLAR_QUOTE})"


def _executed(cursor: Any, statement: BuiltStatement) -> tuple[str | None, str]:
    """The call that prepares `statement` (None: it goes bound) and what the string runs."""
    numbered = _numbered(statement.sql) if statement.params else None
    if numbered is None:
        return None, bind(cursor, statement.sql, statement.params)
    values = [statement.params[key] for key in numbered[1]]
    name, prepare = _prepared_as(statement.sql, tuple(_declared_type(value) for value in values), _generation)
    return prepare, f"EXECUTE {name}({', '.join(_literal_of(cursor, value) for value in values)})"


def _literal_of(cursor: Any, value: Any) -> str:
    written = literal(value)
    return written if written is not None else cursor.mogrify("%s", (value,))
