"""One upstream call and the relay of its answer to the client (docs/gateway.md#stream-accounting).

`call_upstream` sends the request and waits for the first byte: a connect error, a timeout before
the first byte, or an error status comes back as `UpstreamFailure`, which the caller may fail over
on, because nothing has reached the client yet. `relay_json` and `relay_stream` then pass the answer
on and feed the `UsageMeter` as the bytes go by:

- a stream is passed on chunk by chunk as it arrives (an OpenAI chat stream event by event, so the
  usage chunk the gateway asked for can be taken out);
- a client that disconnects before the first byte cancels the upstream; one that disconnects later
  does not: the upstream is read to its end, bounded by the total timeout, so what the provider
  bills is what gets recorded;
- an upstream that stops before its terminal event ends the client's stream with an error event in
  the protocol's shape, and the outcome says `upstream_cut`.

Four timeouts (settings): connect, first byte (the response head and first chunk), idle (between
chunks) and total.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from gateway.errors import ANTHROPIC
from gateway.failover import error_message
from gateway.upstream_http import UpstreamBroken, UpstreamClient, UpstreamConnectError, UpstreamResponse
from gateway.upstreams import UpstreamTarget
from gateway.usage import SSEFramer, UsageMeter, sse_fields

COMPLETED = "completed"
UPSTREAM_CUT = "upstream_cut"
CLIENT_DISCONNECTED = "client_disconnected"
UPSTREAM_ERROR = "upstream_error"

MAX_ERROR_BODY = 64 * 1024
# Response headers from the upstream worth passing on (rate-limit state, processing time).
PASSED_HEADERS = ("openai-processing-ms", "anthropic-organization-id")


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float
    total: float


class UpstreamFailure(Exception):
    """Nothing reached the client: the caller may try another account."""

    def __init__(self, kind: str, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "connect", "timeout", "status" or "broken"
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.body = b""


class ClientGone(Exception):
    """The client disconnected before the first byte."""


class ClientChannel:
    """The ASGI client side of one request: sends, and notices a disconnect while we wait."""

    __slots__ = ("_send", "_receive", "gone", "started", "_watch", "sent_bytes", "waiting")

    def __init__(
        self, send: Callable[[dict], Awaitable[None]], receive: Callable[[], Awaitable[dict]]
    ) -> None:
        self._send = send
        self._receive = receive
        self.gone = asyncio.Event()
        self.started = False
        self.sent_bytes = 0
        self._watch: asyncio.Task | None = None
        self.waiting: asyncio.Task | None = None  # a task in _unless_gone: cancelled on disconnect

    def watch(self) -> None:
        """Start listening for the disconnect (call once the request body has been read)."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                if self.waiting is not None:
                    self.waiting.cancel()
                return

    def close(self) -> None:
        if self._watch is not None and not self._watch.done():
            self._watch.cancel()

    @property
    def disconnected(self) -> bool:
        return self.gone.is_set()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, chunk: bytes, *, more: bool) -> None:
        if self.gone.is_set():
            return
        self.sent_bytes += len(chunk)
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})


async def _unless_gone[T](client: ClientChannel, work: Awaitable[T], deadline: float) -> T:
    """Await `work` until `deadline` (loop time); ClientGone if the client leaves first.

    The client's disconnect listener cancels the task waiting here (ClientChannel._listen): no
    task and no asyncio.wait per call, which cost more than the rest of a small JSON relay."""
    if client.gone.is_set():
        if inspect.iscoroutine(work):
            work.close()
        raise ClientGone
    task = asyncio.current_task()
    client.waiting = task
    try:
        async with asyncio.timeout_at(deadline):
            return await work
    except asyncio.CancelledError:
        if client.gone.is_set() and task is not None and task.cancelling():
            task.uncancel()  # the listener's cancel, not the server's: it ends as ClientGone
            raise ClientGone from None
        raise
    finally:
        client.waiting = None


async def call_upstream(
    *,
    upstream_client: UpstreamClient,
    target: UpstreamTarget,
    payload: bytes,
    timeouts: Timeouts,
    client: ClientChannel,
    started: float,
) -> UpstreamResponse:
    """POST to the upstream and wait for its response head (200), within the first-byte timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(timeouts.first_byte, timeouts.total - (time.monotonic() - started))
    try:
        response = await _unless_gone(
            client,
            upstream_client.post(target.url, payload, target.headers, connect_timeout=timeouts.connect),
            deadline,
        )
    except TimeoutError as error:
        raise UpstreamFailure("timeout", 504, "The upstream did not answer in time.") from error
    except UpstreamConnectError as error:
        raise UpstreamFailure(
            "connect", 502, f"The upstream could not be reached: {error.os_error}"
        ) from error
    except UpstreamBroken as error:
        raise UpstreamFailure("connect", 502, f"The upstream connection failed: {error}") from error
    if response.status >= 400:
        try:
            async with asyncio.timeout_at(deadline):
                body = await response.read_up_to(MAX_ERROR_BODY)
        except (TimeoutError, UpstreamBroken):
            # What did arrive may still say why (as aiohttp's read(n), which returned the first
            # chunk, did).
            body = response.read_nowait(MAX_ERROR_BODY)
        finally:
            response.release()
        failure = UpstreamFailure(
            "status", response.status, error_message(body, response.status), response.headers
        )
        failure.body = body
        raise failure
    return response


def response_headers(request_id: str, content_type: bytes, upstream: UpstreamResponse) -> list:
    headers = [(b"content-type", content_type), (b"x-request-id", request_id.encode())]
    for name in PASSED_HEADERS:
        value = upstream.headers.get(name)
        if value:
            headers.append((name.encode(), value.encode("latin-1")))
    return headers


@dataclass(slots=True)
class Relayed:
    outcome: str
    first_byte_ms: int | None


async def relay_json(
    *,
    response: UpstreamResponse,
    client: ClientChannel,
    meter: UsageMeter,
    request_id: str,
    timeouts: Timeouts,
    started: float,
) -> Relayed:
    """Read the whole answer (the client gets nothing before it is complete), then send it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.total - (time.monotonic() - started)
    try:
        if response.complete:  # a small answer usually arrives whole with its head: no wait, no timer
            body = await response.read()
        else:
            body = await _unless_gone(client, response.read(), deadline)
    except ClientGone:
        response.close()
        raise
    except TimeoutError as error:
        response.close()
        raise UpstreamFailure("timeout", 504, "The upstream's answer did not complete in time.") from error
    except UpstreamBroken as error:
        response.close()
        raise UpstreamFailure("broken", 502, f"The upstream's answer broke off: {error}") from error
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise UpstreamFailure("broken", 502, "The upstream's answer is not JSON.") from error
    if isinstance(payload, dict):
        meter.feed_json(payload)
    first_byte_ms = int((time.monotonic() - started) * 1000)
    await client.start(200, response_headers(request_id, b"application/json", response))
    await client.body(body, more=False)
    return Relayed(COMPLETED, first_byte_ms)


async def read_first_chunk(
    *, response: UpstreamResponse, client: ClientChannel, timeouts: Timeouts, started: float
) -> bytes:
    """A stream's first chunk, before anything is sent to the client (so failover is still possible)."""
    loop = asyncio.get_running_loop()
    remaining = min(timeouts.first_byte, timeouts.total) - (time.monotonic() - started)
    try:
        chunk = await _unless_gone(client, response.readany(), loop.time() + max(remaining, 0.001))
    except ClientGone:
        response.close()
        raise
    except TimeoutError as error:
        response.close()
        raise UpstreamFailure("timeout", 504, "The upstream's stream did not start in time.") from error
    except UpstreamBroken as error:
        response.close()
        raise UpstreamFailure("broken", 502, f"The upstream's stream broke off: {error}") from error
    if not chunk:
        response.close()
        raise UpstreamFailure("broken", 502, "The upstream's stream ended before its first event.")
    return chunk


async def relay_stream(
    *,
    response: UpstreamResponse,
    first_chunk: bytes,
    client: ClientChannel,
    meter: UsageMeter,
    strip_usage: bool,
    protocol: str,
    request_id: str,
    timeouts: Timeouts,
    started: float,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every: float = 0.0,
) -> Relayed:
    """Pass the stream on as it arrives; keep reading after a client disconnect; never retry.

    `checkpoint`, when given, is called every `checkpoint_every` seconds while the stream runs
    (after the events that arrived are fed to the meter), to keep what it has seen so far."""
    loop = asyncio.get_running_loop()
    total_deadline = loop.time() + timeouts.total - (time.monotonic() - started)
    next_checkpoint = (
        loop.time() + checkpoint_every if checkpoint is not None and checkpoint_every > 0 else None
    )
    first_byte_ms = int((time.monotonic() - started) * 1000)
    await client.start(
        200,
        [
            *response_headers(request_id, b"text/event-stream; charset=utf-8", response),
            (b"cache-control", b"no-cache"),
        ],
    )
    framer = SSEFramer()
    chunk: bytes = first_chunk
    broken: str | None = None
    try:
        while chunk:
            events = framer.feed(chunk)
            if strip_usage:
                kept = []
                for event in events:
                    name, data = sse_fields(event)
                    if meter.feed_event(name, data):
                        rewritten = _without_usage(data)
                        if rewritten is not None:
                            kept.append(b"data: " + rewritten + b"\n\n")
                        continue
                    kept.append(event)
                if kept:
                    await client.body(b"".join(kept), more=True)
            else:
                await client.body(chunk, more=True)
                for event in events:
                    name, data = sse_fields(event)
                    meter.feed_event(name, data)
            if next_checkpoint is not None and loop.time() >= next_checkpoint:
                checkpoint()
                next_checkpoint = loop.time() + checkpoint_every
            deadline = min(loop.time() + timeouts.idle, total_deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await response.readany()
            except TimeoutError:
                # uvloop's timers may fire up to a millisecond early: allow for it.
                broken = (
                    "The upstream's stream exceeded the total time allowed."
                    if loop.time() >= total_deadline - 0.005
                    else "The upstream's stream stalled."
                )
                break
            except UpstreamBroken as error:
                # (readany handed over what arrived before the connection failed: it is relayed.)
                broken = f"The upstream's stream broke off: {error}"
                break
    finally:
        response.close()
    rest = framer.rest()
    if rest and strip_usage:
        await client.body(rest, more=True)
    if meter.terminal:  # the answer is whole, whatever the connection did after it
        await client.body(b"", more=False)
        return Relayed(CLIENT_DISCONNECTED if client.disconnected else COMPLETED, first_byte_ms)
    if not client.disconnected:
        message = broken or "The upstream's stream ended before it finished."
        await client.body(stream_error_event(protocol, message), more=False)
        return Relayed(UPSTREAM_CUT, first_byte_ms)
    return Relayed(CLIENT_DISCONNECTED, first_byte_ms)


def _without_usage(data: bytes) -> bytes | None:
    """The usage chunk of a chat stream without its usage: None when it carried nothing else."""
    payload = orjson.loads(data)
    if not payload.get("choices"):
        return None
    payload["usage"] = None
    return orjson.dumps(payload)


def stream_error_event(protocol: str, message: str) -> bytes:
    """How a stream that already started says it failed (the status line has gone out as 200)."""
    if protocol == ANTHROPIC:
        error = {
            "type": "error",
            "error": {"type": "api_error", "message": message, "code": "UPSTREAM_STREAM_ERROR"},
        }
        return b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
    error = {
        "error": {"message": message, "type": "server_error", "param": None, "code": "UPSTREAM_STREAM_ERROR"}
    }
    return b"data: " + orjson.dumps(error) + b"\n\n"
