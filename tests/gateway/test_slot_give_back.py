"""Every concurrency slot a request took is given back however the request ends
(docs/gateway.md#shared-limits): refused after its admission, refused by its hold, passed over,
failed over, answered with an upstream error, left by its client, cut by its upstream.

Requests go through the gateway with the official SDKs against the fake upstream; what is left
taken is read from the store itself: the in-process gateway's `gateway.SlotLease` rows (the
database store, as no REDIS_URL is set), and the sorted sets of a gateway process on Redis (DB 13).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import openai
import orjson
import pytest
import redis
from django.db import connection

from accounts.models import APIKey, GroupAccount, UpstreamAccount
from accounts.services.upstream import upstream_account_create
from accounts.snapshots import key_snapshot_load_by_id
from gateway.admission import admit
from gateway.auth import SnapshotCache
from gateway.db import DatabaseThreads
from gateway.incoming import ROUTES
from gateway.limits import REDIS_PREFIX, DatabaseLimiter, Limit, RedisLimiter
from gateway.models import SlotLease
from gateway.proxy import Proxy, _abandon
from gateway.recorder import BatchRecorder
from gateway.upstream_http import UpstreamClient
from tests import event_loop
from tests.factories import (
    APIKeyFactory,
    ChannelFactory,
    ChannelGroupFactory,
    GroupFactory,
    ModelPricingFactory,
    UserFactory,
)
from tests.gateway.conftest import ledger_rows, make_tenant, openai_sdk
from tests.gateway.processes import GatewayProcess

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = "redis://127.0.0.1:6379/13"
QUESTION = [{"role": "user", "content": "Say hello to the toll gate."}]


def one_at_a_time(fake_upstream, scenarios: tuple[str, ...] = ("",)):
    """A tenant whose user, key and accounts each allow one request in flight."""
    tenant = make_tenant(
        fake_upstream,
        platform="openai",
        scenarios=scenarios,
        key_fields={"concurrency": 1},
        user_fields={"concurrency": 1},
    )
    UpstreamAccount.objects.filter(pk__in=[account.pk for account in tenant.accounts]).update(concurrency=1)
    return tenant


def without_room(account: UpstreamAccount) -> None:
    """The account's quota is not used up, so it stays a candidate, but other requests hold all
    of it: a hold finds no room there."""
    UpstreamAccount.objects.filter(pk=account.pk).update(
        quota_limit_usd=Decimal("1"), quota_held_usd=Decimal("1")
    )


def scopes(tenant, *accounts: UpstreamAccount) -> list[str]:
    return [
        f"user:{tenant.user.pk}",
        f"key:{tenant.key.pk}",
        *(f"account:{account.pk}" for account in (*tenant.accounts, *accounts)),
    ]


def slots_left(tenant, *accounts: UpstreamAccount, timeout: float = 5.0) -> list[str]:
    """The tenant's scopes still holding a slot: [] once every one is given back (in the
    background, just after the response), else what is left after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(
            SlotLease.objects.filter(scope__in=scopes(tenant, *accounts)).values_list("scope", flat=True)
        )
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def chat(url: str, secret: str, *, model: str = "gpt-4o", stream: bool = False, **options) -> tuple:
    """One chat through the gateway with the OpenAI SDK: (status, refusal code)."""
    try:
        answer = openai_sdk(url, secret).chat.completions.create(
            model=model, messages=QUESTION, stream=stream, **options
        )
        if stream:
            for _ in answer:
                pass
        return 200, None
    except openai.APIStatusError as error:
        return error.status_code, error.body.get("code") if isinstance(error.body, dict) else None


def account_at(url: str, *, name: str) -> UpstreamAccount:
    return upstream_account_create(
        fields={"name": name, "platform": "openai", "type": "apikey", "concurrency": 1},
        credentials={"api_key": "sk-upstream-openai", "base_url": url},
        actor=None,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_model_the_channel_does_not_allow_gives_back_the_slots_its_admission_took(
    fake_upstream, gateway_url
):
    tenant = one_at_a_time(fake_upstream)
    channel = ChannelFactory(restrict_models=True)
    ChannelGroupFactory(channel=channel, group=tenant.group)
    ModelPricingFactory(channel=channel, platform="openai", models=["gpt-4o"])
    for _ in range(2):
        status, code = chat(gateway_url, tenant.secret, model="gpt-4.1")
        assert (status, code) == (404, "MODEL_NOT_ALLOWED")
        assert slots_left(tenant) == []
    assert chat(gateway_url, tenant.secret) == (200, None)


def test_a_request_its_hold_refuses_gives_back_its_slots_and_the_account_slot_taken_beside_the_hold(
    fake_upstream, gateway_url
):
    tenant = one_at_a_time(fake_upstream)
    APIKey.objects.filter(pk=tenant.key.pk).update(quota_usd=Decimal("1"), held_usd=Decimal("1"))
    # Held beside the admission, then once more after it: each try took the account's slot.
    assert chat(gateway_url, tenant.secret) == (429, "API_KEY_QUOTA_EXHAUSTED")
    assert slots_left(tenant) == []
    # Held after the admission this time (the key was just refused by a hold).
    assert chat(gateway_url, tenant.secret) == (429, "API_KEY_QUOTA_EXHAUSTED")
    assert slots_left(tenant) == []
    APIKey.objects.filter(pk=tenant.key.pk).update(held_usd=0)
    assert chat(gateway_url, tenant.secret) == (200, None)


def test_an_account_the_hold_passes_over_for_its_quota_gives_back_the_slot_taken_beside_the_hold(
    fake_upstream, gateway_url
):
    tenant = one_at_a_time(fake_upstream, scenarios=("", ""))
    short, roomy = tenant.accounts
    without_room(short)
    assert chat(gateway_url, tenant.secret) == (200, None)
    assert ledger_rows(1)[0].account_id == roomy.pk
    assert slots_left(tenant) == []


def test_an_account_without_room_for_the_moved_hold_gives_back_its_slot(fake_upstream, gateway_url):
    # The request holds on the first account (no quota), which answers 500; failing over, the
    # second has no room for the hold moved there: it is not tried, its slot is given back.
    tenant = one_at_a_time(fake_upstream, scenarios=("status=500", ""))
    without_room(tenant.accounts[1])
    status, code = chat(gateway_url, tenant.secret)
    assert (status, code) == (503, "NO_ACCOUNT_AVAILABLE")
    assert slots_left(tenant) == []


def test_an_account_the_hold_fails_to_move_to_gives_back_its_slot(fake_upstream, gateway_url):
    # The request holds on the first account's quota; while it waits there, the account's held
    # amount is lowered under it (as a racing write could), so that moving the hold to the second
    # account on failover fails in the database (the held amount may not go below 0).
    tenant = one_at_a_time(fake_upstream, scenarios=("latency=5000,status=500", ""))
    first = tenant.accounts[0]
    UpstreamAccount.objects.filter(pk=first.pk).update(quota_limit_usd=Decimal("100"))
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(chat, gateway_url, tenant.secret)
        fake_upstream.wait_for(lambda rows: len(rows) == 1, timeout=20)
        assert UpstreamAccount.objects.get(pk=first.pk).quota_held_usd > 0
        UpstreamAccount.objects.filter(pk=first.pk).update(quota_held_usd=0)
        # The database error, not the second account's refusal (NO_ACCOUNT_AVAILABLE, 503).
        assert answer.result(timeout=30) == (500, "INTERNAL_ERROR")
    assert slots_left(tenant) == []


def test_an_upstream_error_passed_on_to_the_client_gives_back_every_slot(fake_upstream, gateway_url):
    tenant = one_at_a_time(fake_upstream, scenarios=("status=400",))
    for _ in range(2):
        assert chat(gateway_url, tenant.secret)[0] == 400
        assert slots_left(tenant) == []
    assert len(fake_upstream.requests()) == 2


def test_accounts_that_fail_give_back_their_slots_to_the_request_the_next_one_serves(
    fake_upstream, gateway_url
):
    tenant = one_at_a_time(fake_upstream, scenarios=("status=500", ""))
    unreachable = account_at(f"http://127.0.0.1:{closed_port()}", name="unreachable")
    GroupAccount.objects.create(group=tenant.group, account=unreachable, priority=1)
    for _ in range(2):
        assert chat(gateway_url, tenant.secret) == (200, None)
        assert slots_left(tenant, unreachable) == []
    assert {row.account_id for row in ledger_rows(2)} == {tenant.accounts[1].pk}


def test_a_request_every_account_fails_gives_back_every_slot(fake_upstream, gateway_url):
    tenant = one_at_a_time(fake_upstream, scenarios=("status=500", "status=503"))
    for _ in range(2):
        assert chat(gateway_url, tenant.secret)[0] >= 500
        assert slots_left(tenant) == []


def test_a_client_that_leaves_before_the_first_byte_gives_back_its_slots(fake_upstream, gateway_url):
    tenant = one_at_a_time(fake_upstream, scenarios=("latency=3000",))
    impatient = openai_sdk(gateway_url, tenant.secret).with_options(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True)
    # Given back as soon as the gateway notices, not when the upstream would have answered.
    assert slots_left(tenant, timeout=2) == []
    log = fake_upstream.wait_for(lambda log: log and log[-1]["outcome"] != "in_progress")
    assert log[-1]["outcome"] == "client_disconnected"


def test_a_client_that_leaves_mid_stream_gives_back_its_slots_once_the_upstream_has_ended(
    fake_upstream, gateway_url
):
    tenant = one_at_a_time(fake_upstream, scenarios=("slow=300,words=6",))
    chunks = openai_sdk(gateway_url, tenant.secret).chat.completions.create(
        model="gpt-4o", messages=QUESTION, stream=True
    )
    next(iter(chunks))
    chunks.close()  # leaving: the connection closes here
    fake_upstream.wait_for(lambda rows: rows and rows[-1]["outcome"] == "completed", timeout=20)
    assert slots_left(tenant) == []
    assert ledger_rows(1)[0].outcome == "client_disconnected"
    assert chat(gateway_url, tenant.secret, stream=True) == (200, None)


def test_a_stream_its_upstream_drops_gives_back_its_slots(fake_upstream, gateway_url):
    tenant = one_at_a_time(fake_upstream, scenarios=("drop_after=2",))
    chunks = openai_sdk(gateway_url, tenant.secret).chat.completions.create(
        model="gpt-4o", messages=QUESTION, stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in chunks:
            pass
    assert slots_left(tenant) == []
    assert ledger_rows(1)[0].outcome == "upstream_cut"


class TakeOnItsWay:
    """Stops the first statement on `gateway.SlotLease` (a take) on a database thread: `started`
    is set once it has begun there, and it goes on once `proceed` is set."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.proceed = threading.Event()

    def __call__(self, execute, sql, params, many, context):
        if "slotlease" in sql.lower() and not self.started.is_set():
            self.started.set()
            assert self.proceed.wait(timeout=20)
        return execute(sql, params, many, context)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 20)


def one_slot_key(secret: str = "sk-take-on-its-way") -> APIKey:
    return APIKeyFactory(
        concurrency=1,
        user=UserFactory(concurrency=1),
        group=GroupFactory(platform="openai"),
        key_hash=hashlib.sha256(secret.encode()).hexdigest(),
    )


def key_slots(threads: DatabaseThreads, key: APIKey):
    """The key's and its user's scopes still holding a slot, read on the database thread."""
    return threads.run(
        lambda: sorted(
            SlotLease.objects.filter(scope__in=[f"key:{key.pk}", f"user:{key.user_id}"]).values_list(
                "scope", flat=True
            )
        )
    )


def test_a_request_that_stops_while_its_admission_is_on_its_way_gives_back_the_slots_taken_after_all():
    # The admission's take is already on its way to the store (here a database thread; with Redis,
    # the script already sent) when the request stops (an error beside it, or a cancellation):
    # cancelling the admission cannot undo the take, so its slots are given back once it answers.
    key = one_slot_key()
    snapshot = key_snapshot_load_by_id(key.pk)
    threads = DatabaseThreads(1)
    take = TakeOnItsWay()
    threads.on_every_thread(lambda: connection.execute_wrappers.append(take))

    async def scenario() -> list[str]:
        limiter = DatabaseLimiter(threads)
        admission = asyncio.Task(
            admit(
                key=snapshot,
                channel=None,
                now=datetime.now(UTC),
                client_ip="127.0.0.1",
                protocol="openai",
                model="gpt-4o",
                mapped_model="gpt-4o",
                limiter=limiter,
                request_id="req_stopped",
            ),
            loop=asyncio.get_running_loop(),
            eager_start=True,
        )
        await take.wait_started()
        _abandon(admission)
        take.proceed.set()
        await asyncio.wait([admission])
        await asyncio.sleep(0)  # the give-back starts from the admission's done-callback
        await limiter.drain(timeout=5)
        return await key_slots(threads, key)

    try:
        assert event_loop.run(scenario()) == []
    finally:
        take.proceed.set()
        threads.shutdown()


def test_a_request_cancelled_while_it_awaits_its_admission_gives_back_the_slots_taken_after_all():
    secret = "sk-cancelled-while-admitted"
    key = one_slot_key(secret)
    threads = DatabaseThreads(1)
    take = TakeOnItsWay()
    threads.on_every_thread(lambda: connection.execute_wrappers.append(take))
    body = orjson.dumps({"model": "gpt-4o", "messages": QUESTION})

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        raise AssertionError(f"nothing is sent: {message}")

    async def scenario() -> list[str]:
        auth = SnapshotCache(db=threads)
        await auth.start()
        recorder = BatchRecorder(size=1, wait=0)
        proxy = Proxy(upstream_client=UpstreamClient(limit=1), db=threads, auth=auth, recorder=recorder)
        try:
            request = asyncio.ensure_future(
                proxy.handle(
                    route=ROUTES["/v1/chat/completions"],
                    protocol="openai",
                    secret=secret,
                    headers={},
                    client_ip="127.0.0.1",
                    request_id="req_cancelled",
                    started=time.monotonic(),
                    receive=receive,
                    send=send,
                )
            )
            await take.wait_started()
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            take.proceed.set()
            # A drain (shutdown) waits for the admission left on its way and for its give-back.
            await proxy.drain(timeout=5)
            return await key_slots(threads, key)
        finally:
            recorder.stop()
            await auth.stop()

    try:
        assert event_loop.run(scenario()) == []
    finally:
        take.proceed.set()
        threads.shutdown()


def test_background_work_that_fails_is_logged_when_it_fails(caplog):
    threads = DatabaseThreads(1)

    async def failing() -> None:
        raise RuntimeError("the give-back failed")

    async def scenario() -> int:
        auth = SnapshotCache(db=threads)
        recorder = BatchRecorder(size=1, wait=0)
        proxy = Proxy(upstream_client=UpstreamClient(limit=1), db=threads, auth=auth, recorder=recorder)
        try:
            proxy._background(failing())
            for _ in range(3):
                await asyncio.sleep(0)
            return len(proxy.recordings)
        finally:
            recorder.stop()

    try:
        with caplog.at_level(logging.ERROR, logger="gateway"):
            assert event_loop.run(scenario()) == 0
    finally:
        threads.shutdown()
    [record] = [
        record for record in caplog.records if record.getMessage() == "background work failed (failing)"
    ]
    assert str(record.exc_info[1]) == "the give-back failed"


# --- On Redis -------------------------------------------------------------------------------------


@pytest.fixture
def redis_gateway(django_db_setup):
    plain = redis.Redis.from_url(REDIS_URL)
    plain.flushdb()
    process = GatewayProcess(redis_url=REDIS_URL)
    try:
        process.wait()
        yield process, plain
    finally:
        process.stop()
        plain.flushdb()
        plain.close()


def redis_slots_left(plain: redis.Redis, tenant, timeout: float = 5.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        left = {scope: plain.zcard(REDIS_PREFIX + scope) for scope in scopes(tenant)}
        left = {scope: count for scope, count in left.items() if count}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_on_redis_a_failed_over_or_refused_request_leaves_no_member_in_any_scope(
    fake_upstream, redis_gateway
):
    process, plain = redis_gateway
    tenant = one_at_a_time(fake_upstream, scenarios=("status=500", ""))
    assert chat(process.url, tenant.secret) == (200, None)
    assert redis_slots_left(plain, tenant) == {}
    rejected = one_at_a_time(fake_upstream, scenarios=("status=400",))
    assert chat(process.url, rejected.secret)[0] == 400
    assert redis_slots_left(plain, rejected) == {}
    # The hold reads the key's row itself: refused at once, whatever that process has cached.
    APIKey.objects.filter(pk=tenant.key.pk).update(quota_usd=Decimal("1"), held_usd=Decimal("1"))
    assert chat(process.url, tenant.secret) == (429, "API_KEY_QUOTA_EXHAUSTED")
    assert redis_slots_left(plain, tenant) == {}
    assert len(ledger_rows(2, timeout=30)) == 2


def test_a_give_back_redis_cannot_take_still_frees_the_slot_counted_in_the_process(caplog, settings):
    # Redis is unreachable: the slot is counted in this process, and giving it back there does
    # not wait on (nor fail with) the Redis call.
    settings.GATEWAY_REDIS_TIMEOUT = 0.5
    one = [Limit("key:1", 1, 60.0)]

    async def scenario() -> tuple:
        limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0")
        try:
            assert await limiter.take("first", one) is None
            refused = await limiter.take("second", one)
            limiter.release_soon("first", ["key:1"])
            await limiter.drain(timeout=5)
            return refused, await limiter.take("second", one)
        finally:
            await limiter.close()

    with caplog.at_level(logging.WARNING, logger="gateway"):
        refused, taken = event_loop.run(scenario())
    assert refused is not None and taken is None
    assert any("giving back slots" in record.getMessage() for record in caplog.records)
