"""The gateway served for real: config.asgi's one application in uvicorn, on a free loopback port.

`gateway_url` runs it in a thread of the test process for the whole session (lifespan on: the
upstream pool, the database threads, the snapshot cache), so tests talk to it over real HTTP with
the official SDKs while the test's own code can read the database and call services. Tests that
use it are `transaction=True`: the server's database threads see committed rows only.

`Tenant` builds the rows one test needs: a group, accounts pointed at the fake upstream, a user
and a key with its secret.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import anthropic
import openai
import pytest
import uvicorn

from accounts.models import APIKey, Group, UpstreamAccount, User
from accounts.services.keys import api_key_create
from accounts.services.upstream import upstream_account_create
from tests.factories import APIKeyFactory, GroupFactory, UserFactory


class ThreadedServer:
    def __init__(self, app, *, access_log: bool = False) -> None:
        # uvicorn's access lines are INFO: the log level must let them through when they are wanted.
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="info" if access_log else "warning",
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


@pytest.fixture(scope="session")
def gateway_server(django_db_setup) -> Iterator[ThreadedServer]:
    # The server's database threads may touch the database only while a test that allows it
    # runs (pytest-django's blocker is process-wide): every test using it is transaction=True.
    from config.asgi import application

    server = ThreadedServer(application)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway_url(gateway_server, transactional_db) -> Iterator[str]:
    yield gateway_server.url
    # Recordings (and slot releases, and holds given back) finish just after their response: let
    # them, before the test's rows are flushed.
    background_finished(timeout=15)


def background_finished(*, timeout: float = 10.0) -> None:
    """Wait until the gateway's work after its responses (recordings and the snapshot refreshes
    they bring, slot releases, holds given back) is done."""
    proxy = gateway_app().proxy
    deadline = time.monotonic() + timeout
    while (
        proxy.recordings or proxy.limiter.releasing or not proxy.hold_queue.idle
    ) and time.monotonic() < deadline:
        time.sleep(0.01)


def ledger_rows(count: int, *, timeout: float = 10.0, **filters) -> list:
    """The ledger rows once `count` of them exist (recording runs just after the response), in the
    order the requests finished."""
    from billing.models import UsageLog

    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageLog.objects.filter(**filters).order_by("created_at", "id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


def gateway_app():
    from gateway.app import application

    return application


def openai_sdk(gateway_url: str, secret: str, *, strict: bool = True) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=secret, base_url=gateway_url + "/v1", max_retries=0, _strict_response_validation=strict
    )


def anthropic_sdk(gateway_url: str, secret: str, *, strict: bool = True) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=secret, base_url=gateway_url, max_retries=0, _strict_response_validation=strict
    )


@pytest.fixture
def key():
    """A key with a $1 quota on an OpenAI group, its user's balance $10: for the hold tests."""
    return APIKeyFactory(
        user=UserFactory(balance=Decimal("10")), group=GroupFactory(platform="openai"), quota_usd=Decimal("1")
    )


@dataclass
class Tenant:
    user: User
    group: Group
    accounts: list[UpstreamAccount]
    key: APIKey
    secret: str


def make_account(
    fake_upstream, *, platform: str, scenario: str = "", name: str = "", type: str = "apikey", **fields
) -> UpstreamAccount:
    credentials = {"api_key": f"sk-upstream-{platform}", "base_url": fake_upstream.base_url(scenario)}
    if type == "setup-token":
        credentials = {"setup_token": "sk-ant-oat-setup"}
    elif type == "oauth":
        credentials = {"access_token": "sk-ant-oauth-access"}
    elif type == "bedrock":
        credentials = {"auth_mode": "apikey", "api_key": "bedrock-key", "aws_region": "us-east-1"}
    return upstream_account_create(
        fields={
            "name": name or f"{platform}-{scenario or 'plain'}",
            "platform": platform,
            "type": type,
            **fields,
        },
        credentials=credentials,
        actor=None,
    )


def make_tenant(
    fake_upstream,
    *,
    platform: str = "anthropic",
    scenarios: tuple[str, ...] = ("",),
    balance: Decimal = Decimal("10"),
    group_fields: dict | None = None,
    key_fields: dict | None = None,
    user_fields: dict | None = None,
    group: Group | None = None,
    user: User | None = None,
) -> Tenant:
    """A group (or `group`) with one account per scenario, a user (or `user`) and a key."""
    from accounts.models import GroupAccount

    group = group or GroupFactory(platform=platform, **(group_fields or {}))
    accounts = []
    for position, scenario in enumerate(scenarios):
        account = make_account(
            fake_upstream, platform=platform, scenario=scenario, name=f"{platform}-{position}"
        )
        GroupAccount.objects.create(group=group, account=account, priority=10 + position)
        accounts.append(account)
    user = user or UserFactory(balance=balance, **(user_fields or {}))
    key, secret = api_key_create(user=user, group=group, name="test key", **(key_fields or {}))
    return Tenant(user=user, group=group, accounts=accounts, key=key, secret=secret)
