"""The embedded default and the production settings, each in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "REDIS_URL",
            "TOLLGATE_ENV",
            "SECRET_KEY",
            "DJANGO_SETTINGS_MODULE",
            "CREDENTIALS_KEYS",
            "DJANGO_ALLOW_ASYNC_UNSAFE",
        )
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_embedded_default_migrates_a_fresh_sqlite_and_seeds_demo_data(tmp_path):
    env = {"TOLLGATE_VAR_DIR": str(tmp_path)}
    migrate = manage("migrate", "--noinput", env=env)
    assert migrate.returncode == 0, migrate.stderr
    assert (tmp_path / "tollgate.sqlite3").exists()
    first = manage("seed_demo", env=env)
    assert first.returncode == 0, first.stderr
    assert "Sign in at http://127.0.0.1:8000/ as admin@tollgate.local / " in first.stdout
    second = manage("seed_demo", env=env)  # idempotent: same login, nothing duplicated
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
    third = manage(
        "shell",
        "-c",
        "from accounts.models import User, BalanceHistory;"
        "print(User.objects.count(), BalanceHistory.objects.count())",
        env=env,
    )
    manage("seed_demo", env=env)
    fourth = manage(
        "shell",
        "-c",
        "from accounts.models import User, BalanceHistory;"
        "print(User.objects.count(), BalanceHistory.objects.count())",
        env=env,
    )
    assert third.stdout == fourth.stdout and int(third.stdout.split()[0]) >= 5


def test_production_settings_pass_the_deploy_check(tmp_path):
    env = {
        "TOLLGATE_ENV": "production",
        "SECRET_KEY": "x" * 30 + "-production-secret-key-with-enough-entropy-9f8e7d6c",
        "ALLOWED_HOSTS": "tollgate.example.com",
        "CREDENTIALS_KEYS": "a-long-credentials-passphrase-for-the-test",
        "TOLLGATE_VAR_DIR": str(tmp_path),
    }
    check = manage("check", "--deploy", "--fail-level", "DEBUG", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "System check identified no issues" in check.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    check = manage("check", env={"TOLLGATE_ENV": "production", "TOLLGATE_VAR_DIR": str(tmp_path)})
    assert check.returncode != 0
    assert "SECRET_KEY must be set" in check.stderr


def test_migrations_match_the_models():
    check = manage(
        "makemigrations", "--check", "--dry-run", env={"DATABASE_URL": os.environ.get("DATABASE_URL", "")}
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.django_db
def test_every_response_carries_csp_and_security_headers(client):
    response = client.get("/login/")
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "'nonce-" in csp and "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"' in response.content.decode()  # htmx's script tag carries it


@pytest.mark.django_db
def test_htmx_requests_carry_the_csrf_token_in_body_headers(staff_client):
    page = staff_client.get("/users/").content.decode()
    assert '<body hx-headers=\'{"X-CSRFToken": "' in page


def test_redis_url_makes_redis_the_cache_and_the_celery_broker(tmp_path):
    script = (
        "from django.conf import settings; from django.core.cache import cache;"
        "cache.set('tollgate-settings-test', 'round-trip', 30);"
        "print(cache.get('tollgate-settings-test'), settings.CACHES['default']['BACKEND'],"
        " settings.CELERY_BROKER_URL, settings.CELERY_TASK_ALWAYS_EAGER, settings.SCHEDULED_JOBS_ENABLED)"
    )
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        script,
        env={"REDIS_URL": "redis://127.0.0.1:6379/3", "TOLLGATE_VAR_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "round-trip",
        "django.core.cache.backends.redis.RedisCache",
        "redis://127.0.0.1:6379/3",
        "False",
        "True",
    ]


def test_without_redis_tasks_run_in_process(tmp_path):
    script = "from django.conf import settings; print(settings.CELERY_TASK_ALWAYS_EAGER, settings.SCHEDULED_JOBS_ENABLED)"
    result = manage("shell", "--no-imports", "-c", script, env={"TOLLGATE_VAR_DIR": str(tmp_path)})
    assert result.stdout.split() == ["True", "False"]


def test_the_server_error_page_renders_without_a_database(rf):
    from console.views.errors import server_error

    response = server_error(rf.get("/"))
    assert response.status_code == 500
    assert b"Tollgate hit an error handling this request." in response.content


def test_the_embedded_default_records_last_use_on_accounts(tmp_path):
    # SQLite's MAX() returns NULL when any argument is NULL; the quota charge must still stamp it.
    env = {"TOLLGATE_VAR_DIR": str(tmp_path)}
    assert manage("migrate", "--noinput", env=env).returncode == 0
    script = (
        "from decimal import Decimal; from accounts.models import UpstreamAccount;"
        "from accounts.services.upstream import upstream_account_quota_charge;"
        "a = UpstreamAccount.objects.create(name='x', platform='anthropic', type='apikey');"
        "upstream_account_quota_charge(account_id=a.pk, amount_usd=Decimal('0.5'));"
        "a.refresh_from_db(); print(a.last_used_at is not None, a.quota_used_usd)"
    )
    result = manage("shell", "--no-imports", "-c", script, env=env)
    assert result.stdout.split() == ["True", "0.50000000"], result.stderr


@pytest.mark.parametrize(("max_age", "health_checks"), [("0", "False"), ("60", "True")])
def test_kept_database_connections_are_checked_before_reuse(max_age, health_checks, tmp_path):
    # Without the check, the first request per worker after a database restart is a 500.
    script = "from django.conf import settings; d = settings.DATABASES['default']; print(d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'])"
    env = {
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/tollgate",
        "DB_CONN_MAX_AGE": max_age,
        "TOLLGATE_VAR_DIR": str(tmp_path),
    }
    result = manage("shell", "--no-imports", "-c", script, env=env)
    assert result.stdout.split() == [max_age, health_checks], result.stderr


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, "True"),  # the embedded default: a local fake upstream on 127.0.0.1 works
        ({"TOLLGATE_ENV": "production"}, "False"),
        ({"TOLLGATE_ENV": "production", "UPSTREAM_ALLOW_PRIVATE_NETWORKS": "true"}, "True"),
        ({"UPSTREAM_ALLOW_PRIVATE_NETWORKS": "false"}, "False"),
    ],
)
def test_private_upstreams_are_allowed_by_the_embedded_default_and_refused_in_production(
    tmp_path, env, allowed
):
    env = {
        "TOLLGATE_VAR_DIR": str(tmp_path),
        "SECRET_KEY": "x" * 50,
        "CREDENTIALS_KEYS": "a-long-credentials-passphrase-for-the-test",
        **env,
    }
    script = "from django.conf import settings; print(settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS)"
    result = manage("shell", "--no-imports", "-c", script, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [allowed]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be 'plain' or 'json'"),
        ({"METRICS_ALLOWED_IPS": "10.0.0.0/8,intranet"}, "METRICS_ALLOWED_IPS: 'intranet' is not an IP"),
    ],
)
def test_a_log_format_or_metrics_address_it_does_not_understand_stops_the_start(tmp_path, env, message):
    check = manage("check", env={"TOLLGATE_VAR_DIR": str(tmp_path), **env})
    assert check.returncode != 0
    assert message in check.stderr
