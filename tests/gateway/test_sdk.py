"""The official SDKs through the gateway: every endpoint, streamed and not, on a standard group (paid
from the balance) and a subscription group; each ledger row's cost is computed by hand below.

Token figures are the fake upstream's rule (gateway/fake_upstream.py): ceil(characters / 4) per
text plus 4 per message, the system prompt or `instructions` counting as one; 24 output tokens.
    system "You are terse."               14 characters → 4 + 4 = 8
    user   "Say hello to the toll gate."  27 characters → 7 + 4 = 11      input 19, output 24
    embeddings "hello world"              11 characters → 3 (no overhead)
Prices ($ per million tokens): gpt-4o 2.50 in / 10 out; text-embedding-3-small 0.02;
claude-sonnet-4-6 3 in / 15 out / 3.75 5m write / 6 1h write / 0.30 read.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import Subscription, User
from tests.factories import (
    ChannelFactory,
    ChannelGroupFactory,
    GroupFactory,
    ModelPricingFactory,
    SubscriptionFactory,
    UserFactory,
)
from tests.gateway.conftest import anthropic_sdk, ledger_rows, make_tenant, openai_sdk

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM = "You are terse."
QUESTION = "Say hello to the toll gate."
MTOK = Decimal("0.000001")

GPT_4O = {
    "input_price": Decimal("2.50") * MTOK,
    "output_price": 10 * MTOK,
    "cache_read_price": Decimal("1.25") * MTOK,
}
EMBEDDING = {"input_price": Decimal("0.02") * MTOK, "output_price": Decimal(0)}
SONNET = {
    "input_price": 3 * MTOK,
    "output_price": 15 * MTOK,
    "cache_write_price": Decimal("3.75") * MTOK,
    "cache_write_1h_price": 6 * MTOK,
    "cache_read_price": Decimal("0.30") * MTOK,
}

# (total cost, as computed by hand)
CHAT_COST = 19 * Decimal("2.50") * MTOK + 24 * 10 * MTOK  # 0.0000475 + 0.00024 = 0.0002875
EMBEDDINGS_COST = 3 * Decimal("0.02") * MTOK  # 0.00000006
MESSAGES_COST = 19 * 3 * MTOK + 24 * 15 * MTOK  # 0.000057 + 0.00036 = 0.000417
assert (
    Decimal("0.0002875"),
    Decimal("0.00000006"),
    Decimal("0.000417"),
) == (CHAT_COST, EMBEDDINGS_COST, MESSAGES_COST)


def priced_tenant(fake_upstream, *, platform: str, subscription: bool, rate: Decimal):
    if subscription:
        group = GroupFactory(
            platform=platform,
            rate_multiplier=rate,
            subscription_type="subscription",
            daily_limit_usd=Decimal("5"),
        )
        user = UserFactory(balance=Decimal("0"))
        SubscriptionFactory(user=user, group=group)
        tenant = make_tenant(fake_upstream, platform=platform, group=group, user=user)
    else:
        tenant = make_tenant(fake_upstream, platform=platform, group_fields={"rate_multiplier": rate})
    channel = ChannelFactory()
    ChannelGroupFactory(channel=channel, group=tenant.group)
    if platform == "openai":
        ModelPricingFactory(channel=channel, platform="openai", models=["gpt-4o"], **GPT_4O)
        ModelPricingFactory(
            channel=channel, platform="openai", models=["text-embedding-3-small"], **EMBEDDING
        )
    else:
        ModelPricingFactory(channel=channel, platform="anthropic", models=["claude-sonnet-4-6"], **SONNET)
    return tenant


def call(kind: str, stream: bool, url: str, secret: str):
    """Make one request with the official SDK; (the x-request-id header, the text received)."""
    if kind == "chat":
        raw = openai_sdk(url, secret).chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            stream=stream,
        )
        parsed = raw.parse()
        if stream:
            chunks = list(parsed)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert all(c.usage is None for c in chunks), "the usage chunk the gateway asked for is stripped"
        else:
            text = parsed.choices[0].message.content
    elif kind == "responses":
        raw = openai_sdk(url, secret).responses.with_raw_response.create(
            model="gpt-4o", instructions=SYSTEM, input=QUESTION, stream=stream
        )
        parsed = raw.parse()
        if stream:
            events = list(parsed)
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert events[-1].type == "response.completed"
        else:
            text = parsed.output_text
    elif kind == "embeddings":
        raw = openai_sdk(url, secret).embeddings.with_raw_response.create(
            # float: the SDK's default (base64) does not pass its own strict validation
            model="text-embedding-3-small",
            input="hello world",
            encoding_format="float",
        )
        text = str(len(raw.parse().data[0].embedding))
    else:
        raw = anthropic_sdk(url, secret).messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=100,
            system=SYSTEM,
            messages=[{"role": "user", "content": QUESTION}],
            stream=stream,
        )
        parsed = raw.parse()
        if stream:
            events = list(parsed)
            text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
            assert events[-1].type == "message_stop"
        else:
            text = parsed.content[0].text
    return raw.headers["x-request-id"], text


CASES = [
    ("openai", "chat", False, CHAT_COST),
    ("openai", "chat", True, CHAT_COST),
    ("openai", "responses", False, CHAT_COST),
    ("openai", "responses", True, CHAT_COST),
    ("openai", "embeddings", False, EMBEDDINGS_COST),
    ("anthropic", "messages", False, MESSAGES_COST),
    ("anthropic", "messages", True, MESSAGES_COST),
]


@pytest.mark.parametrize(("platform", "kind", "stream", "total"), CASES)
def test_a_standard_group_request_is_billed_to_the_balance(
    fake_upstream, gateway_url, platform, kind, stream, total
):
    rate = Decimal("1.5")
    tenant = priced_tenant(fake_upstream, platform=platform, subscription=False, rate=rate)
    request_id, text = call(kind, stream, gateway_url, tenant.secret)
    assert text

    (row,) = ledger_rows(1)
    actual = total * rate  # e.g. chat: 0.0002875 × 1.5 = 0.00043125
    assert (row.request_id, row.total_cost, row.actual_cost) == (request_id, total, actual)
    assert (row.pricing_source, row.usage_source, row.outcome, row.stream) == (
        "channel",
        "reported",
        "completed",
        stream,
    )
    assert row.account_id == tenant.accounts[0].pk
    assert User.objects.get(pk=tenant.user.pk).balance == Decimal("10") - actual
    served = fake_upstream.last_request()
    assert served["tollgate_request_id"] == request_id
    billed = served["billed"]
    assert (row.input_tokens, row.output_tokens) == (billed["input_tokens"], billed["output_tokens"])


@pytest.mark.parametrize(("platform", "kind", "stream", "total"), CASES)
def test_a_subscription_group_request_is_billed_to_the_subscription(
    fake_upstream, gateway_url, platform, kind, stream, total
):
    tenant = priced_tenant(fake_upstream, platform=platform, subscription=True, rate=Decimal("1"))
    request_id, _ = call(kind, stream, gateway_url, tenant.secret)

    (row,) = ledger_rows(1)
    assert (row.request_id, row.actual_cost, row.usage_source) == (request_id, total, "reported")
    subscription = Subscription.objects.get(user=tenant.user)
    assert row.subscription_id == subscription.pk
    assert subscription.daily_usage_usd == total
    assert User.objects.get(pk=tenant.user.pk).balance == Decimal("0"), "the balance is not touched"


def test_anthropic_cache_writes_are_billed_in_their_5m_and_1h_buckets(fake_upstream, gateway_url):
    tenant = priced_tenant(fake_upstream, platform="anthropic", subscription=False, rate=Decimal("1"))
    system = [{"type": "text", "text": "r" * 400, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "q" * 40, "cache_control": {"type": "ephemeral"}}],
        }
    ]
    client = anthropic_sdk(gateway_url, tenant.secret)
    for stream in (False, True):
        response = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, system=system, messages=messages, stream=stream
        )
        if stream:
            list(response)

    first, second = ledger_rows(2)
    # First: the system block (4 + 400/4 = 104 tokens) written for 1h, the message (4 + 10 = 14) for 5m.
    assert (first.cache_creation_1h_tokens, first.cache_creation_5m_tokens, first.cache_read_tokens) == (
        104,
        14,
        0,
    )
    assert first.total_cost == 104 * 6 * MTOK + 14 * Decimal("3.75") * MTOK + 24 * 15 * MTOK  # 0.0010365
    # Second (streamed): the whole prefix read from the cache: 118 × 0.30 + 24 × 15.
    assert (second.cache_read_tokens, second.cache_creation_5m_tokens + second.cache_creation_1h_tokens) == (
        118,
        0,
    )
    assert second.total_cost == 118 * Decimal("0.30") * MTOK + 24 * 15 * MTOK  # 0.0003954
