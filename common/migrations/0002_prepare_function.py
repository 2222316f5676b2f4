"""The SQL function `common.statements.run_at_once` prepares its statements with.

PostgreSQL only. A query string of run_at_once executes each statement as `EXECUTE name(…)`,
preceded by `SELECT tollgate_prepare(name, parameter types, text)`, which prepares the ones the
session does not have yet: PostgreSQL then parses and plans each statement once per session
instead of in every batch. Idempotent, so nothing outside the session needs to remember what it prepared (psycopg
sends `DEALLOCATE ALL` after a rollback on a connection where it prepared statements of its own).
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION tollgate_prepare(statement_name text, parameter_types text, statement text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_prepared_statements p WHERE p.name = statement_name) THEN
        RETURN false;
    END IF;
    EXECUTE format('PREPARE %I (%s) AS %s', statement_name, parameter_types, statement);
    RETURN true;
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS tollgate_prepare(text, text, text)"


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("common", "0001_row_required_function")]
    operations = [migrations.RunPython(create, drop, elidable=False)]
