"""The fake upstream, run for real and driven with the official SDKs (strict response validation on).

Token figures follow the rule in gateway/fake_upstream.py: ceil(chars / 4) per text, 4 per message
(system prompt included), one output token per word, 24 words unless a limit or `words` says fewer.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import anthropic
import openai
import pytest
from django.core.management import CommandError, call_command

from gateway.fake_upstream import VOCAB
from tests.fake_upstream import ROOT, key_fingerprint, running_fake_upstream

OPENAI_KEY = "sk-test-openai"
ANTHROPIC_KEY = "sk-ant-test"
SYSTEM = "You are terse."  # 14 chars: 4 tokens, + 4 for the message = 8
QUESTION = "Say hello to the toll gate."  # 27 chars: 7 tokens, + 4 = 11
CHAT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
CHAT_INPUT = 19
WORDS = 24


def words(count: int, start: int = 0) -> str:
    return " ".join(VOCAB[index % len(VOCAB)] for index in range(start, start + count))


def openai_client(
    upstream, scenario: str = "", *, strict: bool = True, key: str = OPENAI_KEY
) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=key,
        base_url=upstream.openai_base_url(scenario),
        max_retries=0,
        _strict_response_validation=strict,
    )


def anthropic_client(
    upstream, scenario: str = "", *, strict: bool = True, key: str = ANTHROPIC_KEY
) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=key,
        base_url=upstream.anthropic_base_url(scenario),
        max_retries=0,
        _strict_response_validation=strict,
    )


def raw_request(upstream, method: str, path: str, body=None, headers=None) -> http.client.HTTPResponse:
    address = urlsplit(upstream.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    payload = json.dumps(body).encode() if body is not None else None
    connection.request(
        method, path, body=payload, headers={"content-type": "application/json", **(headers or {})}
    )
    return connection.getresponse()


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per server-sent event."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name = data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        events.append((name, data))
    return events


def billed(input_tokens=0, output_tokens=0, cache_read=0, write_5m=0, write_1h=0) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "cache_creation_5m_tokens": write_5m,
        "cache_creation_1h_tokens": write_1h,
    }


# --- OpenAI chat completions ------------------------------------------------------------------------


def test_a_chat_completion_reports_exactly_what_it_bills(fake_upstream):
    raw = openai_client(fake_upstream).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=CHAT
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == words(WORDS)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (CHAT_INPUT, WORDS, 43)
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert raw.headers["x-fake-request-id"] == completion.id
    served = fake_upstream.last_request()
    assert served["id"] == completion.id
    assert (served["path"], served["model"], served["stream"], served["status"]) == (
        "/v1/chat/completions",
        "gpt-4o",
        False,
        200,
    )
    assert served["outcome"] == "completed" and served["completed"] is True
    assert served["usage"] == usage.model_dump(exclude_none=True)
    assert served["billed"] == billed(CHAT_INPUT, WORDS)


def test_a_chat_completion_stops_at_the_token_limit(fake_upstream):
    client = openai_client(fake_upstream)

    limited = client.chat.completions.create(model="gpt-4o", messages=CHAT, max_completion_tokens=5)
    legacy = client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=3)

    assert limited.choices[0].message.content == words(5)
    assert limited.choices[0].finish_reason == "length"
    assert limited.usage.completion_tokens == 5
    assert legacy.usage.completion_tokens == 3
    assert [served["billed"]["output_tokens"] for served in fake_upstream.requests()] == [5, 3]


def test_a_streamed_chat_sends_no_usage_unless_asked(fake_upstream):
    chunks = list(
        openai_client(fake_upstream).chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == words(WORDS)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    served = fake_upstream.last_request()
    assert (served["stream"], served["include_usage"], served["usage"]) == (True, False, None)
    assert served["billed"] == billed(CHAT_INPUT, WORDS)  # billed all the same


def test_a_streamed_chat_ends_with_a_usage_chunk_and_done_when_asked(fake_upstream):
    client = openai_client(fake_upstream)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
    ) as response:
        events = sse_events(response.read())

    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) == 1 + WORDS + 2  # role, one word each, finish, usage
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == CHAT_INPUT
    assert chunks[-1]["usage"]["completion_tokens"] == WORDS
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert len({chunk["id"] for chunk in chunks}) == 1

    parsed = list(
        client.chat.completions.create(
            model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
    )
    assert parsed[-1].usage.total_tokens == CHAT_INPUT + WORDS
    first, second = fake_upstream.requests()
    assert first["include_usage"] is True
    assert first["usage"] == chunks[-1]["usage"]


def test_openai_caches_a_long_prompt_prefix_seen_before(fake_upstream):
    client = openai_client(fake_upstream)
    system = "S" * 4400  # 1100 tokens + 4 = 1104
    ask = [{"role": "system", "content": system}, {"role": "user", "content": "first question"}]  # 4 + 4
    follow_up = [{"role": "system", "content": system}, {"role": "user", "content": "another question!"}]

    cold = client.chat.completions.create(model="gpt-4o", messages=ask)
    warm = client.chat.completions.create(model="gpt-4o", messages=follow_up)  # 5 + 4
    other_model = client.chat.completions.create(model="gpt-4o-mini", messages=follow_up)
    short = [client.chat.completions.create(model="gpt-4o", messages=CHAT) for _ in range(2)]

    assert (cold.usage.prompt_tokens, cold.usage.prompt_tokens_details.cached_tokens) == (1112, 0)
    # The system message (1104 tokens) was seen: cached in whole 128-token steps.
    assert (warm.usage.prompt_tokens, warm.usage.prompt_tokens_details.cached_tokens) == (1113, 1024)
    assert other_model.usage.prompt_tokens_details.cached_tokens == 0
    assert [completion.usage.prompt_tokens_details.cached_tokens for completion in short] == [0, 0]
    assert fake_upstream.requests()[1]["billed"] == billed(1113 - 1024, WORDS, cache_read=1024)


# --- OpenAI responses --------------------------------------------------------------------------------


def test_a_response_reports_its_usage(fake_upstream):
    response = openai_client(fake_upstream).responses.create(
        model="gpt-4.1",
        instructions="Be terse.",
        input=QUESTION,  # 3 + 4, 7 + 4
    )

    assert response.status == "completed"
    assert response.output_text == words(WORDS)
    assert response.usage.input_tokens == 18
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens == WORDS
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.usage.total_tokens == 18 + WORDS
    served = fake_upstream.last_request()
    assert served["id"] == response.id
    assert served["billed"] == billed(18, WORDS)


def test_a_streamed_response_emits_every_event_in_order(fake_upstream):
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},  # 4 + 7
        {"role": "assistant", "content": "Hello."},  # 4 + 2
        {"role": "user", "content": "Again"},  # 4 + 2
    ]
    events = list(
        openai_client(fake_upstream).responses.create(
            model="gpt-4.1", input=items, stream=True, extra_headers={"x-fake-scenario": "chunks=4"}
        )
    )

    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == words(
        WORDS
    )
    assert events[0].response.status == "in_progress" and events[0].response.usage is None
    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text == words(WORDS)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (23, WORDS)
    assert fake_upstream.last_request()["usage"] == final.usage.model_dump(exclude_none=True)


def test_the_responses_stream_helper_assembles_the_final_response(fake_upstream):
    with openai_client(fake_upstream).responses.stream(model="gpt-4.1", input=QUESTION) as stream:
        final = stream.get_final_response()

    assert final.output_text == words(WORDS)
    assert final.usage.input_tokens == 11


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_cut_short_by_max_output_tokens_is_incomplete_with_usage(fake_upstream, stream):
    client = openai_client(fake_upstream)
    result = client.responses.create(model="gpt-4.1", input=QUESTION, max_output_tokens=16, stream=stream)
    if stream:
        events = list(result)
        assert events[-1].type == "response.incomplete"
        result = events[-1].response

    assert result.status == "incomplete"
    assert result.incomplete_details.reason == "max_output_tokens"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (11, 16)
    served = fake_upstream.last_request()
    assert (served["outcome"], served["billed"]) == ("incomplete", billed(11, 16))


def test_the_incomplete_switch_ends_a_response_stream_with_response_incomplete(fake_upstream):
    events = list(
        openai_client(fake_upstream, "incomplete").responses.create(
            model="gpt-4.1", input=QUESTION, stream=True
        )
    )

    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage.output_tokens == WORDS
    assert fake_upstream.last_request()["usage"]["output_tokens"] == WORDS


def test_the_failed_switch_ends_a_response_stream_with_response_failed_and_usage(fake_upstream):
    events = list(
        openai_client(fake_upstream, "failed").responses.create(model="gpt-4.1", input=QUESTION, stream=True)
    )

    types = [event.type for event in events]
    assert types[-1] == "response.failed"
    assert "response.output_text.done" not in types
    assert types.count("response.output_text.delta") == WORDS // 2
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error.code == "server_error"
    assert (failed.usage.input_tokens, failed.usage.output_tokens) == (11, WORDS // 2)
    served = fake_upstream.last_request()
    assert (served["outcome"], served["billed"]) == ("failed", billed(11, WORDS // 2))


def test_a_failed_response_without_streaming_is_a_server_error_billed_nothing(fake_upstream):
    with pytest.raises(openai.InternalServerError):
        openai_client(fake_upstream, "failed").responses.create(model="gpt-4.1", input=QUESTION)

    served = fake_upstream.last_request()
    assert (served["status"], served["billed"]) == (500, billed())


# --- OpenAI embeddings and models ----------------------------------------------------------------------


def test_embeddings_bill_their_input_in_both_encodings(fake_upstream):
    client = openai_client(fake_upstream)
    texts = ["hello world", "toll"]  # 3 + 1

    floats = client.embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    # The SDK asks for base64 unless told otherwise (its strict schema wants floats, so not strict here).
    raw_default = openai_client(fake_upstream, strict=False).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=texts
    )
    decoded = raw_default.parse()
    narrow = client.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]], dimensions=8, encoding_format="float"
    )

    assert [item.index for item in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 1536
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (4, 4)
    assert isinstance(raw_default.http_response.json()["data"][0]["embedding"], str)
    assert decoded.data[1].embedding == floats.data[1].embedding
    assert sum(value * value for value in floats.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert len(narrow.data[0].embedding) == 8
    assert narrow.usage.prompt_tokens == 5
    assert [served["billed"]["input_tokens"] for served in fake_upstream.requests()] == [4, 4, 5]


def test_embeddings_refuse_an_unknown_encoding(fake_upstream):
    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        openai_client(fake_upstream).embeddings.create(
            model="text-embedding-3-small", input="hi", extra_body={"encoding_format": "hex"}
        )


def test_models_are_listed_in_each_providers_shape(fake_upstream):
    openai_models = [model.id for model in openai_client(fake_upstream).models.list()]
    anthropic_models = [model.id for model in anthropic_client(fake_upstream).models.list()]
    one = openai_client(fake_upstream).models.retrieve("gpt-4o")

    assert "gpt-4o" in openai_models and "text-embedding-3-small" in openai_models
    assert "claude-haiku-4-5" in anthropic_models
    assert one.id == "gpt-4o"


# --- Anthropic messages ------------------------------------------------------------------------------


def test_a_message_reports_exactly_what_it_bills(fake_upstream):
    client = anthropic_client(fake_upstream)
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=1024,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
    )
    message = raw.parse()
    limited = client.messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": QUESTION}]
    )

    assert message.content[0].text == words(WORDS)
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (CHAT_INPUT, WORDS)
    assert (message.usage.cache_creation_input_tokens, message.usage.cache_read_input_tokens) == (0, 0)
    assert raw.headers["x-fake-request-id"] == message.id
    assert raw.headers["request-id"].startswith("req_")
    assert (limited.stop_reason, limited.usage.output_tokens, limited.content[0].text) == (
        "max_tokens",
        5,
        words(5),
    )
    first, second = fake_upstream.requests()
    assert first["provider"] == "anthropic"
    assert first["billed"] == billed(CHAT_INPUT, WORDS)
    assert second["billed"] == billed(11, 5)


def test_a_streamed_message_carries_input_at_the_start_and_output_at_the_end(fake_upstream):
    client = anthropic_client(fake_upstream)
    events = list(
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=1024,
            system=SYSTEM,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
        )
    )

    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * WORDS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0].message.usage, events[-2].usage
    assert (start.input_tokens, start.output_tokens) == (CHAT_INPUT, 1)
    assert start.cache_creation.ephemeral_5m_input_tokens == 0
    assert delta.output_tokens == WORDS
    assert events[-2].delta.stop_reason == "end_turn"
    assert "".join(event.delta.text for event in events if event.type == "content_block_delta") == words(
        WORDS
    )
    served = fake_upstream.last_request()
    assert served["usage"]["output_tokens"] == WORDS
    assert served["billed"] == billed(CHAT_INPUT, WORDS)


def test_a_message_stream_pings_on_the_wire(fake_upstream):
    with anthropic_client(fake_upstream).messages.with_streaming_response.create(
        model="claude-haiku-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
    ) as response:
        events = sse_events(response.read())

    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names.count("ping") == 1 + WORDS // 10
    assert names[-1] == "message_stop"
    assert all(json.loads(data)["type"] == name for name, data in events)


def test_the_message_stream_helper_assembles_the_final_message(fake_upstream):
    with anthropic_client(fake_upstream).messages.stream(
        model="claude-haiku-4-5", max_tokens=1024, messages=[{"role": "user", "content": QUESTION}]
    ) as stream:
        final = stream.get_final_message()

    assert final.content[0].text == words(WORDS)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, WORDS)


def cached_request(client, system_text: str, ttl: str | None, question: str):
    control = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    return client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=1024,
        system=[{"type": "text", "text": system_text, "cache_control": control}],
        messages=[{"role": "user", "content": question}],
    )


@pytest.mark.parametrize(
    ("ttl", "field"), [(None, "ephemeral_5m_input_tokens"), ("1h", "ephemeral_1h_input_tokens")]
)
def test_a_cache_control_block_is_written_once_then_read(fake_upstream, ttl, field):
    client = anthropic_client(fake_upstream)
    system = "A" * 4000  # 1000 tokens + 4 = 1004

    written = cached_request(client, system, ttl, QUESTION)
    read = cached_request(client, system, ttl, "Something else entirely?")  # 24 chars: 6 + 4

    assert written.usage.cache_creation_input_tokens == 1004
    assert getattr(written.usage.cache_creation, field) == 1004
    assert (written.usage.cache_read_input_tokens, written.usage.input_tokens) == (0, 11)
    assert (read.usage.cache_creation_input_tokens, read.usage.cache_read_input_tokens) == (0, 1004)
    assert read.usage.input_tokens == 10
    write_5m, write_1h = (1004, 0) if ttl is None else (0, 1004)
    first, second = fake_upstream.requests()
    assert first["billed"] == billed(11, WORDS, write_5m=write_5m, write_1h=write_1h)
    assert second["billed"] == billed(10, WORDS, cache_read=1004)


def test_cache_breakpoints_split_writes_by_ttl_and_read_the_longest_prefix(fake_upstream):
    client = anthropic_client(fake_upstream)

    def ask(document: str, question: str):
        return client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=1024,
            system=[
                {"type": "text", "text": "A" * 4000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": document, "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
            stream=True,
        )

    first = next(iter(ask("B" * 2000, "What now?")))  # system 1004 (1h), document 4 + 500 (5m), question 3
    again = next(iter(ask("B" * 2000, "And then?")))
    other_document = next(iter(ask("C" * 2000, "What now?")))

    for event in (first, again, other_document):
        assert event.type == "message_start"
    usage = first.message.usage
    assert (
        usage.cache_creation.ephemeral_1h_input_tokens,
        usage.cache_creation.ephemeral_5m_input_tokens,
    ) == (1004, 504)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens, usage.input_tokens) == (
        1508,
        0,
        3,
    )
    usage = again.message.usage
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens, usage.input_tokens) == (
        0,
        1508,
        3,
    )
    usage = other_document.message.usage
    assert (usage.cache_read_input_tokens, usage.cache_creation.ephemeral_5m_input_tokens) == (1004, 504)
    assert fake_upstream.requests()[2]["billed"] == billed(3, WORDS, cache_read=1004, write_5m=504)


def compact_tokens(value) -> int:
    """The rule for anything but text: ceil(len(compact JSON) / 4)."""
    return -(-len(json.dumps(value, separators=(",", ":"), ensure_ascii=False)) // 4)


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather at a place.",
    "input_schema": {"type": "object", "properties": {"place": {"type": "string"}}},
}


def test_tool_definitions_count_and_can_be_cached(fake_upstream):
    client = anthropic_client(fake_upstream)
    tools = [WEATHER_TOOL, {**WEATHER_TOOL, "name": "get_time", "cache_control": {"type": "ephemeral"}}]
    tool_tokens = compact_tokens(WEATHER_TOOL) + compact_tokens({**WEATHER_TOOL, "name": "get_time"})

    def ask():
        return client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=1024,
            tools=tools,
            messages=[{"role": "user", "content": QUESTION}],
        )

    written, read = ask(), ask()

    assert (written.usage.cache_creation_input_tokens, written.usage.input_tokens) == (tool_tokens, 11)
    assert (read.usage.cache_read_input_tokens, read.usage.input_tokens) == (tool_tokens, 11)


def test_openai_tools_and_tool_calls_count_as_compact_json(fake_upstream):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},  # 4 + 2
    ]

    completion = openai_client(fake_upstream).chat.completions.create(
        model="gpt-4o", messages=messages, tools=tools
    )

    expected = compact_tokens(tools) + 11 + (4 + compact_tokens(calls)) + 6
    assert completion.usage.prompt_tokens == expected


def test_count_tokens_counts_the_prompt_and_bills_nothing(fake_upstream):
    counted = anthropic_client(fake_upstream).messages.count_tokens(
        model="claude-haiku-4-5",
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
    )

    assert counted.input_tokens == CHAT_INPUT
    served = fake_upstream.last_request()
    assert (served["path"], served["billed"]) == ("/v1/messages/count_tokens", billed())


# --- Authentication ----------------------------------------------------------------------------------


def test_openai_paths_need_a_bearer_key(fake_upstream):
    response = raw_request(
        fake_upstream, "POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": CHAT}
    )

    assert response.status == 401
    error = json.loads(response.read())["error"]
    assert error["type"] == "invalid_request_error" and "Authorization: Bearer" in error["message"]


def test_anthropic_paths_need_a_key_and_a_version(fake_upstream):
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}

    no_key = raw_request(fake_upstream, "POST", "/v1/messages", body, {"anthropic-version": "2023-06-01"})
    no_version = raw_request(fake_upstream, "POST", "/v1/messages", body, {"x-api-key": ANTHROPIC_KEY})
    oauth = raw_request(
        fake_upstream,
        "POST",
        "/v1/messages",
        body,
        {"authorization": "Bearer sk-ant-oat-token", "anthropic-version": "2023-06-01"},
    )

    assert no_key.status == 401
    assert json.loads(no_key.read())["error"]["type"] == "authentication_error"
    assert no_version.status == 400
    assert "anthropic-version" in json.loads(no_version.read())["error"]["message"]
    assert oauth.status == 200
    assert fake_upstream.last_request()["key_fingerprint"] == key_fingerprint("sk-ant-oat-token")


def test_revoked_and_forbidden_keys_are_refused_in_each_providers_shape(fake_upstream):
    with pytest.raises(openai.AuthenticationError) as revoked:
        openai_client(fake_upstream, key="revoked-key").chat.completions.create(model="gpt-4o", messages=CHAT)
    with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
        anthropic_client(fake_upstream, key="forbidden-key").messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )

    assert revoked.value.body["code"] == "invalid_api_key"
    assert forbidden.value.body["error"]["type"] == "permission_error"
    assert [served["status"] for served in fake_upstream.requests()] == [401, 403]


# --- Scenario switches -------------------------------------------------------------------------------


def test_a_429_carries_retry_after_in_the_openai_shape(fake_upstream):
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client(fake_upstream, "status=429,retry_after=2").chat.completions.create(
            model="gpt-4o", messages=CHAT
        )

    headers = caught.value.response.headers
    assert headers["retry-after"] == "2"
    assert headers["x-ratelimit-reset-requests"] == "2s"
    assert caught.value.body["code"] == "rate_limit_exceeded"
    served = fake_upstream.last_request()
    assert (served["status"], served["outcome"], served["scenario"]) == (
        429,
        "error",
        "status=429,retry_after=2",
    )
    assert served["billed"] == billed()


def test_a_429_carries_retry_after_and_reset_headers_in_the_anthropic_shape(fake_upstream):
    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic_client(fake_upstream, "status=429,retry_after=30").messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )

    headers = caught.value.response.headers
    assert headers["retry-after"] == "30"
    reset = datetime.strptime(headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    )
    assert 25 <= (reset - datetime.now(UTC)).total_seconds() <= 31
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": caught.value.body["error"]["message"]},
        "request_id": caught.value.response.headers["request-id"],
    }


def test_server_errors_and_overload_come_in_each_providers_shape(fake_upstream):
    with pytest.raises(openai.InternalServerError) as server_error:
        openai_client(fake_upstream, "status=500").responses.create(model="gpt-4.1", input="hi")
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        anthropic_client(fake_upstream, "status=529").messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_client(fake_upstream).messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-scenario": "status=401"},
        )

    assert server_error.value.status_code == 500
    assert server_error.value.body["type"] == "server_error"
    assert overloaded.value.body["error"]["type"] == "overloaded_error"


def test_a_cut_chat_stream_ends_before_its_finish_and_usage(fake_upstream):
    chunks = list(
        openai_client(fake_upstream, "cut=3").chat.completions.create(
            model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
    )

    assert len(chunks) == 1 + 3
    assert all(chunk.usage is None and chunk.choices[0].finish_reason is None for chunk in chunks)
    served = fake_upstream.last_request()
    assert (served["outcome"], served["completed"], served["usage"]) == ("cut", False, None)
    assert served["billed"] == billed(CHAT_INPUT, 3)


def test_a_cut_message_stream_has_its_start_but_no_message_delta(fake_upstream):
    events = list(
        anthropic_client(fake_upstream, "cut").messages.create(
            model="claude-haiku-4-5",
            max_tokens=1024,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
        )
    )

    assert [event.type for event in events] == ["message_start", "content_block_start"] + [
        "content_block_delta"
    ] * 12
    assert fake_upstream.last_request()["billed"] == billed(11, 12)


def test_a_dropped_stream_breaks_the_connection(fake_upstream):
    with pytest.raises(openai.APIError):  # noqa: PT012 - the error surfaces while iterating
        for _ in openai_client(fake_upstream, "drop_after=2").responses.create(
            model="gpt-4.1", input=QUESTION, stream=True
        ):
            pass

    served = fake_upstream.last_request()
    assert (served["outcome"], served["billed"]) == ("dropped", billed(11, 2))


def test_a_cut_json_answer_breaks_the_connection_half_way(fake_upstream):
    with pytest.raises(openai.APIConnectionError):
        openai_client(fake_upstream, "cut").chat.completions.create(model="gpt-4o", messages=CHAT)

    assert fake_upstream.last_request()["outcome"] == "dropped"


def test_slow_chunks_arrive_spaced_out(fake_upstream):
    started = time.time()
    arrivals = []
    stream = openai_client(fake_upstream, "slow=100,chunks=4").chat.completions.create(
        model="gpt-4o", messages=CHAT, stream=True
    )
    for chunk in stream:
        if chunk.choices[0].delta.content:
            arrivals.append(time.time())

    # 100 ms before each of the 4 chunks and before the end. Lower bounds only: a loaded machine
    # can delay an arrival, never advance one.
    assert len(arrivals) == 4
    for index, arrival in enumerate(arrivals):
        assert arrival - started >= 0.1 * (index + 1) - 0.005
    served = fake_upstream.last_request()
    assert served["ended_at"] - served["started_at"] >= 0.495
    assert arrivals[0] < served["ended_at"]  # streamed: the first chunk came before the server finished


def test_latency_delays_the_first_byte(fake_upstream):
    client = anthropic_client(fake_upstream, "latency=300")
    started = time.monotonic()
    message = client.messages.create(
        model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    elapsed = time.monotonic() - started

    assert message.usage.output_tokens == 10
    assert 0.3 <= elapsed < 5


def test_words_and_chunks_size_the_output(fake_upstream):
    chunks = list(
        openai_client(fake_upstream).chat.completions.create(
            model="gpt-4o",
            messages=CHAT,
            stream=True,
            extra_headers={"x-fake-scenario": "words=10,chunks=3"},
        )
    )

    contents = [chunk.choices[0].delta.content for chunk in chunks[1:-1]]
    assert contents == [words(4), " " + words(3, 4), " " + words(3, 7)]
    assert fake_upstream.last_request()["billed"]["output_tokens"] == 10


def test_the_header_scenario_wins_over_the_base_url_one(fake_upstream):
    completion = openai_client(fake_upstream, "words=5,latency=1").chat.completions.create(
        model="gpt-4o", messages=CHAT, extra_headers={"x-fake-scenario": "words=7"}
    )

    assert completion.usage.completion_tokens == 7
    assert fake_upstream.last_request()["scenario"] == "words=5,latency=1,words=7"


def test_nousage_reports_nothing_but_the_server_still_bills(fake_upstream):
    client = openai_client(fake_upstream, "nousage", strict=False)
    completion = client.chat.completions.create(model="gpt-4o", messages=CHAT)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
    )
    with anthropic_client(fake_upstream, "nousage", strict=False).messages.with_streaming_response.create(
        model="claude-haiku-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
    ) as response:
        events = sse_events(response.read())
    embedding = raw_request(
        fake_upstream,
        "POST",
        "/scenario/nousage/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "hi"},
        {"authorization": "Bearer " + OPENAI_KEY},
    )

    assert completion.usage is None
    assert all(chunk.usage is None for chunk in chunks) and chunks[-1].choices
    assert all("usage" not in data for _, data in events)
    assert "usage" not in json.loads(embedding.read())
    served = fake_upstream.requests()
    assert [record["usage"] for record in served] == [None] * 4
    assert [record["billed"]["output_tokens"] for record in served] == [WORDS, WORDS, WORDS, 0]
    assert served[3]["billed"]["input_tokens"] == 1


@pytest.mark.parametrize("scenario", ["bogus", "latency=abc", "status=200", "nousage=1", "slow"])
def test_a_bad_scenario_switch_is_refused(fake_upstream, scenario):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(fake_upstream).chat.completions.create(
            model="gpt-4o", messages=CHAT, extra_headers={"x-fake-scenario": scenario}
        )

    assert scenario.partition("=")[0] in caught.value.body["message"]


def test_an_unknown_path_is_a_404_in_the_providers_shape(fake_upstream):
    response = raw_request(
        fake_upstream, "POST", "/v1/v1/chat/completions", {}, {"authorization": "Bearer k"}
    )

    assert response.status == 404
    assert "/v1/v1/chat/completions" in json.loads(response.read())["error"]["message"]
    assert fake_upstream.last_request()["path"] == "/v1/v1/chat/completions"


# --- Clients that go away ----------------------------------------------------------------------------


def open_stream(upstream, scenario: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    address = urlsplit(upstream.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    connection.request(
        "POST",
        f"/scenario/{scenario}/v1/messages",
        body=json.dumps(body),
        headers={"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01", "x-request-id": "client-1"},
    )
    return connection, connection.getresponse()


def test_a_client_that_leaves_mid_stream_is_billed_for_what_was_generated(fake_upstream):
    connection, response = open_stream(fake_upstream, "slow=400")
    received = b""
    while received.count(b"event: content_block_delta") < 2:
        received += response.read1(65536)
    assert fake_upstream.health()["in_flight"] == 1
    assert fake_upstream.last_request()["outcome"] == "in_progress"
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()

    served = fake_upstream.wait_for(lambda served: served[-1]["outcome"] != "in_progress")[-1]

    assert (served["outcome"], served["client_disconnected"], served["completed"]) == (
        "client_disconnected",
        True,
        False,
    )
    assert served["billed"]["input_tokens"] == 11
    # Chunks go out 400 ms apart: the client leaves right after the second, unless the machine is so
    # loaded that the third was already on its way (it counts: it was generated and sent).
    assert 2 <= served["billed"]["output_tokens"] <= 3
    assert served["usage"] is None
    assert served["request_id"] == "client-1"
    assert fake_upstream.health()["in_flight"] == 0


def test_a_client_that_leaves_before_the_first_byte_is_billed_nothing(fake_upstream):
    address = urlsplit(fake_upstream.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.request(
        "POST",
        "/scenario/latency=5000/v1/chat/completions",
        body=json.dumps({"model": "gpt-4o", "messages": CHAT}),
        headers={"authorization": "Bearer " + OPENAI_KEY},
    )
    fake_upstream.wait_for(lambda served: len(served) == 1)
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()

    served = fake_upstream.wait_for(lambda served: served[-1]["outcome"] != "in_progress", timeout=4)[-1]

    assert (served["outcome"], served["status"], served["billed"]) == ("client_disconnected", 499, billed())


# --- The served-requests log -------------------------------------------------------------------------


def test_the_log_records_who_asked_and_can_be_read_incrementally_and_reset(fake_upstream):
    client = openai_client(fake_upstream)
    client.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        extra_headers={"x-request-id": "caller-7", "x-tollgate-request-id": "tg-7"},
    )
    before = time.time()
    client.embeddings.create(model="text-embedding-3-small", input="hi", encoding_format="float")

    first, second = fake_upstream.requests()
    assert (first["request_id"], first["tollgate_request_id"]) == ("caller-7", "tg-7")
    assert first["key_fingerprint"] == key_fingerprint(OPENAI_KEY) and OPENAI_KEY not in json.dumps(first)
    assert second["seq"] == first["seq"] + 1
    assert second["id"].startswith("req_")
    assert before <= second["started_at"] <= second["ended_at"] <= time.time()
    assert fake_upstream.requests(since=first["seq"]) == [second]
    health = fake_upstream.health()
    assert health["status"] == "ok" and health["in_flight"] == 0

    fake_upstream.reset()
    assert fake_upstream.requests() == []
    client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert fake_upstream.last_request()["seq"] == second["seq"] + 1  # ids never repeat


def test_the_log_keeps_only_the_latest_requests():
    with running_fake_upstream(env={"FAKE_UPSTREAM_MAX_REQUESTS": "3"}) as upstream:
        client = openai_client(upstream)
        for _ in range(5):
            client.chat.completions.create(model="gpt-4o", messages=CHAT)

        assert [served["seq"] for served in upstream.requests()] == [3, 4, 5]
        assert upstream.health()["served"] == 5


# --- Running it --------------------------------------------------------------------------------------


def test_the_module_does_not_need_django():
    code = "import sys, gateway.fake_upstream; sys.exit('django' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(urlsplit(url)[1].split(":"), timeout=1):
                pass
            address = urlsplit(url)
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=2)
            connection.request("GET", "/_fake/health")
            return json.loads(connection.getresponse().read())
        except OSError:
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.1)


def test_uvicorn_serves_the_module_level_app_with_a_default_scenario():
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway.fake_upstream:app",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=ROOT,
        env={**os.environ, "FAKE_UPSTREAM_SCENARIO": "words=3"},
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, process)
        client = openai.OpenAI(api_key=OPENAI_KEY, base_url=url + "/v1", max_retries=0)
        assert client.chat.completions.create(model="gpt-4o", messages=CHAT).usage.completion_tokens == 3
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_management_command_serves_it():
    process = subprocess.Popen(
        [sys.executable, "manage.py", "fake_upstream", "--port", "0", "--scenario", "words=2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().split()[-1]
        assert wait_for_health(url, process)["status"] == "ok"
        client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=url, max_retries=0)
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.usage.output_tokens == 2
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def test_the_management_command_refuses_a_bad_scenario():
    with pytest.raises(CommandError, match="bogus"):
        call_command("fake_upstream", "--scenario", "bogus")
