"""The scheduled tidy-up jobs (docs/jobs.md#what-runs): the beat schedule names registered tasks,
each task calls its service, and a real worker on Redis runs one against the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts import tasks
from accounts.models import APIKey, Subscription, UpstreamAccount
from accounts.services.upstream import upstream_account_pause_expired
from config.celery import app
from tests.factories import APIKeyFactory, SubscriptionFactory, UpstreamAccountFactory

REPO = Path(__file__).resolve().parents[2]
# This suite's Redis database index for Celery (each helper's tests keep to their own).
TEST_REDIS_URL = "redis://127.0.0.1:6379/7"


def test_every_beat_entry_names_a_registered_task():
    app.loader.import_default_modules()
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule, "the beat schedule is empty"
    for name, entry in schedule.items():
        assert entry["task"] in app.tasks, f"beat entry {name!r} names unknown task {entry['task']!r}"


def test_the_expiry_jobs_run_every_five_minutes_by_default():
    assert settings.CELERY_BEAT_SCHEDULE["expire-keys"]["schedule"] == 300
    assert settings.CELERY_BEAT_SCHEDULE["expire-subscriptions"]["schedule"] == 300
    assert settings.CELERY_BEAT_SCHEDULE["pause-expired-accounts"]["schedule"] == 300


@pytest.mark.django_db
def test_the_key_and_subscription_tasks_store_expired_on_what_has_expired():
    past = timezone.now() - timedelta(minutes=1)
    expired_key = APIKeyFactory(expires_at=past)
    live_key = APIKeyFactory(expires_at=timezone.now() + timedelta(days=1))
    ended = SubscriptionFactory(starts_at=past - timedelta(days=30), expires_at=past)
    running = SubscriptionFactory()

    assert tasks.expire_keys.delay().get() == 1  # eager on the embedded default
    assert tasks.expire_subscriptions.delay().get() == 1

    assert APIKey.objects.get(pk=expired_key.pk).status == APIKey.Status.EXPIRED
    assert APIKey.objects.get(pk=live_key.pk).status == APIKey.Status.ACTIVE
    assert Subscription.objects.get(pk=ended.pk).status == Subscription.Status.EXPIRED
    assert Subscription.objects.get(pk=running.pk).status == Subscription.Status.ACTIVE


@pytest.mark.django_db
def test_expired_accounts_that_ask_for_it_stop_being_scheduled():
    now = timezone.now()
    past = now - timedelta(minutes=1)
    asks = UpstreamAccountFactory(expires_at=past, auto_pause_on_expired=True)
    declines = UpstreamAccountFactory(expires_at=past, auto_pause_on_expired=False)
    not_yet = UpstreamAccountFactory(expires_at=now + timedelta(hours=1))
    never = UpstreamAccountFactory(expires_at=None)

    assert upstream_account_pause_expired(now=now) == 1

    schedulable = dict(UpstreamAccount.objects.values_list("pk", "schedulable"))
    assert schedulable == {asks.pk: False, declines.pk: True, not_yet.pk: True, never.pk: True}
    # Its status is untouched: it reads "expired" by its time, and the operator sees why it is paused.
    assert UpstreamAccount.objects.get(pk=asks.pk).status == UpstreamAccount.Status.ACTIVE
    # A second run finds nothing left to pause.
    assert upstream_account_pause_expired(now=now) == 0


@pytest.mark.django_db
def test_the_pause_task_calls_the_service():
    account = UpstreamAccountFactory(expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.pause_expired_accounts.delay().get() == 1
    assert UpstreamAccount.objects.get(pk=account.pk).schedulable is False


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def test_a_real_worker_on_redis_expires_a_key_in_the_database(transactional_db):
    """`celery -A config worker` as its own process, with Redis as the broker and the test
    database as its database: a task sent through Redis flips a key in PostgreSQL."""
    key = APIKeyFactory(expires_at=timezone.now() - timedelta(minutes=1))
    queue = f"tollgate-test-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "DATABASE_URL": _database_url(), "REDIS_URL": TEST_REDIS_URL}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "-Q", queue]
        + ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sender = Celery("probe", broker=TEST_REDIS_URL)
    try:
        sender.send_task("accounts.expire_keys", queue=queue)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            if APIKey.objects.filter(pk=key.pk, status=APIKey.Status.EXPIRED).exists():
                break
            time.sleep(0.2)
        assert APIKey.objects.get(pk=key.pk).status == APIKey.Status.EXPIRED, (
            "the worker did not run the task"
        )
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=30)
        sender.close()
        redis.Redis.from_url(TEST_REDIS_URL).delete(queue)
    assert "accounts.expire_keys" in output and "succeeded" in output, output
    assert "expired 1 API key(s)" in output, output
