"""Serving: every /v1/ path is the gateway's (in the protocol's error shape, without the console's
middleware), request problems get their codes, and the two self-service endpoints."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import httpx2 as httpx
import pytest
from django.utils import timezone

from accounts.models import APIKey, UpstreamAccount
from tests.factories import (
    ChannelFactory,
    ChannelGroupFactory,
    GroupFactory,
    ModelPricingFactory,
    SubscriptionFactory,
    UserFactory,
)
from tests.gateway.conftest import ThreadedServer, anthropic_sdk, ledger_rows, make_tenant, openai_sdk

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("method", "path", "shape"),
    [
        ("POST", "/v1/chat/completions", "openai"),
        ("POST", "/v1/responses", "openai"),
        ("POST", "/v1/embeddings", "openai"),
        ("POST", "/v1/messages", "anthropic"),
        ("POST", "/v1/messages/count_tokens", "anthropic"),
        ("GET", "/v1/models", "openai"),
        ("GET", "/v1/usage", "openai"),
        ("GET", "/v1/anything-else", "openai"),
    ],
)
def test_every_v1_path_is_the_gateways_and_asks_for_a_key(gateway_url, method, path, shape):
    response = httpx.request(method, gateway_url + path)
    assert response.status_code == (404 if path.endswith("anything-else") else 401)
    body = response.json()
    error = body["error"]
    if shape == "anthropic":
        assert body["type"] == "error"
    assert error["code"] == ("NOT_FOUND" if path.endswith("anything-else") else "API_KEY_REQUIRED")
    assert response.headers["x-request-id"].startswith("req_")
    # None of the console's middleware ran: no session or CSRF cookie, no CSP, no redirect to sign in.
    assert "set-cookie" not in response.headers
    assert "content-security-policy" not in response.headers


def test_the_console_is_still_the_consoles(gateway_url):
    response = httpx.get(gateway_url + "/keys/")
    assert response.status_code == 302 and "/login/" in response.headers["location"]
    assert httpx.get(gateway_url + "/healthz").status_code in (200, 503)


def test_a_key_in_the_query_string_is_refused_and_never_logged(fake_upstream, transactional_db):
    tenant = make_tenant(fake_upstream, platform="openai")
    from gateway.app import Gateway

    server = ThreadedServer(Gateway(), access_log=True)  # a gateway of its own, with uvicorn's access log
    server.start()
    lines: list[str] = []
    capture = logging.Handler()
    capture.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("uvicorn.access").addHandler(capture)
    try:
        response = httpx.post(
            f"{server.url}/v1/chat/completions?key={tenant.secret}",
            json=CHAT,
            headers={"authorization": f"Bearer {tenant.secret}"},
        )
    finally:
        logging.getLogger("uvicorn.access").removeHandler(capture)
        server.stop()
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "API_KEY_IN_QUERY"
    assert any("chat/completions?key=[hidden]" in line for line in lines), lines
    assert not any(tenant.secret in line for line in lines)


def test_request_problems_have_their_codes(fake_upstream, gateway_url, settings):
    tenant = make_tenant(fake_upstream, platform="openai")
    auth = {"authorization": f"Bearer {tenant.secret}"}
    url = gateway_url + "/v1/chat/completions"
    assert httpx.post(url, content=b"{not json", headers=auth).json()["error"]["code"] == "INVALID_REQUEST"
    assert httpx.post(url, json={"messages": []}, headers=auth).json()["error"]["code"] == "INVALID_REQUEST"
    assert httpx.get(url, headers=auth).status_code == 405
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    too_large = httpx.post(url, json={**CHAT, "padding": "x" * 2000}, headers=auth)
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (413, "REQUEST_TOO_LARGE")
    assert fake_upstream.requests() == []


def test_a_key_of_an_anthropic_group_on_an_openai_path_is_told_where_to_go(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic")
    response = httpx.post(
        gateway_url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {tenant.secret}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ENDPOINT_NOT_SUPPORTED"
    assert "/v1/messages" in response.json()["error"]["message"]


def test_count_tokens_is_relayed_and_not_billed(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic")
    counted = anthropic_sdk(gateway_url, tenant.secret).messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Say hello to the toll gate."}]
    )
    assert counted.input_tokens == 11
    assert ledger_rows(1, timeout=0.3) == []


def test_setup_token_and_oauth_accounts_send_bearer_tokens(fake_upstream, gateway_url, settings):
    settings.GATEWAY_ANTHROPIC_BASE_URL = fake_upstream.base_url()
    from accounts.models import GroupAccount
    from tests.gateway.conftest import make_account

    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=())
    account = make_account(fake_upstream, platform="anthropic", type="setup-token", name="setup")
    GroupAccount.objects.create(group=tenant.group, account=account)
    anthropic_sdk(gateway_url, tenant.secret).messages.create(
        model="claude-sonnet-4-6", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    from tests.fake_upstream import key_fingerprint

    assert fake_upstream.last_request()["key_fingerprint"] == key_fingerprint("sk-ant-oat-setup")


# --- GET /v1/models -----------------------------------------------------------------------------------


def test_models_lists_the_channels_priced_models_when_it_restricts_them(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai")
    channel = ChannelFactory(restrict_models=True)
    ChannelGroupFactory(channel=channel, group=tenant.group)
    ModelPricingFactory(channel=channel, platform="openai", models=["gpt-4o", "gpt-4.1", "o3-*"])
    listed = openai_sdk(gateway_url, tenant.secret).models.list()
    assert [model.id for model in listed.data] == ["gpt-4o", "gpt-4.1"]


def test_models_lists_the_accounts_models_otherwise(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic")
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(
        supported_models=["claude-sonnet-4-6", "claude-opus-*"],
        model_mapping={"claude-haiku": "claude-haiku-4-5"},
    )
    listed = anthropic_sdk(gateway_url, tenant.secret).models.list()
    assert [model.id for model in listed.data] == ["claude-sonnet-4-6", "claude-haiku"]


# --- GET /v1/usage ------------------------------------------------------------------------------------


def test_usage_shows_the_keys_quota_windows_expiry_and_balance(fake_upstream, gateway_url):
    expires = timezone.now() + timedelta(days=3)
    tenant = make_tenant(
        fake_upstream,
        platform="openai",
        key_fields={
            "quota_usd": Decimal("5"),
            "rate_limit_5h_usd": Decimal("2"),
            "expires_at": expires,
            "concurrency": 4,
        },
    )
    openai_sdk(gateway_url, tenant.secret).chat.completions.create(**CHAT)
    (row,) = ledger_rows(1)
    usage = httpx.get(gateway_url + "/v1/usage", headers={"authorization": f"Bearer {tenant.secret}"}).json()
    cost = str(row.actual_cost)
    assert usage["object"] == "usage"
    assert usage["key"]["quota_usd"] == "5.00000000"
    assert usage["key"]["quota_used_usd"] == cost
    assert Decimal(usage["key"]["quota_remaining_usd"]) == Decimal("5") - row.actual_cost
    assert usage["key"]["expires_at"] == expires.isoformat()
    five_hours = usage["key"]["windows"][0]
    assert (five_hours["window"], five_hours["limit_usd"], five_hours["used_usd"]) == (
        "5h",
        "2.00000000",
        cost,
    )
    assert five_hours["resets_at"] is not None
    assert usage["key"]["windows"][1]["limit_usd"] is None
    assert usage["key"]["concurrency"] == 4
    assert Decimal(usage["balance_usd"]) == Decimal("10") - row.actual_cost
    assert usage["subscription"] is None


def test_usage_shows_a_subscriptions_windows(fake_upstream, gateway_url):
    group = GroupFactory(platform="openai", subscription_type="subscription", daily_limit_usd=Decimal("3"))
    user = UserFactory()
    SubscriptionFactory(user=user, group=group)
    tenant = make_tenant(fake_upstream, platform="openai", group=group, user=user)
    usage = httpx.get(gateway_url + "/v1/usage", headers={"x-api-key": tenant.secret}).json()
    assert usage["balance_usd"] is None
    daily, weekly, monthly = usage["subscription"]["windows"]
    assert (daily["window"], daily["limit_usd"], daily["used_usd"]) == ("daily", "3.00000000", "0.00000000")
    assert weekly["limit_usd"] is None and monthly["resets_at"] is not None


def test_an_expired_key_can_still_read_its_usage_but_a_disabled_one_cannot(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai")
    APIKey.objects.filter(pk=tenant.key.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    usage = httpx.get(gateway_url + "/v1/usage", headers={"x-api-key": tenant.secret})
    assert usage.status_code == 200 and usage.json()["key"]["status"] == "expired"
    other = make_tenant(fake_upstream, platform="openai")
    APIKey.objects.filter(pk=other.key.pk).update(status="disabled")
    assert httpx.get(gateway_url + "/v1/usage", headers={"x-api-key": other.secret}).status_code == 401


def test_the_demo_prints_a_key_and_a_curl_line_that_work(fake_upstream, gateway_url, settings, tmp_path):
    import shlex
    import subprocess
    from io import StringIO

    from django.core.management import call_command

    from billing.models import UsageLog

    settings.VAR_DIR = tmp_path  # a fresh checkout's var/
    printed = StringIO()
    call_command(
        "seed_demo",
        password="demo-pass-1",
        url=gateway_url + "/",
        upstream_url=fake_upstream.base_url(),
        stdout=printed,
    )
    curl = next(line for line in printed.getvalue().splitlines() if line.strip().startswith("curl "))
    secret = (tmp_path / "demo_api_key").read_text()
    assert secret in curl
    answer = subprocess.run(
        shlex.split(curl) + ["--silent", "--fail"], capture_output=True, text=True, check=True
    )
    assert "toll gate" in answer.stdout.lower()
    (row,) = ledger_rows(1, api_key__name="demo-gateway")
    assert (row.requested_model, row.outcome, row.usage_source) == ("gpt-4o-mini", "completed", "reported")
    assert row.total_cost > 0
    assert UsageLog.objects.filter(api_key__name="demo-gateway").count() == 1

    again = StringIO()
    call_command(
        "seed_demo",
        password="demo-pass-1",
        url=gateway_url + "/",
        upstream_url=fake_upstream.base_url(),
        stdout=again,
    )
    assert secret in again.getvalue(), "the same key on every run"
