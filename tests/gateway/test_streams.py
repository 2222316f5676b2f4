"""Stream accounting (docs/gateway.md#stream-accounting): usage is read once, from what the upstream
reports, whatever happens to the stream. Each rule is a defect of a peer we do not copy; each test
drives the real gateway against the fake upstream and compares the ledger with what the fake
upstream says it billed."""

from __future__ import annotations

import time

import httpx2 as httpx
import orjson
import pytest

from tests.gateway.conftest import anthropic_sdk, ledger_rows, make_tenant, openai_sdk

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Say hello to the toll gate."}]  # 7 + 4 = 11 input tokens


def billed(served: dict) -> tuple[int, int]:
    return served["billed"]["input_tokens"], served["billed"]["output_tokens"]


def test_an_anthropic_stream_of_many_events_makes_one_row(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("words=60",))
    events = list(
        anthropic_sdk(gateway_url, tenant.secret).messages.create(
            model="claude-sonnet-4-6", max_tokens=200, messages=QUESTION, stream=True
        )
    )
    assert sum(event.type == "content_block_delta" for event in events) == 60
    (row,) = ledger_rows(1)
    time.sleep(0.05)
    assert ledger_rows(1) == [row], "one row per request, never one per event"
    assert (row.input_tokens, row.output_tokens, row.usage_source) == (11, 60, "reported")


def test_a_chat_stream_is_asked_for_usage_which_the_client_never_sees(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai")
    chunks = list(
        openai_sdk(gateway_url, tenant.secret).chat.completions.create(
            model="gpt-4o", messages=QUESTION, stream=True
        )
    )
    assert fake_upstream.last_request()["include_usage"] is True
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    (row,) = ledger_rows(1)
    assert (row.input_tokens, row.output_tokens, row.usage_source) == (11, 24, "reported")


def test_a_client_that_asked_for_usage_gets_its_usage_chunk(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai")
    chunks = list(
        openai_sdk(gateway_url, tenant.secret).chat.completions.create(
            model="gpt-4o", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage.completion_tokens == 24
    assert ledger_rows(1)[0].output_tokens == 24


@pytest.mark.parametrize(
    ("scenario", "last_event"), [("incomplete", "response.incomplete"), ("failed", "response.failed")]
)
def test_a_responses_stream_that_does_not_complete_still_reports_real_usage(
    fake_upstream, gateway_url, scenario, last_event
):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=(scenario,))
    events = list(
        openai_sdk(gateway_url, tenant.secret).responses.create(
            model="gpt-4o", input="Say hello.", stream=True
        )
    )
    assert events[-1].type == last_event
    (row,) = ledger_rows(1)
    assert (row.input_tokens, row.output_tokens) == billed(fake_upstream.last_request())
    assert row.output_tokens > 0 and row.usage_source == "reported"


def stream_events(response: httpx.Response) -> list[tuple[str, dict | str]]:
    events = []
    for block in response.text.split("\n\n"):
        name, data = "", ""
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        if data:
            events.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return events


def test_a_cut_anthropic_stream_records_the_input_reported_and_says_so(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("cut=10",))
    response = httpx.post(
        gateway_url + "/v1/messages",
        json={"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": QUESTION, "stream": True},
        headers={"x-api-key": tenant.secret, "anthropic-version": "2023-06-01"},
    )
    events = stream_events(response)
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "UPSTREAM_STREAM_ERROR"
    assert fake_upstream.last_request()["outcome"] == "cut"
    (row,) = ledger_rows(1)
    # Input came in message_start (11); the output never came: estimated from the 10 words received.
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert (row.outcome, row.usage_source, row.input_tokens) == ("upstream_cut", "partial", 11)
    assert row.output_tokens == -(-len(text) // 4) > 0


def test_a_cut_chat_stream_without_any_usage_is_estimated_not_zero(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("cut=6",))
    response = httpx.post(
        gateway_url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": QUESTION, "stream": True},
        headers={"authorization": f"Bearer {tenant.secret}"},
    )
    events = stream_events(response)
    assert "error" in events[-1][1] and events[-1][1]["error"]["code"] == "UPSTREAM_STREAM_ERROR"
    (row,) = ledger_rows(1)
    assert (row.outcome, row.usage_source) == ("upstream_cut", "estimated")
    assert row.input_tokens == 7 + 4  # the gateway's estimate of the prompt: 27 characters, one message
    assert row.output_tokens > 0


def test_a_client_that_leaves_mid_stream_is_billed_what_the_provider_bills(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("slow=40",))
    with httpx.stream(
        "POST",
        gateway_url + "/v1/messages",
        json={"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": QUESTION, "stream": True},
        headers={"x-api-key": tenant.secret, "anthropic-version": "2023-06-01"},
    ) as response:
        received = b""
        for chunk in response.iter_bytes():
            received += chunk
            if received.count(b"content_block_delta") >= 3:
                break  # leaving: the connection closes here
    (row,) = ledger_rows(1)
    served = fake_upstream.last_request()
    assert served["outcome"] == "completed", "the gateway read the upstream to its end"
    assert (row.outcome, row.usage_source) == ("client_disconnected", "reported")
    assert (row.input_tokens, row.output_tokens) == billed(served) == (11, 24)


def test_a_client_that_leaves_before_the_first_byte_cancels_the_upstream(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("latency=3000",))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway_url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": QUESTION, "stream": True},
            headers={"authorization": f"Bearer {tenant.secret}"},
            timeout=httpx.Timeout(10, read=0.5),
        )
    served = fake_upstream.wait_for(lambda log: log and log[-1]["outcome"] != "in_progress")[-1]
    assert served["outcome"] == "client_disconnected"
    assert billed(served) == (0, 0)
    assert ledger_rows(1, timeout=0.5) == [], "nothing was reported, so nothing is recorded"


def test_an_upstream_without_usage_is_estimated_and_the_row_says_so(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("nousage",))
    # Not strict: an answer without `usage` is exactly what the SDK's validation refuses.
    anthropic_sdk(gateway_url, tenant.secret, strict=False).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=QUESTION
    )
    (row,) = ledger_rows(1)
    assert row.usage_source == "estimated"
    assert row.input_tokens == 11 and row.output_tokens > 0
    assert row.breakdown["usage_source"] == "estimated"
    assert "estimated" in row.explain()


def test_chunks_reach_the_client_as_they_arrive(fake_upstream, gateway_url):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("slow=150,chunks=4",))
    with httpx.stream(
        "POST",
        gateway_url + "/v1/messages",
        json={"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": QUESTION, "stream": True},
        headers={"x-api-key": tenant.secret, "anthropic-version": "2023-06-01"},
    ) as response:
        first_delta_at = None
        for chunk in response.iter_bytes():
            if first_delta_at is None and b"content_block_delta" in chunk:
                first_delta_at = time.time()
    served = fake_upstream.last_request()
    # Four chunks 150 ms apart, then 150 ms before the end: the first was here long before the last left.
    assert first_delta_at < served["ended_at"] - 0.3


@pytest.mark.parametrize(
    ("setting", "scenario"), [("GATEWAY_IDLE_TIMEOUT", "slow=1500"), ("GATEWAY_TOTAL_TIMEOUT", "slow=300")]
)
def test_a_stalled_or_overlong_stream_is_cut_and_billed_for_what_came(
    fake_upstream, gateway_url, settings, setting, scenario
):
    setattr(settings, setting, 0.8)
    # The first chunk arrives within the first-byte timeout; then chunks come too slowly.
    settings.GATEWAY_FIRST_BYTE_TIMEOUT = 5
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=(scenario,))
    response = httpx.post(
        gateway_url + "/v1/messages",
        json={"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": QUESTION, "stream": True},
        headers={"x-api-key": tenant.secret, "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    name, data = stream_events(response)[-1]
    assert name == "error"
    assert ("stalled" if setting == "GATEWAY_IDLE_TIMEOUT" else "total time") in data["error"]["message"]
    (row,) = ledger_rows(1)
    assert (row.outcome, row.usage_source, row.input_tokens) == ("upstream_cut", "partial", 11)
