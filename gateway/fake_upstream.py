"""A fake upstream LLM server for tests, benchmarks and the demo (real providers are out of reach here).

A pure ASGI application, independent of Django and of the rest of Tollgate, that speaks the OpenAI
and Anthropic wire formats closely enough for the official `openai` and `anthropic` SDKs to work
against it unchanged, JSON and SSE alike:

    POST /v1/chat/completions   POST /v1/responses   POST /v1/embeddings   GET /v1/models[/<id>]
    POST /v1/messages           POST /v1/messages/count_tokens
    (GET /v1/models answers in Anthropic's shape when the request carries `anthropic-version`.)

Run it:  python manage.py fake_upstream --port 9100   or   python -m gateway.fake_upstream --port 9100
or       uvicorn gateway.fake_upstream:app --port 9100 --no-access-log     (one process only: the
served-requests log lives in memory). `FAKE_UPSTREAM_SCENARIO` sets a default scenario for every
request and `FAKE_UPSTREAM_MAX_REQUESTS` how many served requests the log keeps (100,000).

Authentication, like the providers: OpenAI paths need `Authorization: Bearer <key>`; Anthropic paths
need `x-api-key` (or `Authorization: Bearer`, as OAuth tokens do) and `anthropic-version`. Any key is
accepted, except keys starting with `revoked` (401, quoting the key in its message) and `forbidden` (403).

Usage is deterministic, and every response reports exactly what the server bills:
- A text counts ceil(characters / 4) tokens. Text parts and blocks count their text; any other part
  (images, tool calls and results, tool definitions) counts its compact JSON (without `cache_control`).
- Input = 4 tokens per message (the system prompt and Responses `instructions` each count as one)
  + their content + the `tools` (OpenAI: the whole array as one JSON text; Anthropic: per tool).
  Embeddings: the sum over inputs (a token-id array counts its length), no overhead.
- Output: one token per generated word; the server generates `words` words (24 by default), or fewer
  when `max_tokens` / `max_completion_tokens` / `max_output_tokens` is lower (then finish_reason is
  `length`, stop_reason `max_tokens`, and a Responses request ends `incomplete`).
- Anthropic prompt cache: a block with `cache_control` is a breakpoint. The longest prefix, up to the
  last breakpoint and ending on any block boundary, that an earlier request (same model, this server
  process) wrote at a breakpoint is read (`cache_read_input_tokens`); the tokens after it up to each
  following breakpoint are written with that breakpoint's ttl (5m by default, or 1h), reported in
  `cache_creation`. Entries expire after their ttl, renewed on each read. There is no minimum length.
- OpenAI prompt cache: for a prompt of at least 1024 tokens, the longest prefix of whole messages
  (tools first) seen in an earlier prompt of at least 1024 tokens (same model, within 10 minutes) is
  cached, rounded down to a multiple of 128 tokens, and 0 below 1024: `cached_tokens`, included in
  `prompt_tokens` / `input_tokens` as OpenAI does.

Scenarios choose a behaviour per upstream account (a base-URL prefix `/scenario/<switches>/v1/...`)
or per request (header `x-fake-scenario: <switches>`, which wins), switches separated by commas:
    latency=<ms>     wait before the first byte          slow=<ms>      wait before each chunk and the end
    status=<code>    answer that error in the provider's shape (429: Retry-After and rate-limit headers)
    retry_after=<s>  the Retry-After (and reset) seconds, 1 by default
    words=<n>        words to generate (24)              chunks=<n>     content chunks (one per word)
    cut[=<n>]        end the stream cleanly after n content chunks (half by default), before its
                     terminal event and usage; a JSON answer is dropped half-way
    drop_after=<n>   close the connection abruptly after n content chunks
    nousage          report no usage at all (the server still bills)
    incomplete / failed   /v1/responses ends with response.incomplete / response.failed (usage
                     included; failed after half the words; a non-streaming failed is a 500)
Unknown switches or bad values get 400, so a typo in a test fails loudly; a switch that does not apply
to an endpoint is ignored.

The served-requests log: `GET /_fake/requests[?since=<seq>]` lists what the server served (id,
path, model, stream, status, outcome, the usage it reported and what it billed, times, the caller's
`x-request-id` / `x-tollgate-request-id`, a fingerprint of the key), oldest first; `DELETE
/_fake/requests` empties it, `DELETE /_fake/cache` forgets the prompt caches, `GET /_fake/health`
counts served and in-flight requests. A client that goes away is noticed while the server waits
(latency, slow): before the first byte it is billed nothing; mid-stream it is billed its input and
the output chunks already sent. A `cut` or dropped stream is billed the same way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import secrets
import struct
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs

OPENAI = "openai"
ANTHROPIC = "anthropic"

DEFAULT_WORDS = 24
MESSAGE_OVERHEAD = 4
OPENAI_CACHE_MIN_TOKENS = 1024
OPENAI_CACHE_STEP = 128
OPENAI_CACHE_TTL_SECONDS = 600
ANTHROPIC_CACHE_TTL_SECONDS = {"5m": 300, "1h": 3600}
PROMPT_CACHE_MAX_ENTRIES = 100_000
DEFAULT_EMBEDDING_DIMENSIONS = 1536
DEFAULT_MAX_REQUESTS = 100_000
REVOKED_KEY_PREFIX = "revoked"
FORBIDDEN_KEY_PREFIX = "forbidden"
PING_EVERY = 10  # Anthropic streams: a ping after content_block_start and after every 10th delta

OPENAI_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini", "text-embedding-3-small")
ANTHROPIC_MODELS = ("claude-sonnet-4-6", "claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5")

# The generated text: these words in turn, one token each.
_TEXT = (
    "The toll gate opens for every request that pays its way and records each token it carries "
    "through the pass before the road turns toward the next valley where travellers rest"
)
VOCAB = tuple(_TEXT.split())

# uvicorn logs this when an application ends without finishing its response, which is exactly how a
# dropped connection is produced on purpose (drop_after, cut JSON): keep the log for real faults.
_DELIBERATE_DROP = "ASGI callable returned without completing response."


class _QuietDeliberateDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DELIBERATE_DROP


logging.getLogger("uvicorn.error").addFilter(_QuietDeliberateDrops())


# --- Scenarios -------------------------------------------------------------------------------------


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Scenario:
    latency_ms: int = 0
    slow_ms: int = 0
    status: int = 0
    retry_after: int | None = None  # 429s default to 1 s
    words: int = DEFAULT_WORDS
    chunks: int = 0  # 0: one chunk per word
    cut: int | None = None  # content chunks before a clean early end; -1: half of them
    drop_after: int | None = None
    nousage: bool = False
    incomplete: bool = False
    failed: bool = False


# switch -> (field, lowest, highest)
_NUMBER_SWITCHES = {
    "latency": ("latency_ms", 0, 600_000),
    "slow": ("slow_ms", 0, 60_000),
    "status": ("status", 400, 599),
    "retry_after": ("retry_after", 0, 86_400),
    "words": ("words", 0, 100_000),
    "chunks": ("chunks", 1, 100_000),
    "drop_after": ("drop_after", 0, 100_000),
    "cut": ("cut", 0, 100_000),
}
_FLAG_SWITCHES = {"nousage", "incomplete", "failed", "cut"}
SWITCHES = sorted(set(_NUMBER_SWITCHES) | _FLAG_SWITCHES)


@lru_cache(maxsize=1024)
def parse_scenario(spec: str) -> tuple[tuple[str, Any], ...]:
    """The field changes a switch list asks for, e.g. "status=429,retry_after=2"; ScenarioError if bad."""
    changes: dict[str, Any] = {}
    for item in spec.split(","):
        name, has_value, value = item.strip().partition("=")
        name, value = name.strip(), value.strip()
        if not name:
            continue
        if name not in SWITCHES:
            raise ScenarioError(
                f"Unknown fake scenario switch {name!r}: expected one of {', '.join(SWITCHES)}."
            )
        if not has_value:
            if name not in _FLAG_SWITCHES:
                raise ScenarioError(f"Fake scenario switch {name} needs a value ({name}=<number>).")
            changes[name] = -1 if name == "cut" else True
            continue
        if name not in _NUMBER_SWITCHES:
            raise ScenarioError(f"Fake scenario switch {name} takes no value.")
        field, lowest, highest = _NUMBER_SWITCHES[name]
        if not (value.isascii() and value.isdigit()) or not lowest <= int(value) <= highest:
            raise ScenarioError(
                f"Fake scenario switch {name} needs a whole number from {lowest} to {highest}."
            )
        changes[field] = int(value)
    return tuple(changes.items())


# --- Token rules -----------------------------------------------------------------------------------


def text_tokens(text: str) -> int:
    return -(-len(text) // 4)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_tokens(value: Any) -> int:
    return text_tokens(_compact(value))


def _without_cache_control(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {key: value for key, value in block.items() if key != "cache_control"}
    return block


def _part_tokens(part: Any) -> int:
    if isinstance(part, str):
        return text_tokens(part)
    if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
        text = part.get("text")
        if isinstance(text, str):
            return text_tokens(text)
    return _json_tokens(_without_cache_control(part))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        return sum(_part_tokens(part) for part in content)
    return _json_tokens(content)


def _chat_segments(body: dict) -> list[tuple[int, Any]]:
    """(tokens, what it is) per prompt segment, in prompt order: the tools array, then each message."""
    segments: list[tuple[int, Any]] = []
    if body.get("tools"):
        segments.append((_json_tokens(body["tools"]), body["tools"]))
    for message in body["messages"]:
        if not isinstance(message, dict):
            raise BadRequest("Each message must be an object.")
        tokens = MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        if message.get("tool_calls"):
            tokens += _json_tokens(message["tool_calls"])
        segments.append((tokens, message))
    return segments


def _responses_segments(body: dict) -> list[tuple[int, Any]]:
    segments: list[tuple[int, Any]] = []
    if body.get("tools"):
        segments.append((_json_tokens(body["tools"]), body["tools"]))
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        segments.append((MESSAGE_OVERHEAD + text_tokens(instructions), instructions))
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise BadRequest("'input' must be a string or an array of input items.")
    for item in items:
        if isinstance(item, dict) and ("role" in item or item.get("type") == "message"):
            segments.append((MESSAGE_OVERHEAD + _content_tokens(item.get("content")), item))
        else:
            segments.append((_json_tokens(item), item))
    return segments


def _cache_ttl(block: Any) -> str | None:
    control = block.get("cache_control") if isinstance(block, dict) else None
    if not control:
        return None
    ttl = control.get("ttl", "5m") if isinstance(control, dict) else None
    if ttl not in ANTHROPIC_CACHE_TTL_SECONDS:
        raise BadRequest("cache_control.ttl must be '5m' or '1h'.")
    return ttl


def _anthropic_blocks(body: dict) -> list[tuple[int, tuple[str, Any], str | None]]:
    """(tokens, (where, block), cache ttl or None) per prompt block in cache order: tools, system, messages.

    A message's (or the system prompt's) 4-token overhead counts with its first block.
    """
    blocks: list[tuple[int, tuple[str, Any], str | None]] = []
    for tool in body.get("tools") or ():
        blocks.append((_json_tokens(_without_cache_control(tool)), ("tool", tool), _cache_ttl(tool)))

    def add(where: str, content: Any) -> None:
        if isinstance(content, str) or content is None:
            blocks.append((MESSAGE_OVERHEAD + _content_tokens(content), (where, content), None))
            return
        if not isinstance(content, list) or not content:
            raise BadRequest(f"{where} content must be a string or a non-empty array of blocks.")
        for index, block in enumerate(content):
            overhead = MESSAGE_OVERHEAD if index == 0 else 0
            blocks.append((overhead + _part_tokens(block), (where, block), _cache_ttl(block)))

    if body.get("system"):
        add("system", body["system"])
    for message in body["messages"]:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequest("Each message needs a role of 'user' or 'assistant'.")
        add(message["role"], message.get("content"))
    return blocks


class PromptCache:
    """Prefix digests with an expiry, renewed on each hit; the oldest go first beyond max_entries."""

    def __init__(self, max_entries: int = PROMPT_CACHE_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def hit(self, key: bytes, now: float) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        expires_at, ttl = entry
        if expires_at <= now:
            del self._entries[key]
            return False
        self._entries[key] = (now + ttl, ttl)
        self._entries.move_to_end(key)
        return True

    def put(self, key: bytes, ttl: float, now: float) -> None:
        self._entries[key] = (now + ttl, ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def _digests(model: str, materials: list[Any]) -> list[bytes]:
    """One digest per prefix: material[0], material[0..1], …"""
    running = hashlib.blake2b(model.encode(), digest_size=16)
    digests = []
    for material in materials:
        running.update(json.dumps(material, sort_keys=True, separators=(",", ":")).encode())
        digests.append(running.digest())
    return digests


def openai_cached_tokens(cache: PromptCache, model: str, segments: list[tuple[int, Any]], now: float) -> int:
    total = sum(tokens for tokens, _ in segments)
    if total < OPENAI_CACHE_MIN_TOKENS:
        return 0
    longest = cumulative = 0
    digests = _digests(model, [material for _, material in segments])
    for (tokens, _), digest in zip(segments, digests, strict=True):
        cumulative += tokens
        if cache.hit(digest, now):
            longest = cumulative
    for digest in digests:
        cache.put(digest, OPENAI_CACHE_TTL_SECONDS, now)
    cached = longest // OPENAI_CACHE_STEP * OPENAI_CACHE_STEP
    return cached if cached >= OPENAI_CACHE_MIN_TOKENS else 0


def anthropic_cache_tokens(
    cache: PromptCache, model: str, blocks: list[tuple[int, tuple[str, Any], str | None]], now: float
) -> tuple[int, int, int]:
    """(cache read, cache write 5m, cache write 1h) tokens; see the module docstring for the rule."""
    breakpoints = [index for index, (_, _, ttl) in enumerate(blocks) if ttl]
    if not breakpoints:
        return 0, 0, 0
    upto = blocks[: breakpoints[-1] + 1]
    digests = _digests(model, [(where, _without_cache_control(block)) for _, (where, block), _ in upto])
    read = cumulative = 0
    ends = []
    for (tokens, _, _), digest in zip(upto, digests, strict=True):
        cumulative += tokens
        ends.append(cumulative)
        if cache.hit(digest, now):
            read = cumulative
    written = {"5m": 0, "1h": 0}
    covered = read
    for index in breakpoints:
        ttl = blocks[index][2]
        if ends[index] > covered:
            written[ttl] += ends[index] - covered
            covered = ends[index]
        cache.put(digests[index], ANTHROPIC_CACHE_TTL_SECONDS[ttl], now)
    return read, written["5m"], written["1h"]


# --- Generated output --------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def output_chunks(words: int, chunks: int) -> tuple[tuple[str, int], ...]:
    """(text, tokens) per content chunk for `words` words spread over `chunks` chunks (0: one per word)."""
    if words <= 0:
        return ()
    count = min(chunks or words, words)
    base, extra = divmod(words, count)
    result, position = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        text = " ".join(VOCAB[(position + offset) % len(VOCAB)] for offset in range(size))
        result.append((" " + text if position else text, size))
        position += size
    return tuple(result)


@lru_cache(maxsize=64)
def embedding_vector(dimensions: int) -> tuple[str, str]:
    """A fixed unit vector as (JSON float array, base64 of little-endian float32), the same in both."""
    raw = [math.sin(index + 1.0) for index in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(value / norm for value in raw))
    values = struct.unpack(f"<{dimensions}f", packed)
    return "[" + ",".join(repr(value) for value in values) + "]", base64.b64encode(packed).decode()


# --- Errors ------------------------------------------------------------------------------------------


class BadRequest(Exception):
    pass


class ProviderError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


_OPENAI_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
    529: ("server_error", "overloaded"),
}
_ANTHROPIC_ERROR_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_SCENARIO_ERROR_MESSAGES = {
    401: "Invalid authentication credentials (fake upstream scenario).",
    403: "This key may not use this resource (fake upstream scenario).",
    429: "Rate limit reached for requests (fake upstream scenario).",
    500: "The server had an error while processing the request (fake upstream scenario).",
    529: "Overloaded (fake upstream scenario).",
}


def error_body(provider: str, status: int, message: str, request_id: str) -> bytes:
    if provider == ANTHROPIC:
        kind = _ANTHROPIC_ERROR_KINDS.get(status, "invalid_request_error" if status < 500 else "api_error")
        return _dumps(
            {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
        )
    kind, code = _OPENAI_ERROR_KINDS.get(
        status, ("invalid_request_error" if status < 500 else "server_error", None)
    )
    return _dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def rate_limit_headers(provider: str, seconds: int) -> list[tuple[bytes, bytes]]:
    headers = [(b"retry-after", str(seconds).encode())]
    if provider == ANTHROPIC:
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds)).encode()
        for limit in (b"requests", b"tokens", b"input-tokens", b"output-tokens"):
            headers += [
                (b"anthropic-ratelimit-" + limit + b"-limit", b"1000"),
                (b"anthropic-ratelimit-" + limit + b"-remaining", b"0"),
                (b"anthropic-ratelimit-" + limit + b"-reset", reset),
            ]
    else:
        for limit in (b"requests", b"tokens"):
            headers += [
                (b"x-ratelimit-limit-" + limit, b"1000"),
                (b"x-ratelimit-remaining-" + limit, b"0"),
                (b"x-ratelimit-reset-" + limit, f"{seconds}s".encode()),
            ]
    return headers


# --- The served-requests log --------------------------------------------------------------------------

_dumps_str = json.JSONEncoder(separators=(",", ":")).encode


def _dumps(value: Any) -> bytes:
    return _dumps_str(value).encode()


_SHARED: dict[Any, Any] = {}


def _shared(value: Any) -> Any:
    """One copy of a value many log records repeat (paths, models, usages), so the log stays small."""
    if value is None:
        return None
    found = _SHARED.get(value)
    if found is None:
        if len(_SHARED) >= 20_000:
            _SHARED.clear()
        found = _SHARED[value] = value
    return found


def key_fingerprint(key: str) -> str:
    """How the log names a key without storing it: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class ServedRequest:
    __slots__ = (
        "seq",
        "method",
        "path",
        "scenario",
        "provider",
        "model",
        "stream",
        "include_usage",
        "status",
        "outcome",
        "usage",
        "billed",
        "started_at",
        "ended_at",
        "request_id",
        "tollgate_request_id",
        "key_fingerprint",
    )

    @property
    def id(self) -> str:
        """The id the server gave the request: the body's `id` where it has one, and x-fake-request-id."""
        return f"{_ID_PREFIXES.get(self.path, 'req_fake_')}{_BOOT}_{self.seq}"

    def as_json(self) -> dict[str, Any]:
        billed = self.billed
        return {
            "seq": self.seq,
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "scenario": self.scenario,
            "provider": self.provider,
            "model": self.model,
            "stream": self.stream,
            "include_usage": self.include_usage,
            "status": self.status,
            "outcome": self.outcome,
            "completed": self.outcome in ("completed", "incomplete", "failed"),
            "client_disconnected": self.outcome == "client_disconnected",
            "usage": json.loads(self.usage) if self.usage else None,
            "billed": {
                "input_tokens": billed[0],
                "output_tokens": billed[1],
                "cache_read_tokens": billed[2],
                "cache_creation_5m_tokens": billed[3],
                "cache_creation_1h_tokens": billed[4],
            },
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "request_id": self.request_id,
            "tollgate_request_id": self.tollgate_request_id,
            "key_fingerprint": self.key_fingerprint,
        }


NO_BILL = (0, 0, 0, 0, 0)  # input, output, cache read, cache write 5m, cache write 1h

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_ID_PREFIXES = {
    "/v1/chat/completions": "chatcmpl-fake-",
    "/v1/responses": "resp_fake_",
    "/v1/messages": "msg_fake_",
}


@dataclass(slots=True)
class StreamPlan:
    head: bytes  # everything before the first content chunk
    chunks: list[bytes]  # one SSE frame (or several) per content chunk
    tokens: list[int]  # output tokens in each chunk
    tail: bytes  # everything after the last content chunk, through the terminal event
    bill: tuple[int, int, int, int, int]
    usage: bytes | None  # the usage the tail reports
    outcome: str = "completed"


class Exchange:
    """One request in flight: the ASGI channels, its log record and scenario, a disconnect watch."""

    __slots__ = ("receive", "send", "record", "id", "scenario", "provider", "id_headers", "_watch")

    def __init__(self, receive, send, record: ServedRequest, provider: str) -> None:
        self.receive = receive
        self.send = send
        self.record = record
        self.id = record.id
        self.provider = provider
        self.scenario = Scenario()
        request_header = b"request-id" if provider == ANTHROPIC else b"x-request-id"
        self.id_headers = [
            (b"x-fake-request-id", self.id.encode()),
            (request_header, f"req_fake_{_BOOT}_{record.seq}".encode()),
        ]
        self._watch: asyncio.Future | None = None

    async def pause(self, milliseconds: int) -> bool:
        """Wait; True as soon as the client goes away (the wait ends early then)."""
        if self._watch is None:
            self._watch = asyncio.ensure_future(_until_disconnect(self.receive))
        done, _ = await asyncio.wait((self._watch,), timeout=milliseconds / 1000)
        return bool(done)

    def close(self) -> None:
        if self._watch is not None and not self._watch.done():
            self._watch.cancel()


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


_BOOT = secrets.token_hex(3)  # ids stay unique across restarts of the server


class FakeUpstream:
    """The ASGI application (see the module docstring)."""

    def __init__(self, *, default_scenario: str = "", max_requests: int = DEFAULT_MAX_REQUESTS) -> None:
        self.default_scenario = Scenario(**dict(parse_scenario(default_scenario)))
        self.log: deque[ServedRequest] = deque(maxlen=max_requests)
        self.served = 0
        self.in_flight = 0
        self.started_at = time.time()
        self.openai_cache = PromptCache()
        self.anthropic_cache = PromptCache()
        self._scenarios: dict[tuple[str, str], Scenario] = {}
        self._routes = {
            ("POST", "/v1/chat/completions"): self._chat_completions,
            ("POST", "/v1/responses"): self._responses,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/messages/count_tokens"): self._count_tokens,
        }

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if scope["path"].startswith("/_fake/"):
                await self._control(scope, receive, send)
            else:
                await self._serve(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # --- request lifecycle --------------------------------------------------------------------------

    async def _serve(self, scope, receive, send) -> None:
        path, path_spec = scope["path"], ""
        if path.startswith("/scenario/"):
            path_spec, _, rest = path[len("/scenario/") :].partition("/")
            path = "/" + rest
        headers = dict(scope["headers"])
        raw = await _read_body(receive)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = None
        model_name = body.get("model") if body else None
        is_anthropic = path.startswith("/v1/messages") or (
            path.startswith("/v1/models") and b"anthropic-version" in headers
        )

        self.served += 1
        record = ServedRequest()
        record.seq = self.served
        record.method = scope["method"]
        record.path = _shared(path)
        header_spec = headers.get(b"x-fake-scenario", b"").decode("latin-1")
        record.scenario = _shared(",".join(spec for spec in (path_spec, header_spec) if spec))
        record.provider = ANTHROPIC if is_anthropic else OPENAI
        record.model = _shared(model_name) if isinstance(model_name, str) else None
        record.stream = bool(body and body.get("stream") is True)
        options = body.get("stream_options") if body else None
        record.include_usage = (
            bool(isinstance(options, dict) and options.get("include_usage"))
            if record.stream and path == "/v1/chat/completions"
            else None
        )
        record.status = 0
        record.outcome = "in_progress"
        record.usage = None
        record.billed = NO_BILL
        record.started_at = time.time()
        record.ended_at = None
        record.request_id = _header(headers, b"x-request-id")
        record.tollgate_request_id = _header(headers, b"x-tollgate-request-id")
        key = _api_key(headers, is_anthropic)
        record.key_fingerprint = _shared(key_fingerprint(key)) if key else None
        self.log.append(record)
        self.in_flight += 1

        exchange = Exchange(receive, send, record, record.provider)
        try:
            await self._answer(exchange, path, path_spec, header_spec, headers, key, body)
        except ProviderError as error:
            await self._error(exchange, error)
        except BadRequest as error:
            await self._error(exchange, ProviderError(400, str(error)))
        finally:
            exchange.close()
            if record.ended_at is None:
                self._finish(record, record.status or 500, "error", NO_BILL, None)

    async def _answer(self, exchange: Exchange, path, path_spec, header_spec, headers, key, body) -> None:
        try:
            exchange.scenario = self._scenario(path_spec, header_spec)
        except ScenarioError as error:
            raise ProviderError(400, str(error)) from None
        scenario = exchange.scenario
        if scenario.latency_ms and await exchange.pause(scenario.latency_ms):
            self._finish(exchange.record, 499, "client_disconnected", NO_BILL, None)
            return
        handler = self._routes.get((exchange.record.method, path))
        if handler is None and path.startswith("/v1/models/") and exchange.record.method == "GET":
            handler = self._model
        if handler is None:
            known = any(route_path == path for _, route_path in self._routes)
            raise ProviderError(
                405 if known else 404, f"Unknown request URL: {exchange.record.method} {path}."
            )
        if exchange.provider == ANTHROPIC:
            if not key:
                raise ProviderError(401, "Missing API key: send x-api-key or Authorization: Bearer.")
            if b"anthropic-version" not in headers:
                raise ProviderError(400, "The anthropic-version header is required.")
        elif not key:
            raise ProviderError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.")
        if key.startswith(REVOKED_KEY_PREFIX):
            # Quoted whole, as some providers and relays do: the gateway must keep it out of its logs.
            raise ProviderError(401, f"Incorrect API key provided: {key} (revoked).")
        if key.startswith(FORBIDDEN_KEY_PREFIX):
            raise ProviderError(403, "This API key may not use this resource.")
        if scenario.status:
            message = _SCENARIO_ERROR_MESSAGES.get(scenario.status, f"Fake upstream error {scenario.status}.")
            extra = []
            if scenario.status == 429:
                extra = rate_limit_headers(
                    exchange.provider, 1 if scenario.retry_after is None else scenario.retry_after
                )
            elif scenario.retry_after is not None:
                extra = [(b"retry-after", str(scenario.retry_after).encode())]
            raise ProviderError(scenario.status, message, extra)
        if body is None:
            raise BadRequest("The request body is not a JSON object.")
        await handler(exchange, body)

    def _scenario(self, path_spec: str, header_spec: str) -> Scenario:
        cached = self._scenarios.get((path_spec, header_spec))
        if cached is None:
            changes = dict(parse_scenario(path_spec))
            changes.update(parse_scenario(header_spec))
            cached = replace(self.default_scenario, **changes) if changes else self.default_scenario
            if len(self._scenarios) > 4096:
                self._scenarios.clear()
            self._scenarios[(path_spec, header_spec)] = cached
        return cached

    def _finish(self, record: ServedRequest, status: int, outcome: str, bill, usage: bytes | None) -> None:
        if record.ended_at is not None:
            return
        record.status = status
        record.outcome = outcome
        record.billed = _shared(bill)
        record.usage = _shared(usage)
        record.ended_at = time.time()
        self.in_flight -= 1

    async def _error(self, exchange: Exchange, error: ProviderError) -> None:
        record = exchange.record
        body = error_body(exchange.provider, error.status, error.message, f"req_fake_{_BOOT}_{record.seq}")
        await _respond(exchange.send, error.status, body, exchange.id_headers + error.headers)
        self._finish(record, error.status, "error", NO_BILL, None)

    async def _json(
        self, exchange: Exchange, payload: bytes, bill, usage: bytes | None, outcome: str
    ) -> None:
        scenario = exchange.scenario
        if scenario.cut is not None or scenario.drop_after is not None:
            # The connection drops half-way through the body: the model did the work all the same.
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            await exchange.send(
                {"type": "http.response.start", "status": 200, "headers": headers + exchange.id_headers}
            )
            await exchange.send(
                {"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True}
            )
            self._finish(exchange.record, 200, "dropped", bill, None)
            return
        await _respond(exchange.send, 200, payload, exchange.id_headers)
        self._finish(exchange.record, 200, outcome, bill, usage)

    async def _stream(self, exchange: Exchange, plan: StreamPlan) -> None:
        scenario, send, record = exchange.scenario, exchange.send, exchange.record
        await send(
            {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + exchange.id_headers}
        )
        await send({"type": "http.response.body", "body": plan.head, "more_body": True})
        stop, ending = len(plan.chunks), plan.outcome
        if scenario.drop_after is not None:
            stop, ending = min(scenario.drop_after, stop), "dropped"
        elif scenario.cut is not None:
            stop, ending = (stop // 2 if scenario.cut < 0 else min(scenario.cut, stop)), "cut"
        sent = 0
        for index in range(stop):
            if scenario.slow_ms and await exchange.pause(scenario.slow_ms):
                self._finish(record, 200, "client_disconnected", _with_output(plan.bill, sent), None)
                return
            await send({"type": "http.response.body", "body": plan.chunks[index], "more_body": True})
            sent += plan.tokens[index]
        if ending == "dropped":
            self._finish(record, 200, "dropped", _with_output(plan.bill, sent), None)
            return  # uvicorn closes the connection mid-body
        if ending == "cut":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self._finish(record, 200, "cut", _with_output(plan.bill, sent), None)
            return
        if scenario.slow_ms and await exchange.pause(scenario.slow_ms):
            self._finish(record, 200, "client_disconnected", _with_output(plan.bill, sent), None)
            return
        await send({"type": "http.response.body", "body": plan.tail, "more_body": False})
        self._finish(record, 200, plan.outcome, plan.bill, plan.usage)

    # --- OpenAI -----------------------------------------------------------------------------------

    async def _chat_completions(self, exchange: Exchange, body: dict) -> None:
        model = _model_name(body)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise BadRequest("'messages' must be a non-empty array.")
        limit = _token_limit(body, "max_completion_tokens", "max_tokens")
        segments = _chat_segments(body)
        prompt = sum(tokens for tokens, _ in segments)
        cached = openai_cached_tokens(self.openai_cache, model, segments, time.time())
        scenario = exchange.scenario
        words, capped = _output_size(scenario, limit)
        finish = "length" if capped else "stop"
        usage = None
        if not scenario.nousage:
            usage = _dumps_str(
                {
                    "prompt_tokens": prompt,
                    "completion_tokens": words,
                    "total_tokens": prompt + words,
                    "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                    "completion_tokens_details": {
                        "reasoning_tokens": 0,
                        "audio_tokens": 0,
                        "accepted_prediction_tokens": 0,
                        "rejected_prediction_tokens": 0,
                    },
                }
            )
        bill = (prompt - cached, words, cached, 0, 0)
        chunks = output_chunks(words, scenario.chunks)
        record_id, created, model_json = exchange.id, int(time.time()), _dumps_str(model)
        if not exchange.record.stream:
            text = "".join(text for text, _ in chunks)
            payload = (
                f'{{"id":"{record_id}","object":"chat.completion","created":{created},"model":{model_json},'
                f'"choices":[{{"index":0,"message":{{"role":"assistant","content":{_dumps_str(text)},'
                f'"refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"{finish}"}}],'
                + (f'"usage":{usage},' if usage else "")
                + '"service_tier":"default","system_fingerprint":"fp_fake"}'
            )
            await self._json(exchange, payload.encode(), bill, usage and usage.encode(), "completed")
            return
        include_usage = bool(exchange.record.include_usage) and usage is not None
        start = (
            f'data: {{"id":"{record_id}","object":"chat.completion.chunk","created":{created},'
            f'"model":{model_json},"service_tier":"default","system_fingerprint":"fp_fake","choices":['
        )
        end = ',"usage":null}\n\n' if include_usage else "}\n\n"
        plan = StreamPlan(
            head=(
                start + '{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
                '"logprobs":null,"finish_reason":null}]' + end
            ).encode(),
            chunks=[
                (
                    start + '{"index":0,"delta":{"content":' + _dumps_str(text) + "},"
                    '"logprobs":null,"finish_reason":null}]' + end
                ).encode()
                for text, _ in chunks
            ],
            tokens=[tokens for _, tokens in chunks],
            tail=(
                start
                + f'{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish}"}}]'
                + end
                + (start + '],"usage":' + usage + "}\n\n" if include_usage else "")
                + "data: [DONE]\n\n"
            ).encode(),
            bill=bill,
            usage=usage.encode() if include_usage else None,
        )
        await self._stream(exchange, plan)

    async def _responses(self, exchange: Exchange, body: dict) -> None:
        model = _model_name(body)
        if "input" not in body:
            raise BadRequest("'input' is required.")
        limit = _token_limit(body, "max_output_tokens")
        segments = _responses_segments(body)
        prompt = sum(tokens for tokens, _ in segments)
        cached = openai_cached_tokens(self.openai_cache, model, segments, time.time())
        scenario = exchange.scenario
        words, capped = _output_size(scenario, limit)
        chunks = output_chunks(words, scenario.chunks)
        status = "completed"
        if scenario.failed:
            status, chunks = "failed", chunks[: len(chunks) // 2]
        elif scenario.incomplete or capped:
            status = "incomplete"
        generated = sum(tokens for _, tokens in chunks)
        usage = None
        if not scenario.nousage:
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                "output_tokens": generated,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + generated,
            }
        bill = (prompt - cached, generated, cached, 0, 0)
        record = exchange.record
        item_id = f"msg_fake_{_BOOT}_{record.seq}"
        text = "".join(text for text, _ in chunks)
        error = incomplete = None
        if status == "failed":
            error = {
                "code": "server_error",
                "message": "The model failed to finish (fake upstream scenario).",
            }
        elif status == "incomplete":
            incomplete = {"reason": "max_output_tokens"}
        item_status = "completed" if status == "completed" else "incomplete"
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        item = {
            "id": item_id,
            "type": "message",
            "status": item_status,
            "role": "assistant",
            "content": [part],
        }
        created = int(time.time())

        def response(state: str, output: list, final_usage: dict | None) -> dict:
            return _response_object(
                exchange.id, created, model, body, state, output, final_usage, error, incomplete
            )

        if not record.stream:
            if status == "failed":
                raise ProviderError(500, error["message"])
            payload = _dumps(response(status, [item], usage))
            await self._json(exchange, payload, bill, usage and _dumps(usage), status)
            return
        sequence = iter(range(1 << 30))

        def event(kind: str, data: dict) -> str:
            return (
                f"event: {kind}\ndata: "
                + _dumps_str({"type": kind, "sequence_number": next(sequence), **data})
                + "\n\n"
            )

        in_progress = response("in_progress", [], None)
        opening = {**item, "status": "in_progress", "content": []}
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        head = (
            event("response.created", {"response": in_progress})
            + event("response.in_progress", {"response": in_progress})
            + event("response.output_item.added", {"output_index": 0, "item": opening})
            + event("response.content_part.added", {**where, "part": {**part, "text": ""}})
        )
        delta_frames = []
        for chunk_text, _ in chunks:
            delta_frames.append(
                (
                    'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                    f'"sequence_number":{next(sequence)},"item_id":"{item_id}","output_index":0,'
                    f'"content_index":0,"delta":{_dumps_str(chunk_text)},"logprobs":[]}}\n\n'
                ).encode()
            )
        if status == "failed":
            tail = event("response.failed", {"response": response("failed", [item], usage)})
        else:
            tail = (
                event("response.output_text.done", {**where, "text": text, "logprobs": []})
                + event("response.content_part.done", {**where, "part": part})
                + event("response.output_item.done", {"output_index": 0, "item": item})
                + event(f"response.{status}", {"response": response(status, [item], usage)})
            )
        plan = StreamPlan(
            head=head.encode(),
            chunks=delta_frames,
            tokens=[tokens for _, tokens in chunks],
            tail=tail.encode(),
            bill=bill,
            usage=usage and _dumps(usage),
            outcome=status,
        )
        await self._stream(exchange, plan)

    async def _embeddings(self, exchange: Exchange, body: dict) -> None:
        model = _model_name(body)
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest("'input' must be a string, an array of strings or an array of token arrays.")
        tokens = 0
        for item in inputs:
            if isinstance(item, str):
                tokens += text_tokens(item)
            elif isinstance(item, list) and all(isinstance(token, int) for token in item):
                tokens += len(item)
            else:
                raise BadRequest("'input' must be a string, an array of strings or an array of token arrays.")
        dimensions = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 8192:
            raise BadRequest("'dimensions' must be a whole number from 1 to 8192.")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise BadRequest("'encoding_format' must be 'float' or 'base64'.")
        floats, packed = embedding_vector(dimensions)
        vector = floats if encoding == "float" else f'"{packed}"'
        data = ",".join(
            f'{{"object":"embedding","index":{index},"embedding":{vector}}}' for index in range(len(inputs))
        )
        usage = None if exchange.scenario.nousage else f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}'
        payload = f'{{"object":"list","data":[{data}],"model":{_dumps_str(model)}' + (
            f',"usage":{usage}}}' if usage else "}"
        )
        await self._json(
            exchange, payload.encode(), (tokens, 0, 0, 0, 0), usage and usage.encode(), "completed"
        )

    async def _models(self, exchange: Exchange, body: dict) -> None:
        if exchange.provider == ANTHROPIC:
            data = [_anthropic_model(name) for name in ANTHROPIC_MODELS]
            payload = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        else:
            payload = {"object": "list", "data": [_openai_model(name) for name in OPENAI_MODELS]}
        await self._json(exchange, _dumps(payload), NO_BILL, None, "completed")

    async def _model(self, exchange: Exchange, body: dict) -> None:
        name = exchange.record.path.removeprefix("/v1/models/")
        exchange.record.model = name
        model = _anthropic_model(name) if exchange.provider == ANTHROPIC else _openai_model(name)
        await self._json(exchange, _dumps(model), NO_BILL, None, "completed")

    # --- Anthropic --------------------------------------------------------------------------------

    async def _messages(self, exchange: Exchange, body: dict) -> None:
        model = _model_name(body)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise BadRequest("messages: must be a non-empty array.")
        if "max_tokens" not in body:
            raise BadRequest("max_tokens: Field required.")
        limit = _token_limit(body, "max_tokens")
        blocks = _anthropic_blocks(body)
        total = sum(tokens for tokens, _, _ in blocks)
        read, write_5m, write_1h = anthropic_cache_tokens(self.anthropic_cache, model, blocks, time.time())
        uncached = total - read - write_5m - write_1h
        scenario = exchange.scenario
        words, capped = _output_size(scenario, limit)
        stop_reason = "max_tokens" if capped else "end_turn"
        chunks = output_chunks(words, scenario.chunks)
        bill = (uncached, words, read, write_5m, write_1h)
        cache_fields = {
            "cache_creation_input_tokens": write_5m + write_1h,
            "cache_read_input_tokens": read,
        }
        usage = {
            "input_tokens": uncached,
            **cache_fields,
            "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
            "output_tokens": words,
            "service_tier": "standard",
        }
        record = exchange.record
        message = {
            "id": exchange.id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(text for text, _ in chunks)}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
        }
        if not scenario.nousage:
            message["usage"] = usage
        if not record.stream:
            await self._json(
                exchange, _dumps(message), bill, None if scenario.nousage else _dumps(usage), "completed"
            )
            return
        started = {**message, "content": [], "stop_reason": None}
        if not scenario.nousage:
            started["usage"] = {**usage, "output_tokens": min(1, words)}
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        }
        if not scenario.nousage:
            delta["usage"] = {"input_tokens": uncached, **cache_fields, "output_tokens": words}
        ping = 'event: ping\ndata: {"type":"ping"}\n\n'
        frames = []
        for index, (text, _) in enumerate(chunks, start=1):
            frame = (
                'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                '"delta":{"type":"text_delta","text":' + _dumps_str(text) + "}}\n\n"
            )
            frames.append((frame + ping if index % PING_EVERY == 0 else frame).encode())
        plan = StreamPlan(
            head=(
                _sse("message_start", {"type": "message_start", "message": started})
                + 'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                '"content_block":{"type":"text","text":""}}\n\n' + ping
            ).encode(),
            chunks=frames,
            tokens=[tokens for _, tokens in chunks],
            tail=(
                'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
                + _sse("message_delta", delta)
                + 'event: message_stop\ndata: {"type":"message_stop"}\n\n'
            ).encode(),
            bill=bill,
            usage=None if scenario.nousage else _dumps(delta["usage"]),
        )
        await self._stream(exchange, plan)

    async def _count_tokens(self, exchange: Exchange, body: dict) -> None:
        _model_name(body)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise BadRequest("messages: must be a non-empty array.")
        total = sum(tokens for tokens, _, _ in _anthropic_blocks(body))
        await self._json(exchange, _dumps({"input_tokens": total}), NO_BILL, None, "completed")

    # --- control endpoints ------------------------------------------------------------------------

    async def _control(self, scope, receive, send) -> None:
        await _read_body(receive)
        path, method = scope["path"], scope["method"]
        if path == "/_fake/health" and method == "GET":
            payload = {
                "status": "ok",
                "served": self.served,
                "in_flight": self.in_flight,
                "started_at": self.started_at,
            }
        elif path == "/_fake/requests" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode())
            since = query.get("since", ["0"])[0]
            since = int(since) if since.isascii() and since.isdigit() else 0
            records = [record.as_json() for record in self.log if record.seq > since]
            payload = {"object": "list", "data": records, "served": self.served, "kept": len(self.log)}
        elif path == "/_fake/requests" and method == "DELETE":
            payload = {"deleted": len(self.log)}
            self.log.clear()
        elif path == "/_fake/cache" and method == "DELETE":
            self.openai_cache.clear()
            self.anthropic_cache.clear()
            payload = {"deleted": True}
        else:
            await _respond(send, 404, _dumps({"error": f"No fake control endpoint {method} {path}."}), [])
            return
        await _respond(send, 200, _dumps(payload), [])


# --- helpers ---------------------------------------------------------------------------------------


async def _read_body(receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + headers})
    await send({"type": "http.response.body", "body": body})


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _api_key(headers: dict[bytes, bytes], anthropic: bool) -> str:
    if anthropic and headers.get(b"x-api-key"):
        return headers[b"x-api-key"].decode("latin-1")
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _model_name(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required.")
    return model


def _token_limit(body: dict, *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"'{name}' must be a whole number of at least 1.")
        return value
    return None


def _output_size(scenario: Scenario, limit: int | None) -> tuple[int, bool]:
    """(words to generate, whether the request's token limit cut the answer short)."""
    if limit is not None and limit < scenario.words:
        return limit, True
    return scenario.words, False


def _with_output(bill: tuple[int, int, int, int, int], output: int) -> tuple[int, int, int, int, int]:
    return (bill[0], output, bill[2], bill[3], bill[4])


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {_dumps_str(data)}\n\n"


def _response_object(response_id, created, model, body, status, output, usage, error, incomplete) -> dict:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": error if status == "failed" else None,
        "incomplete_details": incomplete if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True) is not False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _openai_model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "fake-upstream"}


def _anthropic_model(name: str) -> dict:
    return {
        "type": "model",
        "id": name,
        "display_name": name,
        "created_at": "2025-01-01T00:00:00Z",
        "lifecycle": "active",
        "deprecated_at": None,
        "retires_at": None,
    }


app = FakeUpstream(
    default_scenario=os.environ.get("FAKE_UPSTREAM_SCENARIO", ""),
    max_requests=int(os.environ.get("FAKE_UPSTREAM_MAX_REQUESTS", DEFAULT_MAX_REQUESTS)),
)


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 9100,
    scenario: str = "",
    max_requests: int = DEFAULT_MAX_REQUESTS,
    access_log: bool = False,
    announce=print,
) -> None:
    """Serve a fresh FakeUpstream with uvicorn on host:port (0: any free port); announce the URL first."""
    import socket

    import uvicorn

    application = FakeUpstream(default_scenario=scenario, max_requests=max_requests)
    sock = socket.create_server((host, port), backlog=2048)
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        application, log_level="warning", access_log=access_log, lifespan="on", timeout_graceful_shutdown=2
    )
    announce(f"Fake upstream listening on http://{bound_host}:{bound_port}")
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve the fake upstream LLM server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument("--scenario", default=os.environ.get("FAKE_UPSTREAM_SCENARIO", ""))
    parser.add_argument(
        "--max-requests",
        type=int,
        default=int(os.environ.get("FAKE_UPSTREAM_MAX_REQUESTS", DEFAULT_MAX_REQUESTS)),
    )
    parser.add_argument("--access-log", action="store_true")
    options = parser.parse_args(argv)
    parse_scenario(options.scenario)
    serve(
        host=options.host,
        port=options.port,
        scenario=options.scenario,
        max_requests=options.max_requests,
        access_log=options.access_log,
        announce=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main()
