"""What a query string of common.statements.run_at_once runs: its statements with their values,
as if they had been bound into the string, whether they went as `EXECUTE` of a prepared statement
or bound. Tests read the sent SQL through this."""

from __future__ import annotations

import re

_PREPARE = re.compile(
    r"tollgate_prepare\('(\w+)', '[^']*', \$tollgate_statement\$(.*?)\$tollgate_statement\$\)", re.S
)
_EXECUTE = re.compile(r"EXECUTE (\w+)\((.*)\)", re.S)


def statements_run(query: str) -> list[str]:
    """The statements `query` runs, in order, without the call that prepares them."""
    prepared = dict(_PREPARE.findall(query))
    parts = query.split(";\n")
    if parts[0].startswith("SELECT tollgate_prepare("):
        parts = parts[1:]
    run = []
    for part in parts:
        execute = _EXECUTE.fullmatch(part)
        if execute:
            values = _values(execute.group(2))
            sql = prepared[execute.group(1)]
            part = re.sub(r"\$(\d+)", lambda number: values[int(number.group(1)) - 1], sql)
        run.append(part)
    return run


def expanded(query: str) -> str:
    """`query` as one string of the statements it runs."""
    return ";\n".join(statements_run(query))


def _values(text: str) -> list[str]:
    """An EXECUTE's comma-separated values; commas inside quotes belong to their value."""
    values, start, quoted, escapes, index = [], 0, False, False, 0
    while index < len(text):
        char = text[index]
        if quoted:
            if escapes and char == "\\":
                index += 1
            elif char == "'":
                if text[index + 1 : index + 2] == "'":
                    index += 1
                else:
                    quoted = False
        elif char == "'":
            quoted, escapes = True, text[index - 1 : index] == "E"
        elif char == ",":
            values.append(text[start:index].strip())
            start = index + 1
        index += 1
    values.append(text[start:].strip())
    return values
