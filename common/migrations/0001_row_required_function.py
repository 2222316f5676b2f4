"""The SQL function `common.statements.run_at_once` guards a committing query string with.

PostgreSQL only: a batch's counter statements and their COMMIT go to the server as one query
string, so a statement that found no row must fail inside the database, before the COMMIT runs
(docs/recording.md#batches). SQLite never sends such a string and gets nothing.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION tollgate_row_required(row_changed boolean, statement integer) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT row_changed THEN
        RAISE EXCEPTION 'tollgate_row_required: statement % changed no row', statement
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN true;
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS tollgate_row_required(boolean, integer)"


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [migrations.RunPython(create, drop, elidable=False)]
