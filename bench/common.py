"""Shared set-up for the benchmarks: Django on PostgreSQL, in a scratch database.

Each benchmark creates `<DATABASE_URL name>_bench`, migrates it, runs, and drops it, so it
never touches the database it was pointed at (nor the test database pytest uses).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit(
            "Set DATABASE_URL to a PostgreSQL database, e.g. postgres://postgres@127.0.0.1:5432/tollgate"
        )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.test.utils import setup_test_environment

    # DEBUG off (no query log), and the test client may answer as "testserver". Without debug=False
    # it would keep settings.DEBUG, which is on by default outside production.
    setup_test_environment(debug=False)


@contextmanager
def scratch_database() -> Iterator[str]:
    from django.conf import settings
    from django.db import connection

    name = settings.DATABASES["default"]["NAME"] + "_bench"
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = name
    original = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield name
    finally:
        connection.creation.destroy_test_db(original, verbosity=0)


def machine() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}) · "
        f"Python {platform.python_version()} · PostgreSQL {version}"
    )
