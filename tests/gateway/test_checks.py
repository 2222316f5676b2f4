"""Each check of docs/gateway.md#checks answers its own status and code, in order.

For check N the key is set up to fail check N and every later check that can fail at the same
time (subscription checks 8 and 11 on a subscription group, the balance check 12 on a standard
one), with every earlier check passing: the answer must be N's code, which proves both the code
and that no later check answered first. Check 15 fails throughout (the model is not priced on a
restricting channel). Checks 1 and 2 need no key state; check 14 keeps state of its own and is
tested with a request in flight.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import httpx2 as httpx
import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import APIKey, Group, Subscription, User
from accounts.windows import subscription_window_start
from tests.factories import (
    ChannelFactory,
    ChannelGroupFactory,
    GroupFactory,
    ModelPricingFactory,
    SubscriptionFactory,
    UserFactory,
)
from tests.gateway.conftest import ledger_rows, make_tenant

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
UNPRICED = {**CHAT, "model": "gpt-4.1"}


def post(
    url: str, secret: str | None, body: dict, path: str = "/v1/chat/completions", **headers
) -> httpx.Response:
    if secret is not None:
        headers["authorization"] = f"Bearer {secret}"
    return httpx.post(url + path, json=body, headers=headers, timeout=30)


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"] and error["type"]
    if status == 429:
        assert int(response.headers["retry-after"]) >= 1


def restricted_tenant(fake_upstream, *, subscription: bool, scenario: str = ""):
    now = timezone.now()
    if subscription:
        group = GroupFactory(
            platform="openai", subscription_type="subscription", daily_limit_usd=Decimal("5")
        )
        user = UserFactory(balance=Decimal("0"))
        SubscriptionFactory(user=user, group=group, starts_at=now - timedelta(days=1))
        tenant = make_tenant(fake_upstream, platform="openai", group=group, user=user, scenarios=(scenario,))
    else:
        tenant = make_tenant(fake_upstream, platform="openai", scenarios=(scenario,))
    channel = ChannelFactory(restrict_models=True)
    ChannelGroupFactory(channel=channel, group=tenant.group)
    ModelPricingFactory(channel=channel, platform="openai", models=["gpt-4o"])
    return tenant


def break_from(tenant, first: int, *, subscription: bool) -> None:
    """Make every check from `first` on fail (those that apply to the group's kind)."""
    now = timezone.now()
    # The subscription's daily window is today's, as a charge now would start it: a window begun
    # "a minute ago" was yesterday's, already over, for the first minute after midnight, and the
    # request fell through to the 5h limit's code.
    today = subscription_window_start("daily", now, starts_at=now, tz=settings.TIME_ZONE)
    key = APIKey.objects.filter(pk=tenant.key.pk)
    user = User.objects.filter(pk=tenant.user.pk)
    group = Group.objects.filter(pk=tenant.group.pk)
    breaks = {
        3: lambda: key.update(status="disabled"),
        4: lambda: key.update(ip_allowlist=["10.9.9.9"]),
        5: lambda: user.update(status="disabled"),
        6: lambda: group.update(status="inactive"),
        7: lambda: group.update(is_exclusive=True),
        8: lambda: Subscription.objects.filter(user=tenant.user).update(status="suspended"),
        9: lambda: key.update(expires_at=now - timedelta(minutes=1)),
        10: lambda: key.update(quota_usd=Decimal("1"), quota_used_usd=Decimal("1")),
        11: lambda: Subscription.objects.filter(user=tenant.user).update(
            daily_usage_usd=Decimal("5"), daily_window_start=today
        ),
        12: lambda: user.update(balance=Decimal("0")),
        13: lambda: key.update(
            rate_limit_5h_usd=Decimal("1"),
            usage_5h_usd=Decimal("1"),
            window_5h_start=now - timedelta(minutes=1),
        ),
    }
    for check, apply in breaks.items():
        if check < first:
            continue
        if check in (8, 11) and not subscription or check == 12 and subscription:
            continue
        apply()


EXPECTED = {
    3: (401, "API_KEY_DISABLED"),
    4: (403, "ACCESS_DENIED"),
    5: (401, "USER_INACTIVE"),
    6: (403, "GROUP_DISABLED"),
    7: (403, "GROUP_NOT_ALLOWED"),
    8: (403, "SUBSCRIPTION_NOT_FOUND"),
    9: (403, "API_KEY_EXPIRED"),
    10: (429, "API_KEY_QUOTA_EXHAUSTED"),
    11: (429, "USAGE_LIMIT_EXCEEDED"),
    12: (403, "INSUFFICIENT_BALANCE"),
    13: (429, "rate_limit_exceeded"),
    15: (404, "MODEL_NOT_ALLOWED"),
}
TRACKS = [(check, check in (8, 11)) for check in EXPECTED if check != 12] + [(12, False)]
TRACKS += [(check, False) for check in (3, 9, 10, 13, 15)]  # the standard track too


@pytest.mark.parametrize(("check", "subscription"), sorted(set(TRACKS)))
def test_each_check_answers_its_code_before_every_later_check(
    fake_upstream, gateway_url, check, subscription
):
    tenant = restricted_tenant(fake_upstream, subscription=subscription)
    break_from(tenant, check, subscription=subscription)
    status, code = EXPECTED[check]
    assert_refused(post(gateway_url, tenant.secret, UNPRICED), status, code)
    assert fake_upstream.requests() == [], "a refused request never reaches an upstream"


def test_the_quota_refusal_has_the_openai_insufficient_quota_shape(fake_upstream, gateway_url):
    tenant = restricted_tenant(fake_upstream, subscription=False)
    break_from(tenant, 10, subscription=False)
    response = post(gateway_url, tenant.secret, CHAT)
    assert response.json()["error"]["type"] == "insufficient_quota"


def test_an_expired_key_over_its_quota_gets_the_expiry_code(fake_upstream, gateway_url):
    tenant = restricted_tenant(fake_upstream, subscription=False)
    APIKey.objects.filter(pk=tenant.key.pk).update(
        expires_at=timezone.now() - timedelta(days=1), quota_usd=Decimal("1"), quota_used_usd=Decimal("2")
    )
    assert_refused(post(gateway_url, tenant.secret, CHAT), 403, "API_KEY_EXPIRED")


def test_no_key_comes_first_and_an_unknown_key_second(fake_upstream, gateway_url):
    assert_refused(post(gateway_url, None, {"not": "json for a model"}), 401, "API_KEY_REQUIRED")
    assert_refused(post(gateway_url, "sk-unknown", {"not": "json for a model"}), 401, "INVALID_API_KEY")
    response = httpx.post(
        gateway_url + "/v1/messages",
        json={},
        headers={"x-api-key": "sk-unknown", "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"


def test_the_users_concurrency_limit_answers_429_before_the_model_check(fake_upstream, gateway_url):
    # A slow account: the first request holds the user's one slot while the second arrives.
    tenant = restricted_tenant(fake_upstream, subscription=False, scenario="latency=1500")
    User.objects.filter(pk=tenant.user.pk).update(concurrency=1)
    slow = threading.Thread(target=post, args=(gateway_url, tenant.secret, CHAT))
    slow.start()
    try:
        fake_upstream.wait_for(lambda served: fake_upstream.health()["in_flight"] >= 1)
        assert_refused(post(gateway_url, tenant.secret, UNPRICED), 429, "USER_CONCURRENCY_EXCEEDED")
    finally:
        slow.join()
    assert len(ledger_rows(1)) == 1


def test_the_users_rpm_limit_answers_429_with_the_wait(fake_upstream, gateway_url):
    tenant = restricted_tenant(fake_upstream, subscription=False)
    User.objects.filter(pk=tenant.user.pk).update(rpm_limit=1)
    assert post(gateway_url, tenant.secret, CHAT).status_code == 200
    response = post(gateway_url, tenant.secret, UNPRICED)
    assert_refused(response, 429, "USER_RPM_EXCEEDED")
    assert 50 <= int(response.headers["retry-after"]) <= 60


def test_an_unpriced_model_on_an_unrestricted_channel_is_served_and_recorded_missing(
    fake_upstream, gateway_url
):
    tenant = make_tenant(fake_upstream, platform="openai")
    response = post(gateway_url, tenant.secret, {**CHAT, "model": "tollgate-unpriced-model"})
    assert response.status_code == 200, response.text
    (row,) = ledger_rows(1)
    assert (row.pricing_source, row.total_cost, row.input_tokens) == ("missing", 0, 5)
