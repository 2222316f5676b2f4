"""Reading usage from what the upstream reports, once per request (docs/gateway.md#stream-accounting).

Pure code over bytes and dicts: no Django, no I/O. A `UsageMeter` is fed the upstream's JSON body
or its SSE events as they pass through and ends with the one `Usage` the request is billed for:

- OpenAI chat: `usage` of the body, or of the stream's usage chunk (the one the gateway asked for
  with `stream_options.include_usage` when the client did not: `UsageMeter.strip_usage_chunk`);
- OpenAI Responses: `response.usage`, from `response.completed`, `response.incomplete` or
  `response.failed` (all three carry real usage);
- embeddings: `usage.prompt_tokens`;
- Anthropic: input and cache tokens (5m / 1h) from `message_start`, the final output count from
  `message_delta` (cumulative), never summed per event.

OpenAI reports cached prompt tokens inside its prompt count: they are moved out of input into
cache reads, so each token is billed once, at its own price. When the upstream reports nothing,
or a stream stops before its usage, the missing part is estimated from the text (a token per four
characters, like the providers' rule of thumb) and the source says so: `reported`, `estimated`, or
`partial` (the upstream reported input, the output was estimated from the text received).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from billing.cost import Usage

OPENAI = "openai"
ANTHROPIC = "anthropic"

# Endpoint kinds.
CHAT = "chat"
RESPONSES = "responses"
EMBEDDINGS = "embeddings"
MESSAGES = "messages"
COUNT_TOKENS = "count_tokens"

REPORTED = "reported"
ESTIMATED = "estimated"
PARTIAL = "partial"

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4


def text_tokens(characters: int) -> int:
    return math.ceil(characters / CHARS_PER_TOKEN) if characters > 0 else 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class Counts:
    input: int = 0
    output: int = 0
    cache_5m: int = 0
    cache_1h: int = 0
    cache_read: int = 0


def openai_counts(usage: dict) -> Counts:
    """Chat (`prompt_tokens`), Responses (`input_tokens`) and embeddings share this reading."""
    prompt = _int(usage.get("prompt_tokens")) or _int(usage.get("input_tokens"))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = min(_int(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    output = _int(usage.get("completion_tokens")) or _int(usage.get("output_tokens"))
    return Counts(input=prompt - cached, output=output, cache_read=cached)


def anthropic_counts(usage: dict) -> Counts:
    creation = _int(usage.get("cache_creation_input_tokens"))
    split = usage.get("cache_creation")
    if isinstance(split, dict) and (
        "ephemeral_5m_input_tokens" in split or "ephemeral_1h_input_tokens" in split
    ):
        five, hour = (
            _int(split.get("ephemeral_5m_input_tokens")),
            _int(split.get("ephemeral_1h_input_tokens")),
        )
        # A total above the split's sum (should not happen) bills the difference as 5m writes.
        five += max(0, creation - five - hour)
    else:
        five, hour = creation, 0
    return Counts(
        input=_int(usage.get("input_tokens")),
        output=_int(usage.get("output_tokens")),
        cache_5m=five,
        cache_1h=hour,
        cache_read=_int(usage.get("cache_read_input_tokens")),
    )


# --- Estimation ------------------------------------------------------------------------------------


def _text_characters(value: Any) -> int:
    """Characters of the text a request or answer carries (strings anywhere inside `value`)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_characters(item) for item in value)
    if isinstance(value, dict):
        total = 0
        for key, item in value.items():
            if key in ("type", "role", "id", "cache_control", "signature", "index"):
                continue
            total += _text_characters(item)
        return total
    return 0


def estimate_input_tokens(kind: str, body: dict) -> int:
    """Input tokens estimated from a request body: its text plus a small overhead per message."""
    if kind == EMBEDDINGS:
        inputs = body.get("input")
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], int):
            return len(inputs)
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], list):
            return sum(len(item) for item in inputs if isinstance(item, list))
        return text_tokens(_text_characters(inputs))
    messages = body.get("messages") if kind != RESPONSES else body.get("input")
    count = len(messages) if isinstance(messages, list) else 1
    characters = _text_characters(messages)
    for field in ("system", "instructions", "tools"):
        if body.get(field):
            characters += (
                _text_characters(body[field]) if field != "tools" else len(orjson.dumps(body[field]))
            )
            count += 1
    return text_tokens(characters) + MESSAGE_OVERHEAD_TOKENS * count


# --- Metering ------------------------------------------------------------------------------------


class UsageMeter:
    """The usage of one upstream answer, JSON or streamed. Feed it, then read `usage()`.

    Stream events are kept raw (no parsing) unless they carry usage or end the stream; the text
    events are parsed only if the upstream never reports its output, to estimate it.
    """

    __slots__ = (
        "kind",
        "protocol",
        "reported_input",
        "reported_output",
        "counts",
        "terminal",
        "failed",
        "_text_events",
        "_input_estimate",
        "_body",
    )

    def __init__(self, *, kind: str, body: dict) -> None:
        self.kind = kind
        self.protocol = ANTHROPIC if kind in (MESSAGES, COUNT_TOKENS) else OPENAI
        self.reported_input = False  # the upstream reported the input side
        self.reported_output = False  # ... and its final output count
        self.counts = Counts()
        self.terminal = False  # the answer's terminal event (or whole JSON body) arrived
        self.failed = False  # a stream `error` event or a failed response
        self._text_events: list[bytes] = []
        self._body = body
        self._input_estimate: int | None = None

    # JSON answers.

    def feed_json(self, payload: dict) -> None:
        self.terminal = True
        usage = payload.get("usage")
        if self.kind == RESPONSES and payload.get("status") == "failed":
            self.failed = True
        if isinstance(usage, dict):
            self._take(usage, final=True)
        else:
            # Estimate from the answer's text.
            if self.kind == CHAT:
                self._text_events.append(orjson.dumps(payload.get("choices")))
            elif self.kind == RESPONSES:
                self._text_events.append(orjson.dumps(payload.get("output")))
            elif self.kind == MESSAGES:
                self._text_events.append(orjson.dumps(payload.get("content")))

    def _take(self, usage: dict, *, final: bool) -> None:
        counts = anthropic_counts(usage) if self.protocol == ANTHROPIC else openai_counts(usage)
        self.counts = counts
        self.reported_input = True
        self.reported_output = final or self.reported_output

    # Streams: one call per SSE event (`name` is its `event:` field, or b"").

    def feed_event(self, name: bytes, data: bytes) -> bool:
        """Observe one event; True when it is the usage chunk the gateway added to a chat stream."""
        if self.kind == CHAT:
            return self._chat_event(data)
        if self.kind == RESPONSES:
            self._responses_event(name, data)
        elif self.kind == MESSAGES:
            self._messages_event(name, data)
        return False

    def _chat_event(self, data: bytes) -> bool:
        if data == b"[DONE]":
            self.terminal = True
            return False
        if b'"usage":{' in data or b'"usage": {' in data:
            payload = orjson.loads(data)
            usage = payload.get("usage")
            if isinstance(usage, dict):
                self._take(usage, final=True)
                return True
        if b'"content"' in data or b'"tool_calls"' in data:
            self._text_events.append(data)
        return False

    def _responses_event(self, name: bytes, data: bytes) -> None:
        if name in (b"response.completed", b"response.incomplete", b"response.failed"):
            self.terminal = True
            self.failed = name == b"response.failed"
            response = orjson.loads(data).get("response") or {}
            usage = response.get("usage")
            if isinstance(usage, dict):
                self._take(usage, final=True)
        elif name == b"response.output_text.delta" or name == b"response.function_call_arguments.delta":
            self._text_events.append(data)
        elif name == b"error":
            self.terminal = self.failed = True

    def _messages_event(self, name: bytes, data: bytes) -> None:
        if name == b"content_block_delta":
            self._text_events.append(data)
        elif name == b"message_start":
            usage = (orjson.loads(data).get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self.counts = anthropic_counts(usage)
                self.reported_input = True
        elif name == b"message_delta":
            usage = orjson.loads(data).get("usage")
            if isinstance(usage, dict):
                # Cumulative counts: the output is final here; input and cache counts, when a
                # newer API repeats them, are never below what message_start said.
                later = anthropic_counts(usage)
                counts = self.counts
                counts.output = later.output
                counts.input = max(counts.input, later.input)
                counts.cache_read = max(counts.cache_read, later.cache_read)
                extra = later.cache_5m + later.cache_1h - counts.cache_5m - counts.cache_1h
                if extra > 0 and "cache_creation" not in usage:
                    counts.cache_5m += extra
                elif extra > 0:
                    counts.cache_5m, counts.cache_1h = later.cache_5m, later.cache_1h
                self.reported_output = True
                self.reported_input = True
        elif name == b"message_stop":
            self.terminal = True
        elif name == b"error":
            self.terminal = self.failed = True

    # The result.

    @property
    def has_usage(self) -> bool:
        return self.reported_input or self.reported_output

    def estimated_output_tokens(self) -> int:
        characters = 0
        for raw in self._text_events:
            try:
                characters += _text_characters(_delta_text(self.kind, orjson.loads(raw)))
            except orjson.JSONDecodeError:
                continue
        return text_tokens(characters)

    def estimated_input_tokens(self) -> int:
        if self._input_estimate is None:
            self._input_estimate = estimate_input_tokens(self.kind, self._body)
        return self._input_estimate

    def usage(self, *, input_seen: bool = True) -> tuple[Usage, str]:
        """The Usage to bill and its source. `input_seen=False`: the upstream never got to answer
        (the client left before the first byte): only reported input counts, nothing is estimated."""
        counts = self.counts
        if self.reported_input and self.reported_output:
            source = REPORTED
            output = counts.output
        elif self.reported_input:
            source = PARTIAL
            output = max(counts.output, self.estimated_output_tokens()) if input_seen else 0
        else:
            source = ESTIMATED
            counts = Counts(input=self.estimated_input_tokens())
            output = self.estimated_output_tokens()
        if self.kind == EMBEDDINGS:
            output = 0
        return (
            Usage(
                input_tokens=counts.input,
                output_tokens=output,
                cache_creation_5m_tokens=counts.cache_5m,
                cache_creation_1h_tokens=counts.cache_1h,
                cache_read_tokens=counts.cache_read,
            ),
            source,
        )


def _delta_text(kind: str, payload: Any) -> Any:
    """The generated text inside one stream event or a JSON answer's content."""
    if not isinstance(payload, dict):
        return payload  # choices / output / content arrays of a JSON answer
    if kind == CHAT:
        return [choice.get("delta") or choice.get("message") for choice in payload.get("choices") or ()]
    if kind == RESPONSES:
        return payload.get("delta")
    if kind == MESSAGES:
        delta = payload.get("delta") or {}
        return delta.get("text") or delta.get("partial_json") or delta.get("thinking") or ""
    return ""


# --- SSE framing -----------------------------------------------------------------------------------


class SSEFramer:
    """Splits a byte stream into SSE events (separated by a blank line), keeping the raw bytes."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete events in what has arrived so far, each with its trailing blank line."""
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        data = self._pending + chunk if self._pending else chunk
        events = []
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            events.append(data[start : end + 2])
            start = end + 2
        self._pending = data[start:]
        return events

    def rest(self) -> bytes:
        """Bytes after the last complete event (a stream cut mid-event)."""
        rest, self._pending = self._pending, b""
        return rest


def sse_fields(event: bytes) -> tuple[bytes, bytes]:
    """(event name, data) of one raw SSE event; several data lines are joined with newlines."""
    name = b""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, b"\n".join(data)
