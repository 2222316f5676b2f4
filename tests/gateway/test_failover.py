"""Account choice and failover (docs/gateway.md#account-choice, docs/gateway.md#failover)."""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from decimal import Decimal

import anthropic
import httpx2 as httpx
import openai
import pytest
from django.utils import timezone

from accounts.models import GroupAccount, UpstreamAccount
from tests.gateway.conftest import (
    anthropic_sdk,
    background_finished,
    ledger_rows,
    make_account,
    make_tenant,
    openai_sdk,
)

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Say hello to the toll gate."}]


def marked(account_id: int, condition) -> UpstreamAccount:
    """The account once `condition(account)` holds: marks are written beside the response."""
    deadline = time.monotonic() + 5
    while True:
        account = UpstreamAccount.objects.get(pk=account_id)
        if condition(account) or time.monotonic() > deadline:
            return account
        time.sleep(0.01)


def served_accounts(fake_upstream) -> list[str]:
    return [served["scenario"] or "" for served in fake_upstream.requests()]


def test_a_429_moves_to_the_next_account_and_rests_the_first_until_its_retry_after(
    fake_upstream, gateway_url
):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("status=429,retry_after=30", ""))
    client = openai_sdk(gateway_url, tenant.secret)
    client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert served_accounts(fake_upstream) == ["status=429,retry_after=30", ""]

    (row,) = ledger_rows(1)
    assert row.account_id == tenant.accounts[1].pk, "billed once, for the attempt that answered"
    limited = marked(tenant.accounts[0].pk, lambda account: account.rate_limited_until).rate_limited_until
    assert timedelta(seconds=25) < limited - timezone.now() <= timedelta(seconds=30)

    client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert served_accounts(fake_upstream)[2:] == [""], "the resting account is skipped"


def test_a_5xx_moves_on_without_marking_the_account(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("status=500", ""))
    message = anthropic_sdk(gateway_url, tenant.secret).messages.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=QUESTION
    )
    assert message.content[0].text
    first = UpstreamAccount.objects.get(pk=tenant.accounts[0].pk)
    assert (first.status, first.rate_limited_until) == ("active", None)
    assert len(ledger_rows(1)) == 1


def test_a_refused_credential_marks_the_account_in_error(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("status=401", ""))
    openai_sdk(gateway_url, tenant.secret).chat.completions.create(model="gpt-4o", messages=QUESTION)
    first = marked(tenant.accounts[0].pk, lambda account: account.status == "error")
    assert first.status == "error"
    assert "401" in first.error_message and "Invalid authentication" in first.error_message


def test_when_every_account_fails_the_client_gets_the_last_error_in_its_shape(fake_upstream, gateway_url):
    tenant = make_tenant(
        fake_upstream,
        platform="anthropic",
        scenarios=("status=429,retry_after=7", "status=429,retry_after=9"),
    )
    with pytest.raises(anthropic.RateLimitError) as refused:
        anthropic_sdk(gateway_url, tenant.secret).messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=QUESTION
        )
    error = refused.value.body["error"]
    assert error["code"] == "NO_ACCOUNT_AVAILABLE"
    assert "Rate limit reached" in error["message"]
    assert 7 <= int(refused.value.response.headers["retry-after"]) <= 9
    assert len(fake_upstream.requests()) == 2


def test_when_the_account_with_room_fails_and_the_other_had_none_the_client_hears_of_the_quota(
    fake_upstream, gateway_url
):
    # The first account by priority has a $1 quota; the second (no quota) answers 500.
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("", "status=500"))
    short, broken = tenant.accounts
    UpstreamAccount.objects.filter(pk=short.pk).update(quota_limit_usd=Decimal("1"))
    client = openai_sdk(gateway_url, tenant.secret)
    client.chat.completions.create(model="gpt-4o", messages=QUESTION)  # the gateway caches `short`
    background_finished()
    # Another process spends the rest of the quota: the cached snapshot still shows room, so the
    # hold is where the first account is passed over, and the second is the only one tried.
    UpstreamAccount.objects.filter(pk=short.pk).update(quota_used_usd=Decimal("1"))
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "NO_ACCOUNT_AVAILABLE"
    assert "quota left" in refused.value.body["message"], "the quota, not the other account's 500"
    assert served_accounts(fake_upstream) == ["", "status=500"]


def test_a_request_error_is_passed_on_and_not_retried(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("", ""))
    response = httpx.post(
        gateway_url + "/v1/messages",
        json={"model": "claude-sonnet-4-6", "messages": QUESTION},  # no max_tokens
        headers={"x-api-key": tenant.secret, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 400
    assert "max_tokens" in response.json()["error"]["message"], "the upstream's own words"
    assert len(fake_upstream.requests()) == 1
    (row,) = ledger_rows(1)
    assert (row.status_code, row.outcome, row.total_cost, row.usage_source) == (
        400,
        "upstream_error",
        0,
        "none",
    )


def test_an_unreachable_account_is_skipped(fake_upstream, gateway_url):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("",))
    dead = upstream_account_pointing_at(f"http://127.0.0.1:{port}")
    GroupAccount.objects.create(group=tenant.group, account=dead, priority=1)
    openai_sdk(gateway_url, tenant.secret).chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert ledger_rows(1)[0].account_id == tenant.accounts[0].pk


def upstream_account_pointing_at(url: str) -> UpstreamAccount:
    from accounts.services.upstream import upstream_account_create

    return upstream_account_create(
        fields={"name": "dead", "platform": "openai", "type": "apikey"},
        credentials={"api_key": "sk-dead", "base_url": url},
        actor=None,
    )


def test_a_timeout_before_the_first_byte_moves_on(fake_upstream, gateway_url, settings):
    settings.GATEWAY_FIRST_BYTE_TIMEOUT = 0.5
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("latency=3000", ""))
    openai_sdk(gateway_url, tenant.secret).chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert ledger_rows(1)[0].account_id == tenant.accounts[1].pk


def test_nothing_is_retried_after_the_first_byte(fake_upstream, gateway_url):
    # Chunks 30 ms apart: the first reaches the client well before the connection drops.
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("slow=30,drop_after=3", ""))
    response = httpx.post(
        gateway_url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": QUESTION, "stream": True},
        headers={"authorization": f"Bearer {tenant.secret}"},
    )
    assert "UPSTREAM_STREAM_ERROR" in response.text
    assert served_accounts(fake_upstream) == ["slow=30,drop_after=3"]
    assert ledger_rows(1)[0].outcome == "upstream_cut"


def test_accounts_are_tried_by_priority_then_least_recently_used(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("words=1", "words=2", "words=3"))
    GroupAccount.objects.filter(account__in=tenant.accounts[:2]).update(priority=10)
    GroupAccount.objects.filter(account=tenant.accounts[2]).update(priority=99)
    client = openai_sdk(gateway_url, tenant.secret)
    for index in range(4):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"question {index}"}]
        )
    assert served_accounts(fake_upstream) == ["words=1", "words=2", "words=1", "words=2"]


def test_a_conversation_sticks_to_its_account(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("words=1", "words=2"))
    client = anthropic_sdk(gateway_url, tenant.secret)
    for _ in range(3):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=50,
            messages=QUESTION,
            metadata={"user_id": "conversation-1"},
        )
    assert len(set(served_accounts(fake_upstream))) == 1


def test_model_routing_and_account_models_choose_the_account(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("words=1", "words=2"))
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(
        supported_models=["gpt-4o"], model_mapping={"gpt-4o": "gpt-4o-2024-11-20"}
    )
    tenant.group.model_routing = {"gpt-4o-mini": [tenant.accounts[1].pk]}
    tenant.group.model_routing_enabled = True
    tenant.group.save()
    client = openai_sdk(gateway_url, tenant.secret)
    client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert fake_upstream.last_request()["model"] == "gpt-4o-2024-11-20"
    client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    assert served_accounts(fake_upstream) == ["words=1", "words=2"]
    # One recording transaction may take both (ledger ids then follow request ids, not arrival).
    models = {(row.requested_model, row.upstream_model) for row in ledger_rows(2)}
    assert ("gpt-4o", "gpt-4o-2024-11-20") in models


def test_a_bedrock_only_group_says_it_is_not_supported_yet(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=())
    bedrock = make_account(fake_upstream, platform="anthropic", name="bedrock", type="bedrock")
    GroupAccount.objects.create(group=tenant.group, account=bedrock)
    with pytest.raises(anthropic.APIStatusError) as refused:
        anthropic_sdk(gateway_url, tenant.secret).messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=QUESTION
        )
    assert refused.value.status_code == 501
    assert refused.value.body["error"]["code"] == "ACCOUNT_TYPE_NOT_SUPPORTED"


def test_a_group_without_usable_accounts_answers_503(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("",))
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(schedulable=False)
    with pytest.raises(openai.InternalServerError) as refused:
        openai_sdk(gateway_url, tenant.secret).chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert refused.value.status_code == 503
    assert refused.value.response.json()["error"]["code"] == "NO_ACCOUNT_AVAILABLE"


def test_a_refused_credentials_wording_stays_with_the_operator(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("status=403",))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        openai_sdk(gateway_url, tenant.secret).chat.completions.create(model="gpt-4o", messages=QUESTION)
    error = refused.value.response.json()["error"]
    assert error["code"] == "NO_ACCOUNT_AVAILABLE"
    assert "refused the account's credential (HTTP 403)" in error["message"]
    assert "may not use this resource" not in error["message"]
    account = marked(tenant.accounts[0].pk, lambda account: account.error_message)
    assert "may not use this resource" in account.error_message
