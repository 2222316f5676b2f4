"""/healthz: plain HTTP allowed, 503 naming what is down, one log line per change of state."""

from __future__ import annotations

import json
import logging

import pytest

from config import health
from tests.test_settings import manage

CLOSED_PORT = 1  # nothing listens on 127.0.0.1:1


@pytest.fixture(autouse=True)
def _fresh_health_state():
    health._last_down = ()
    yield
    health._last_down = ()


@pytest.mark.django_db
def test_it_answers_ok_while_the_database_answers(client, settings):
    settings.REDIS_URL = ""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "down": [], "checked": ["database"]}


@pytest.mark.django_db
def test_it_is_exempt_from_the_https_redirect(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    # Everything else still goes to https.
    response = client.get("/login/")
    assert response.status_code == 301 and response["Location"].startswith("https://")


@pytest.mark.django_db
def test_it_checks_redis_when_configured_and_logs_each_change_once(client, settings, caplog):
    settings.REDIS_URL = f"redis://127.0.0.1:{CLOSED_PORT}/0"
    with caplog.at_level(logging.INFO, logger="tollgate.health"):
        for _ in range(3):
            response = client.get("/healthz")
            assert response.status_code == 503
            assert response.json() == {"status": "down", "down": ["redis"], "checked": ["database", "redis"]}
        settings.REDIS_URL = "redis://127.0.0.1:6379/10"
        for _ in range(2):
            assert client.get("/healthz").status_code == 200
    lines = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0][0] == "ERROR" and lines[0][1].startswith("Health check: redis is down (")
    assert lines[1] == ("WARNING", "Health check: redis answers again")
    assert all(record.exc_info is None for record in caplog.records)


def test_a_database_outage_answers_503_and_logs_once_without_a_traceback(tmp_path):
    script = (
        "from django.test import Client\n"
        "client = Client(HTTP_HOST='localhost')\n"
        "for _ in range(3):\n"
        "    response = client.get('/healthz')\n"
        "    print(response.status_code, response.content.decode())\n"
    )
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        script,
        env={
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{CLOSED_PORT}/tollgate",
            "REDIS_URL": f"redis://127.0.0.1:{CLOSED_PORT}/0",
            "TOLLGATE_VAR_DIR": str(tmp_path),
        },
    )
    probes = result.stdout.splitlines()
    assert len(probes) == 3, result.stdout + result.stderr
    for probe in probes:
        status, body = probe.split(" ", 1)
        assert status == "503"
        assert json.loads(body) == {
            "status": "down",
            "down": ["database", "redis"],
            "checked": ["database", "redis"],
        }
    assert result.stderr.count("Health check: database is down") == 1, result.stderr
    assert result.stderr.count("Health check: redis is down") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "Service Unavailable" not in result.stderr
