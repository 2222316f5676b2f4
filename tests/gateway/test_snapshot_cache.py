"""The auth snapshot cache (docs/gateway.md#auth-snapshot): no database on the hot path for a known
key, one load for a flood, invalidation at once in this process and, through Redis, in others."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx2 as httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

from accounts.models import APIKey, UpstreamAccount, User
from accounts.services.keys import api_key_set_enabled
from accounts.services.users import user_balance_adjust
from gateway.limits import REDIS_PREFIX, RedisLimiter
from tests.factories import StaffFactory
from tests.fake_upstream import ROOT
from tests.gateway.conftest import gateway_app, ledger_rows, make_tenant
from tests.sent import statements_run

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
REDIS_TEST_URL = "redis://127.0.0.1:6379/12"
REDIS_LIMITS_URL = "redis://127.0.0.1:6379/2"


def chat(url: str, secret: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"}, timeout=30
    )


class QueryLog:
    """Every statement the gateway's database threads, its recorder thread and its event loop's
    hold connections (docs/gateway.md#holds-on-the-event-loop) run, with when it ran."""

    def __init__(self) -> None:
        self.statements: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        self.saw(sql)
        return execute(sql, params, many, context)

    def saw(self, sql: str) -> None:
        with self.lock:
            self.statements.append((time.time(), sql))

    def install(self) -> None:
        gateway_app().db.on_every_thread(lambda: connection.execute_wrappers.append(self))
        gateway_app().proxy.recorder.on_thread(lambda: connection.execute_wrappers.append(self))
        gateway_app().proxy.loop_holds.observers.append(self.saw)

    def remove(self) -> None:
        gateway_app().db.on_every_thread(lambda: connection.execute_wrappers.remove(self))
        gateway_app().proxy.recorder.on_thread(lambda: connection.execute_wrappers.remove(self))
        gateway_app().proxy.loop_holds.observers.remove(self.saw)

    def before(self, moment: float) -> list[str]:
        return [sql for at, sql in self.statements if at <= moment]

    def after(self, moment: float) -> list[str]:
        return [sql for at, sql in self.statements if at > moment]


@pytest.fixture
def query_log(gateway_url):
    log = QueryLog()
    log.install()
    yield log
    log.remove()


def shape(sql: str) -> str:
    """A statement's verb and table: 'UPDATE "accounts_apikey"'; a statement of data-modifying
    CTEs lists each of its steps: 'WITH UPDATE "accounts_apikey", INSERT "billing_pendingrequest"'."""
    words = sql.split()
    if words[0] == "WITH":
        words = [word.lstrip("(") for word in words]
        steps = [
            f"{verb} {words[index + (2 if verb in ('INSERT', 'DELETE') else 1)]}"
            for index, verb in enumerate(words)
            if verb in ("UPDATE", "INSERT", "DELETE") and words[index - 1] != "FOR"  # not a row lock
        ]
        return "WITH " + ", ".join(steps)
    return " ".join(word for word in words[:3] if word not in ("INTO", "SET"))[:40]


# The hold of a balance key on an account without a quota (billing.holds: one statement).
HOLD = 'WITH UPDATE "accounts_apikey", UPDATE "accounts_user", INSERT "billing_pendingrequest"'


@pytest.fixture
def redis_limits(gateway_url):
    """The in-thread gateway keeps its slots in Redis (DB 2) for one test, as with REDIS_URL."""
    proxy = gateway_app().proxy
    database_limiter = proxy.limiter
    redis.Redis.from_url(REDIS_LIMITS_URL).flushdb()
    proxy.limiter = RedisLimiter(REDIS_LIMITS_URL)
    yield
    proxy.limiter = database_limiter


def test_a_cached_key_costs_one_hold_transaction_before_the_response(
    fake_upstream, gateway_url, redis_limits, query_log
):
    tenant = make_tenant(fake_upstream, platform="openai")
    assert chat(gateway_url, tenant.secret).status_code == 200
    ledger_rows(1)
    cold = len(query_log.statements)
    assert cold > 0, "the first request loaded the snapshots (the harness sees queries)"

    assert chat(gateway_url, tenant.secret).status_code == 200
    ledger_rows(2)
    served = fake_upstream.last_request()
    second = query_log.statements[cold:]
    # Everything up to the upstream's last byte is the hot path: no snapshot load, only the hold
    # (docs/gateway.md#holds-and-settle). The recording comes after it and settles the hold.
    hot = [shape(sql) for at, sql in second if at <= served["started_at"]]
    # The counter statements go as one query string (docs/recording.md#batches): each counts.
    recording = [shape(part) for at, sql in second if at > served["ended_at"] for part in statements_run(sql)]
    # One statement: the key, the balance, the pending record. The account has no quota: nothing
    # held on it, so no lock on the row every key shares.
    assert hot == [HOLD]
    # One transaction after the response: ledger row, pending record, then key, rollup, balance
    # and account quota, the key and balance UPDATEs lowering their holds as they charge, and the
    # COMMIT in the same string. The key and account UPDATEs are wrapped (WITH) in the check that
    # they found their row, which stops the string before COMMIT if not.
    assert recording == [
        'INSERT "billing_usagelog"',
        'DELETE FROM "billing_pendingrequest"',
        'WITH UPDATE "accounts_apikey"',
        'INSERT "billing_usagerollup"',
        'UPDATE "accounts_user"',
        'WITH UPDATE "accounts_upstreamaccount"',
        "COMMIT",
    ]


def account_slots_taken(account_id: int) -> int:
    """Slots of the account still taken in Redis, once the releases in flight have landed."""
    client = redis.Redis.from_url(REDIS_LIMITS_URL)
    deadline = time.monotonic() + 3
    while (taken := client.zcard(f"{REDIS_PREFIX}account:{account_id}")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return taken


def test_the_first_accounts_slot_taken_beside_the_hold_is_given_back_when_the_hold_skips_or_refuses(
    fake_upstream, gateway_url, redis_limits
):
    # The first account's quota is spent: the hold skips it for the second, so the slot taken on
    # the first while the hold ran must be given back.
    tenant = make_tenant(
        fake_upstream, platform="openai", scenarios=("", ""), key_fields={"quota_usd": Decimal("1")}
    )
    first, second = tenant.accounts
    UpstreamAccount.objects.filter(pk=first.pk).update(
        concurrency=1,
        quota_limit_usd=Decimal("1"),
        quota_used_usd=Decimal("0.9999"),
        quota_held_usd=Decimal("0.5"),
    )
    UpstreamAccount.objects.filter(pk=second.pk).update(concurrency=1)
    assert chat(gateway_url, tenant.secret).status_code == 200
    assert [row.account_id for row in ledger_rows(1)] == [second.pk]
    assert (account_slots_taken(first.pk), account_slots_taken(second.pk)) == (0, 0)
    # Now the key's own hold does not fit (another request's hold is on it): refused, and the
    # slot taken meanwhile on the first candidate (whichever the scheduler puts first) is given back.
    UpstreamAccount.objects.filter(pk=first.pk).update(quota_used_usd=0, quota_held_usd=0)
    APIKey.objects.filter(pk=tenant.key.pk).update(quota_used_usd=Decimal("0.6"), held_usd=Decimal("0.5"))
    refused = chat(gateway_url, tenant.secret)
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "API_KEY_QUOTA_EXHAUSTED")
    assert (account_slots_taken(first.pk), account_slots_taken(second.pk)) == (0, 0)


def test_requests_arriving_together_on_a_cold_cache_load_the_channel_and_the_accounts_once(
    fake_upstream, gateway_url, query_log
):
    tenant = make_tenant(fake_upstream, platform="openai", user_fields={"concurrency": 0})
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=0)
    start = threading.Barrier(16)

    def send(_index: int) -> int:
        start.wait()
        return chat(gateway_url, tenant.secret).status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(send, range(16))) == [200] * 16
    selects = [sql for _at, sql in query_log.statements if sql.startswith("SELECT")]
    assert sum('FROM "accounts_upstreamaccount"' in sql for sql in selects) == 1
    assert sum('FROM "channels_channel"' in sql for sql in selects) == 1


def test_without_redis_the_hot_path_queries_only_the_slot_leases_and_the_hold(
    fake_upstream, gateway_url, query_log
):
    # docs/gateway.md#shared-limits: the database store takes the user's and the account's slot
    # on the way in; nothing else is read before the upstream answers.
    tenant = make_tenant(fake_upstream, platform="openai")
    assert chat(gateway_url, tenant.secret).status_code == 200
    ledger_rows(1)
    cold = len(query_log.statements)
    assert chat(gateway_url, tenant.secret).status_code == 200
    ledger_rows(2)
    served = fake_upstream.last_request()
    hot = [
        sql
        for at, sql in query_log.statements[cold:]
        if at <= served["started_at"] and "SAVEPOINT" not in sql  # each insert may lose a race
    ]
    slots = [sql for sql in hot if '"gateway_slotlease"' in sql]
    assert sum(sql.startswith("INSERT") for sql in slots) == 2  # the user's slot, the account's
    # Besides the slots, only the hold (docs/gateway.md#holds-and-settle).
    assert [shape(sql) for sql in hot if sql not in slots] == [HOLD]


def test_a_flood_of_unknown_keys_costs_one_query_per_distinct_key(gateway_url, query_log):
    for _ in range(20):
        assert chat(gateway_url, "sk-not-a-key").status_code == 401
    assert len(query_log.statements) == 1
    for index in range(5):
        chat(gateway_url, f"sk-unknown-{index}")
    assert len(query_log.statements) == 6


def test_concurrent_misses_for_one_key_load_it_once(fake_upstream, gateway_url):
    # No concurrency limits in the way: 0 is unlimited for the user and the account.
    tenant = make_tenant(fake_upstream, platform="openai", user_fields={"concurrency": 0})
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=0)
    stats = gateway_app().auth.stats
    loads = stats["db_loads"]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: chat(gateway_url, tenant.secret).status_code, range(16)))
    assert statuses == [200] * 16
    assert stats["db_loads"] - loads == 1


def test_a_change_in_the_console_services_reaches_the_next_request(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai")
    assert chat(gateway_url, tenant.secret).status_code == 200
    api_key_set_enabled(key_id=tenant.key.pk, enabled=False)
    assert chat(gateway_url, tenant.secret).json()["error"]["code"] == "API_KEY_DISABLED"
    api_key_set_enabled(key_id=tenant.key.pk, enabled=True)
    assert chat(gateway_url, tenant.secret).status_code == 200


def test_a_balance_spent_by_a_charge_refuses_the_next_request(fake_upstream, gateway_url):
    # $0.0003 of balance; 100 words of gpt-4o at its catalog price ($10/MTok out) cost more.
    tenant = make_tenant(
        fake_upstream, platform="openai", balance=Decimal("0.0003"), scenarios=("words=100",)
    )
    assert chat(gateway_url, tenant.secret).status_code == 200
    ledger_rows(1)
    assert User.objects.get(pk=tenant.user.pk).balance < 0
    response = chat(gateway_url, tenant.secret)
    assert response.json()["error"]["code"] == "INSUFFICIENT_BALANCE"
    user_balance_adjust(
        user_id=tenant.user.pk, operation="add", amount=Decimal("5"), note="top-up", changed_by=None
    )
    assert chat(gateway_url, tenant.secret).status_code == 200


def test_a_key_quota_spent_by_a_charge_refuses_the_next_request(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai", key_fields={"quota_usd": Decimal("0.0001")})
    assert chat(gateway_url, tenant.secret).status_code == 200
    ledger_rows(1)
    assert APIKey.objects.get(pk=tenant.key.pk).status == "quota_exhausted"
    assert chat(gateway_url, tenant.secret).json()["error"]["code"] == "API_KEY_QUOTA_EXHAUSTED"


# --- Across processes --------------------------------------------------------------------------------


class Worker:
    """One uvicorn process serving config.asgi (console and gateway) on the test database and Redis."""

    def __init__(self, port: int) -> None:
        database = settings.DATABASES["default"]
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
            "REDIS_URL": REDIS_TEST_URL,
            "GATEWAY_SNAPSHOT_TTL": "300",  # so only an invalidation can make it forget
        }
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--port",
                str(port),
                "--lifespan",
                "on",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
        )

    def wait(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/v1/models", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_disabling_a_key_in_the_console_refuses_it_at_once_in_another_process(
    fake_upstream, transactional_db
):
    store = redis.Redis.from_url(REDIS_TEST_URL)
    store.flushdb()
    tenant = make_tenant(fake_upstream, platform="openai")
    staff = StaffFactory()
    # Hashed with the default hasher the worker processes know (this process's tests use MD5).
    hasher = PBKDF2PasswordHasher()
    User.objects.filter(pk=staff.pk).update(password=hasher.encode("s3cret-pass-phrase", hasher.salt()))
    console, gateway = Worker(free_port()), Worker(free_port())
    try:
        console.wait()
        gateway.wait()
        # The other process knows the key: in its own memory and in Redis.
        assert chat(gateway.url, tenant.secret).status_code == 200
        assert store.exists(f"snap:key:{tenant.key.key_hash}")

        with httpx.Client(base_url=console.url, follow_redirects=True) as staff_browser:
            staff_browser.get("/login/")
            token = staff_browser.cookies["csrftoken"]
            signed_in = staff_browser.post(
                "/login/",
                data={
                    "username": staff.email,
                    "password": "s3cret-pass-phrase",
                    "csrfmiddlewaretoken": token,
                },
            )
            assert signed_in.status_code == 200 and "/login/" not in str(signed_in.url)
            disabled = staff_browser.post(
                f"/keys/{tenant.key.pk}/status",
                headers={"X-CSRFToken": staff_browser.cookies["csrftoken"], "HX-Request": "true"},
            )
            assert disabled.status_code in (200, 204), disabled.text
        assert APIKey.objects.get(pk=tenant.key.pk).status == "disabled"
        assert not store.exists(f"snap:key:{tenant.key.key_hash}"), "the Redis copy went with the commit"

        refused = chat(gateway.url, tenant.secret)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "API_KEY_DISABLED"
    finally:
        console.stop()
        gateway.stop()
        store.flushdb()
