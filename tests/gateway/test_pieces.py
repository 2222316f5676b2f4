"""The gateway's pure pieces: request reading, error shapes, usage reading, failover marks, scheduling."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import orjson
import pytest

from gateway.errors import CODES, GatewayError, error_body
from gateway.failover import (
    PASS_ON,
    RETRY,
    RETRY_AND_DISABLE,
    RETRY_AND_RATE_LIMIT,
    classify,
    rate_limited_until,
)
from gateway.incoming import presented_key, refuse_key_in_query
from gateway.logs import RedactQueryStrings
from gateway.scheduling import (
    AccountBoard,
    StickySessions,
    account_model,
    candidates,
    serves_model,
    session_key,
)
from gateway.upstreams import upstream_payload
from gateway.usage import CHAT, MESSAGES, RESPONSES, SSEFramer, UsageMeter, sse_fields

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


# --- Keys and requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({b"authorization": b"Bearer sk-a"}, "sk-a"),
        ({b"authorization": b"bearer  sk-b "}, "sk-b"),
        ({b"x-api-key": b"sk-c"}, "sk-c"),
        ({b"x-goog-api-key": b"sk-d"}, "sk-d"),
        ({b"authorization": b"Basic Zm9v", b"x-api-key": b"sk-e"}, "sk-e"),
        ({b"authorization": b"Bearer "}, ""),
        ({}, ""),
    ],
)
def test_it_reads_the_key_from_the_three_headers(headers, expected):
    assert presented_key(headers) == expected


@pytest.mark.parametrize("query", [b"key=sk-1", b"api_key=sk-1", b"foo=1&API-KEY=sk", b"access_token=x"])
def test_it_refuses_a_key_in_the_query_string(query):
    with pytest.raises(GatewayError) as refused:
        refuse_key_in_query(query)
    assert refused.value.code == "API_KEY_IN_QUERY"
    assert refused.value.http_status == 400
    assert "sk-1" not in refused.value.message


def test_it_lets_other_query_strings_through():
    refuse_key_in_query(b"limit=20&order=desc")


def test_the_access_log_hides_gateway_query_values():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", "/v1/messages?key=sk-secret&beta=true", "1.1", 400),
        None,
    )
    RedactQueryStrings().filter(record)
    assert "sk-secret" not in record.getMessage()
    assert "/v1/messages?key=[hidden]&beta=[hidden]" in record.getMessage()


# --- Error shapes --------------------------------------------------------------------------------


def test_openai_errors_have_message_type_and_code():
    body = orjson.loads(error_body("openai", "API_KEY_QUOTA_EXHAUSTED", "used up"))
    assert body == {
        "error": {
            "message": "used up",
            "type": "insufficient_quota",
            "param": None,
            "code": "API_KEY_QUOTA_EXHAUSTED",
        }
    }


def test_anthropic_errors_have_the_error_envelope():
    body = orjson.loads(error_body("anthropic", "INVALID_API_KEY", "no"))
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["message"] == "no"


def test_every_429_carries_retry_after():
    for code, spec in CODES.items():
        if spec.status == 429:
            headers = dict(GatewayError(code, "x").headers())
            assert int(headers[b"retry-after"]) >= 1, code


def test_a_passed_on_status_picks_the_matching_error_type():
    body = orjson.loads(error_body("anthropic", "NO_ACCOUNT_AVAILABLE", "x", status=429))
    assert body["error"]["type"] == "rate_limit_error"


# --- Usage ---------------------------------------------------------------------------------------


def sse(name: str, payload: dict) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


def test_the_framer_reassembles_events_split_across_chunks():
    stream = sse("message_start", {"a": 1}) + sse("ping", {}) + b"data: [DONE]\r\n\r\n"
    framer = SSEFramer()
    events = []
    for index in range(0, len(stream), 7):
        events += framer.feed(stream[index : index + 7])
    assert [sse_fields(event)[0] for event in events] == [b"message_start", b"ping", b""]
    assert sse_fields(events[2])[1] == b"[DONE]"
    assert framer.rest() == b""


def test_anthropic_streams_take_input_from_message_start_and_output_from_message_delta():
    meter = UsageMeter(kind=MESSAGES, body={"messages": []})
    start_usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 5,
        "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
        "output_tokens": 1,
    }
    meter.feed_event(b"message_start", orjson.dumps({"message": {"usage": start_usage}}))
    for _ in range(3):
        meter.feed_event(
            b"content_block_delta", orjson.dumps({"delta": {"type": "text_delta", "text": "hi"}})
        )
    meter.feed_event(
        b"message_delta",
        orjson.dumps(
            {
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 30,
                    "cache_read_input_tokens": 5,
                    "output_tokens": 42,
                }
            }
        ),
    )
    meter.feed_event(b"message_stop", b'{"type":"message_stop"}')
    usage, source = meter.usage()
    assert source == "reported"
    assert (usage.input_tokens, usage.output_tokens) == (10, 42)
    assert (usage.cache_creation_5m_tokens, usage.cache_creation_1h_tokens, usage.cache_read_tokens) == (
        10,
        20,
        5,
    )
    assert meter.terminal


def test_openai_cached_tokens_move_from_input_to_cache_reads():
    meter = UsageMeter(kind=CHAT, body={})
    meter.feed_json(
        {
            "usage": {
                "prompt_tokens": 2000,
                "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 1536},
            }
        }
    )
    usage, _ = meter.usage()
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (464, 1536, 7)


def test_a_responses_stream_reads_usage_from_response_incomplete():
    meter = UsageMeter(kind=RESPONSES, body={})
    meter.feed_event(b"response.output_text.delta", b'{"delta":"abc"}')
    meter.feed_event(
        b"response.incomplete",
        orjson.dumps(
            {
                "response": {
                    "usage": {
                        "input_tokens": 12,
                        "output_tokens": 3,
                        "input_tokens_details": {"cached_tokens": 0},
                    }
                }
            }
        ),
    )
    usage, source = meter.usage()
    assert (usage.input_tokens, usage.output_tokens, source) == (12, 3, "reported")


def test_the_chat_usage_chunk_is_recognised_and_null_usage_is_not():
    meter = UsageMeter(kind=CHAT, body={})
    assert not meter.feed_event(b"", b'{"choices":[{"delta":{"content":"hi"}}],"usage":null}')
    assert meter.feed_event(b"", b'{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}')
    assert not meter.feed_event(b"", b"[DONE]")
    assert meter.terminal
    assert meter.usage()[0].output_tokens == 2


def test_no_reported_usage_is_estimated_from_the_text_never_zero():
    body = {"messages": [{"role": "user", "content": "x" * 40}]}
    meter = UsageMeter(kind=CHAT, body=body)
    meter.feed_event(b"", orjson.dumps({"choices": [{"delta": {"content": "y" * 20}}]}))
    meter.feed_event(b"", b"[DONE]")
    usage, source = meter.usage()
    assert source == "estimated"
    assert usage.input_tokens == 10 + 4  # 40 characters, one message
    assert usage.output_tokens == 5


def test_a_cut_anthropic_stream_keeps_the_reported_input_and_estimates_the_output():
    meter = UsageMeter(kind=MESSAGES, body={})
    meter.feed_event(
        b"message_start", orjson.dumps({"message": {"usage": {"input_tokens": 9, "output_tokens": 1}}})
    )
    meter.feed_event(
        b"content_block_delta", orjson.dumps({"delta": {"type": "text_delta", "text": "z" * 16}})
    )
    usage, source = meter.usage()
    assert (usage.input_tokens, usage.output_tokens, source) == (9, 4, "partial")
    assert not meter.terminal
    usage, _ = meter.usage(input_seen=False)
    assert usage.output_tokens == 0


# --- Request bodies --------------------------------------------------------------------------------


def test_the_client_body_is_forwarded_untouched_unless_something_must_change():
    raw = b'{"model":"gpt-4o","messages":[]}'
    body = orjson.loads(raw)
    assert upstream_payload(
        raw, body, kind=CHAT, stream=False, upstream_model="gpt-4o", requested_model="gpt-4o"
    ) == (raw, False)
    mapped, strip = upstream_payload(
        raw, body, kind=CHAT, stream=False, upstream_model="gpt-4.1", requested_model="gpt-4o"
    )
    assert orjson.loads(mapped)["model"] == "gpt-4.1" and not strip


def test_a_chat_stream_is_asked_for_its_usage_once():
    body = {"model": "m", "stream": True, "stream_options": {"foo": 1}}
    payload, strip = upstream_payload(
        b"", body, kind=CHAT, stream=True, upstream_model="m", requested_model="m"
    )
    assert strip
    assert orjson.loads(payload)["stream_options"] == {"foo": 1, "include_usage": True}
    asked = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    assert upstream_payload(
        b"raw", asked, kind=CHAT, stream=True, upstream_model="m", requested_model="m"
    ) == (b"raw", False)


# --- Failover --------------------------------------------------------------------------------------


def test_what_each_upstream_status_means():
    assert classify(429) == RETRY_AND_RATE_LIMIT
    assert classify(401) == classify(403) == RETRY_AND_DISABLE
    assert classify(500) == classify(529) == RETRY
    assert classify(400) == classify(404) == PASS_ON


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Fri, 01 May 2026 12:00:30 GMT"}, 30),
        (
            {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "2026-05-01T12:01:00Z",
                "anthropic-ratelimit-tokens-remaining": "500",
                "anthropic-ratelimit-tokens-reset": "2026-05-01T12:30:00Z",
            },
            60,
        ),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "250ms"}, 0.25),
        ({}, 60),
    ],
)
def test_a_429_marks_the_account_until_the_providers_reset(headers, seconds):
    assert rate_limited_until(headers, NOW, default_seconds=60) == NOW + timedelta(seconds=seconds)


# --- Scheduling ------------------------------------------------------------------------------------


def account(account_id, **fields):
    values = {
        "id": account_id,
        "platform": "openai",
        "type": "apikey",
        "status": "active",
        "schedulable": True,
        "rate_limited_until": None,
        "expires_at": None,
        "concurrency": 2,
        "quota_applies": False,
        "model_mapping": {},
        "supported_models": (),
        "exceeded": False,
    }
    values.update(fields)
    item = SimpleNamespace(**values)
    item.is_quota_exceeded = lambda now: item.exceeded
    return item


def member(account_id, priority=50):
    return SimpleNamespace(account_id=account_id, priority=priority)


def order(accounts, members, *, model="gpt-4o", routed=None, board=None, sticky=None):
    found = candidates(
        platform="openai",
        members=members,
        accounts={a.id: a for a in accounts},
        model=model,
        routed=routed,
        now=NOW,
        board=board or AccountBoard(),
        sticky_account_id=sticky,
    )
    return [a.id for a in found.accounts]


def test_candidates_skip_every_unusable_account():
    accounts = [
        account(1),
        account(2, status="error"),
        account(3, schedulable=False),
        account(4, rate_limited_until=NOW + timedelta(seconds=5)),
        account(5, expires_at=NOW),
        account(6, quota_applies=True, exceeded=True),
        account(7, supported_models=("claude-*",)),
        account(8, rate_limited_until=NOW - timedelta(seconds=5)),
        account(9, platform="anthropic"),
    ]
    assert order(accounts, [member(a.id) for a in accounts]) == [1, 8]


def test_candidates_come_by_routing_then_priority_then_least_recently_used():
    accounts = [account(i) for i in range(1, 6)]
    members = [member(1, 10), member(2, 5), member(3, 5), member(4, 5), member(5, 1)]
    board = AccountBoard()
    board.last_used.update({2: 100.0, 3: 50.0})
    assert order(accounts, members, board=board) == [5, 4, 3, 2, 1]
    assert order(accounts, members, board=board, routed=[1, 3]) == [1, 3, 5, 4, 2]
    assert order(accounts, members, board=board, sticky=2) == [2, 5, 4, 3, 1]


def test_bedrock_accounts_are_counted_but_not_tried():
    accounts = [account(1, type="bedrock")]
    found = candidates(
        platform="openai",
        members=[member(1)],
        accounts={1: accounts[0]},
        model="m",
        routed=None,
        now=NOW,
        board=AccountBoard(),
    )
    assert found.accounts == () and found.unsupported == 1


def test_account_models_and_mapping():
    mapped = account(
        1, supported_models=("gpt-4o", "o3-*"), model_mapping={"gpt-4o": "gpt-4o-2024-11-20", "o3-*": "o3"}
    )
    assert serves_model(mapped, "o3-mini") and not serves_model(mapped, "gpt-4.1")
    assert account_model(mapped, "gpt-4o") == "gpt-4o-2024-11-20"
    assert account_model(mapped, "o3-mini") == "o3"
    assert account_model(account(2), "gpt-4o") == "gpt-4o"


def test_conversations_are_identified_by_their_own_ids_or_their_opening():
    base = {"messages": [{"role": "user", "content": "hi"}], "system": "be brief"}
    longer = {**base, "messages": [*base["messages"], {"role": "assistant", "content": "hello"}]}
    assert session_key(kind=MESSAGES, body=base, key_id=1) == session_key(
        kind=MESSAGES, body=longer, key_id=1
    )
    assert session_key(kind=MESSAGES, body=base, key_id=1) != session_key(kind=MESSAGES, body=base, key_id=2)
    tagged = {**base, "metadata": {"user_id": "u-1"}}
    assert session_key(kind=MESSAGES, body=tagged, key_id=1) != session_key(
        kind=MESSAGES, body=base, key_id=1
    )
    assert session_key(kind="embeddings", body={"input": "x"}, key_id=1) is None


def test_sticky_sessions_are_bounded():
    sticky = StickySessions(ttl=60, size=2)
    for name, account_id in (("a", 1), ("b", 2), ("c", 3)):
        sticky.put(name, account_id)
    assert (sticky.get("a"), sticky.get("b"), sticky.get("c"), len(sticky)) == (None, 2, 3, 2)
    expired = StickySessions(ttl=0, size=2)
    expired.put("a", 1)
    assert expired.get("a") is None


def test_the_readme_lists_every_code_with_its_status():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("**Error codes.**")[1].split("**`GET /v1/usage`**")[0]
    listed = dict(re.findall(r"^\| `(\w+)` \| (\d{3}) \|", table, re.MULTILINE))
    assert listed == {code: str(spec.status) for code, spec in CODES.items()}
