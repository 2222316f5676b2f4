"""The hold started beside the admission's round trip (docs/gateway.md#the-hold-beside-the-admission):
given back when the admission refuses, tried once more when it was refused, and not started for a
key the admission has just refused."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import psycopg
import pytest

from accounts.models import APIKey, UpstreamAccount, User
from accounts.services.keys import api_key_create
from billing.models import PendingRequest
from gateway.holds import BesideAdmission, loop_connection_params
from tests.gateway.conftest import (
    background_finished,
    gateway_app,
    ledger_rows,
    make_tenant,
    openai_sdk,
)
from tests.holds import held

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = "slow=300,words=6"  # about two seconds in flight


def chat(url: str, secret: str, *, stream: bool = False) -> tuple[int, str | None]:
    client = openai_sdk(url, secret)
    try:
        answer = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=24, stream=stream
        )
        if stream:
            for _ in answer:
                pass
        return 200, None
    except openai.APIStatusError as error:
        return error.status_code, error.body["code"]


class HoldStatements:
    """Every hold statement the gateway's event loop sends, told before it is sent; `then(n, work)`
    runs `work` just before the n-th."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.lock = threading.Lock()
        self.before: dict[int, object] = {}

    def __call__(self, sql: str) -> None:
        with self.lock:
            self.sent.append(sql)
            work = self.before.get(len(self.sent))
        if work is not None:
            work()


@pytest.fixture
def hold_statements(gateway_url):
    statements = HoldStatements()
    observers = gateway_app().proxy.loop_holds.observers
    observers.append(statements)
    yield statements
    observers.remove(statements)


def one_request_at_a_time(fake_upstream):
    """A tenant whose key allows one request in flight, on an account with slow streams."""
    return make_tenant(
        fake_upstream,
        platform="openai",
        scenarios=(SLOW,),
        key_fields={"concurrency": 1},
        user_fields={"concurrency": 0},
    )


def test_a_request_the_admission_refuses_gives_back_the_hold_it_took_beside_it(
    fake_upstream, gateway_url, hold_statements
):
    tenant = one_request_at_a_time(fake_upstream)
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=2)
    _other_key, other_secret = api_key_create(user=tenant.user, group=tenant.group, name="other")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(chat, gateway_url, tenant.secret, stream=True)
        fake_upstream.wait_for(lambda rows: len(rows) == 1, timeout=20)
        assert chat(gateway_url, tenant.secret) == (429, "API_KEY_CONCURRENCY_EXCEEDED")
        # Its hold was sent beside the admission, and given back once the admission refused.
        assert len(hold_statements.sent) == 2
        background_finished()
        in_flight = PendingRequest.objects.get()
        assert held(APIKey, tenant.key.pk) == in_flight.held_usd > 0
        assert held(User, tenant.user.pk, "balance_held") == in_flight.held_usd
        # So was the account's slot taken beside it: the account's second slot serves another key.
        assert chat(gateway_url, other_secret) == (200, None)
        assert len(hold_statements.sent) == 3
        # The key was just refused by its admission: the next request holds after it (no hold).
        assert chat(gateway_url, tenant.secret) == (429, "API_KEY_CONCURRENCY_EXCEEDED")
        assert len(hold_statements.sent) == 3
        assert first.result(timeout=30) == (200, None)
    assert len(ledger_rows(2)) == 2
    background_finished()
    assert not PendingRequest.objects.exists()
    assert held(APIKey, tenant.key.pk) == held(User, tenant.user.pk, "balance_held") == 0


def test_a_hold_refused_beside_the_admission_is_tried_once_more_after_it(
    fake_upstream, gateway_url, hold_statements
):
    tenant = make_tenant(fake_upstream, platform="openai", key_fields={"quota_usd": Decimal("1")})
    # Another request's hold fills the quota, given back between this request's two tries (as a
    # request that its admission refused gives back the hold it took beside it).
    APIKey.objects.filter(pk=tenant.key.pk).update(held_usd=Decimal("1"))
    params = loop_connection_params()

    def given_back() -> None:
        with psycopg.connect(**params) as other:
            other.execute("UPDATE accounts_apikey SET held_usd = 0 WHERE id = %s", [tenant.key.pk])

    hold_statements.before[2] = given_back
    assert chat(gateway_url, tenant.secret) == (200, None)
    assert len(hold_statements.sent) == 2
    assert len(ledger_rows(1)) == 1
    background_finished()
    assert held(APIKey, tenant.key.pk) == 0


def test_a_hold_refused_on_both_tries_names_the_limit(fake_upstream, gateway_url, hold_statements):
    tenant = make_tenant(fake_upstream, platform="openai", key_fields={"quota_usd": Decimal("1")})
    APIKey.objects.filter(pk=tenant.key.pk).update(held_usd=Decimal("1"))
    assert chat(gateway_url, tenant.secret) == (429, "API_KEY_QUOTA_EXHAUSTED")
    assert len(hold_statements.sent) == 2
    # Refused by a hold: the key's next request holds after its admission, once.
    assert chat(gateway_url, tenant.secret) == (429, "API_KEY_QUOTA_EXHAUSTED")
    assert len(hold_statements.sent) == 3
    assert not PendingRequest.objects.exists()
    assert held(APIKey, tenant.key.pk) == Decimal("1")


def test_switched_off_a_refused_request_sends_no_hold(fake_upstream, gateway_url, hold_statements):
    tenant = one_request_at_a_time(fake_upstream)
    beside = gateway_app().proxy.beside_admission
    beside.enabled = False
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(chat, gateway_url, tenant.secret, stream=True)
            fake_upstream.wait_for(lambda rows: len(rows) == 1, timeout=20)
            assert chat(gateway_url, tenant.secret) == (429, "API_KEY_CONCURRENCY_EXCEEDED")
            assert len(hold_statements.sent) == 1  # the first request's, after its admission
            assert first.result(timeout=30) == (200, None)
    finally:
        beside.enabled = True


class Snapshot:
    def __init__(self, key_id: int, user_id: int) -> None:
        self.id, self.user_id = key_id, user_id


def test_a_refusal_pauses_the_key_and_its_user_for_a_while():
    beside = BesideAdmission(enabled=True, pause=0.2)
    refused, same_user, other = Snapshot(1, 10), Snapshot(2, 10), Snapshot(3, 11)
    beside.refused(refused)
    assert not beside.allows(refused)
    assert not beside.allows(same_user)
    assert beside.allows(other)
    threading.Event().wait(0.25)
    assert beside.allows(refused) and beside.allows(same_user)


def test_the_pauses_kept_are_bounded_ended_ones_going_first():
    beside = BesideAdmission(enabled=True, pause=0.05, size=4)
    beside.refused(Snapshot(1, 10))
    threading.Event().wait(0.06)
    beside.refused(Snapshot(2, 11))
    beside.refused(Snapshot(3, 12))  # full: the ended pause of key 1 and user 10 makes room
    assert len(beside._until) == 4
    assert not beside.allows(Snapshot(2, 11)) and not beside.allows(Snapshot(3, 12))
    long = BesideAdmission(enabled=True, pause=60, size=4)
    for number in range(10):
        long.refused(Snapshot(number, 100 + number))
    assert len(long._until) <= 4
    assert not long.allows(Snapshot(9, 109))  # the latest is kept


def test_switched_off_nothing_goes_beside():
    assert not BesideAdmission(enabled=False).allows(Snapshot(1, 1))
