"""The gateway's HTTP/1.1 client for upstream calls (docs/gateway.md#the-upstream-client).

Why not aiohttp: one small JSON answer through `ClientSession.post` cost about 0.2 ms of CPU on
the test machine, against about 0.08 ms through this client (an asyncio protocol and llhttp's
parser, through httptools, on a kept-alive connection); the gateway's whole request costs about
0.7 ms under load. This client does only what the relay needs: POST a body with given headers,
and hand back the status, the headers and the body as it arrives.

- Connections are pooled per (scheme, host, port) and reused newest first. At most `limit` are
  open at once (idle ones included); a caller at the cap closes another host's idle connection,
  or waits for one to come free, within its connect timeout (waiters in order; a call arriving
  as a place comes free may take it first). An idle connection is closed after
  `idle_seconds` (or a second before the server's own `Keep-Alive: timeout`): checked when it is
  picked, and by a sweep at most `SWEEP_SLACK` after its time (one timer, not one per request).
- A connection goes back to the pool only when its answer has fully arrived and both sides meant
  to keep it (`Connection: close`, an answer delimited by the close, a server that closed it, an
  answer the caller left unread: each is closed instead), and never after an error answer
  (status 400 and up) to a body larger than `JOINED_WRITE`: such an answer may have come before
  the whole body left, which this side cannot tell (see `_Connection._end`).
- Names are resolved through `gateway.addresses.CheckedResolver` (refused addresses dropped) and
  the addresses left are tried in order: one that refuses the connection, or (https) whose TLS
  handshake fails or is cut off, leads to the next. A connection the server closes, or speaks on,
  as soon as it opens is not: over plain TCP that shows only once the connection is handed over,
  and the call fails (a connect error, or a broken connection if the request had gone out).
  https verifies the certificate against the host name (a certificate refused at one address is
  not tried at the next).
- Failing to connect (resolving, connecting, the TLS handshake) raises `UpstreamConnectError`;
  a connection that fails once the request is sent (a reset, a close before the answer or in the
  middle of its body, a malformed answer) raises `UpstreamBroken`, after every byte that arrived
  before it was handed over.
- One retry, on a new connection, when a connection taken from the pool was closed before a
  single byte of the answer and soon after the request was written: within twice its connect
  time, between `IDLE_CLOSE_RACE_SECONDS` and `IDLE_CLOSE_RACE_MAX_SECONDS` (see
  `UpstreamClient.post`). Nothing else is retried.
- No proxies, no HTTP/2, no redirects, no cookies, no decompression: the request asks for
  `accept-encoding: identity` and the body is passed through as bytes.

Timeouts other than connecting are the caller's (gateway.relay): cancelling a call or a read
closes the connection in use, and its place in the pool is free again at once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from urllib.parse import quote, urlsplit

import httptools

from gateway.addresses import CheckedResolver

IDLE_SECONDS = 30.0
# An idle connection past its time is closed at most this late (a tenth of `idle_seconds` if
# that is less): one sweep closes every connection whose time came up in the meantime.
SWEEP_SLACK = 1.0
# Unread body bytes of one answer before the connection stops reading (a stream's client that
# reads slower than the upstream writes): the upstream then waits, instead of this process.
BUFFER_LIMIT = 256 * 1024
# A body up to this size leaves in the same write as its head; a larger one is not copied.
JOINED_WRITE = 64 * 1024
_NOT_BEFORE_END = 1 << 62  # what `read` waits for: the whole body
# A reused connection closed soon after the request was written, before a byte of the answer, is
# retried once (UpstreamClient.post): a server closing an idle keep-alive connection just as our
# request leaves shows up within a round trip. A close later than that may come from a server that
# took the request and died (a crash, a balancer dropping a long call), and a POST must not be
# sent twice: the provider would run and bill it twice. "Soon" is twice the connection's own TCP
# connect time (one round trip to that host, plus whatever the loop lagged then), at least the
# floor (a nearby host, where the loop's own turns are the delay) and at most the cap (past a
# second the close is likelier a server that took the request than an idle race). On uvloop the
# measured connect also waits for a lookup in libuv's thread pool, so a slow resolver can widen a
# connection's window, never past the cap.
IDLE_CLOSE_RACE_SECONDS = 0.1
IDLE_CLOSE_RACE_MAX_SECONDS = 1.0


class UpstreamConnectError(Exception):
    """No connection to the upstream: resolving, connecting or the TLS handshake failed."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class UpstreamBroken(Exception):
    """The connection failed after the request was sent: reset, closed before the answer's head or
    in the middle of its body, or the answer was not HTTP."""


@dataclass(frozen=True, slots=True)
class _Target:
    key: tuple[str, str, int]
    host: str  # as resolved (IDNA for a non-ASCII name)
    name: str  # as verified against the certificate and sent in `host:`: no trailing dot
    port: int
    tls: bool
    head: bytes  # request line, host and accept-encoding


@lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:  # (the URL is not repeated: it carries a secret)
        raise UpstreamConnectError(
            OSError("the base URL carries a user name or password (user@host), which is never sent")
        )
    try:
        port = parts.port
    except ValueError as error:
        raise UpstreamConnectError(OSError(f"{url} has an invalid port")) from error
    if port == 0:
        raise UpstreamConnectError(OSError(f"{url} has an invalid port"))
    if port is None:
        port = 443 if scheme == "https" else 80
    if scheme not in ("http", "https") or not (parts.hostname or "").rstrip("."):
        raise UpstreamConnectError(OSError(f"{url} is not an http:// or https:// URL"))
    host = parts.hostname
    if ":" in host and "%" in host:  # [fe80::1%25eth0]: zones go with link-local addresses, which are refused
        raise UpstreamConnectError(OSError(f"{url} names an IPv6 zone, which is not supported"))
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as error:
            raise UpstreamConnectError(OSError(f"{url} has an invalid host name")) from error
    # "relay.test." is the same host, absolute: resolved as written, but certificates and
    # servers know it without the dot.
    name = host.rstrip(".")
    authority = f"[{name}]" if ":" in name else name
    if port != (443 if scheme == "https" else 80):
        authority = f"{authority}:{port}"
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path = f"{path}?{quote(parts.query, safe='/%:@!$&()*+,;=?-._~')}"
    head = f"POST {path} HTTP/1.1\r\nhost: {authority}\r\naccept-encoding: identity\r\n".encode("ascii")
    return _Target(
        key=(scheme, host, port), host=host, name=name, port=port, tls=scheme == "https", head=head
    )


def _request_head(target: _Target, headers: Sequence[tuple[str, str]], length: int) -> bytes:
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers])
    # Each header adds exactly one CR and one LF: any other would start a header of its own.
    if lines.count("\r") != len(headers) or lines.count("\n") != len(headers):
        raise UpstreamConnectError(OSError("a request header contains a line break"))
    return b"%s%scontent-length: %d\r\n\r\n" % (target.head, lines.encode(), length)


class UpstreamResponse:
    """One answer: `status` and `headers` (lower-case names, repeats joined with ", ") are there
    when `UpstreamClient.post` returns; the body is read with `read`, `read_up_to`, `readany` or
    `read_nowait`.
    `close` (or `release`) when done with it: a connection whose answer had not fully arrived is
    closed, never reused."""

    __slots__ = (
        "status",
        "headers",
        "_connection",
        "_chunks",
        "_size",
        "_done",
        "_error",
        "_waiter",
        "_want",
        "_limit",
        "_until_close",
    )

    def __init__(self, connection: _Connection) -> None:
        self.status = 0  # until the head has arrived
        self.headers: dict[str, str] = {}
        self._connection: _Connection | None = connection  # None once it has ended, either way
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False  # the whole body has arrived
        self._error: UpstreamBroken | None = None
        self._waiter: asyncio.Future | None = None
        self._want = 1  # buffered bytes that wake the reader
        self._limit = BUFFER_LIMIT  # buffered bytes that pause the connection
        self._until_close = False  # the body ends when the server closes the connection

    @property
    def complete(self) -> bool:
        """The whole body has arrived (`read` will not wait)."""
        return self._done

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read."""
        return self._size

    async def read(self) -> bytes:
        """The whole body. UpstreamBroken if it was cut short (what did arrive is then lost to
        the caller: a partial body is no answer)."""
        if not self._done:
            self._limit = self._want = _NOT_BEFORE_END  # the caller wants it all anyway
            while not self._done:
                if self._error is not None:
                    raise self._error
                await self._wait()
        return self._take()

    async def read_up_to(self, size: int) -> bytes:
        """The first `size` bytes of the body, or all of it if shorter. A timeout or UpstreamBroken
        leaves what did arrive to `read_nowait`."""
        self._want = size
        self._limit = max(BUFFER_LIMIT, size)
        while self._size < size and not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self.read_nowait(size)

    def read_nowait(self, size: int) -> bytes:
        """Up to `size` bytes of what has arrived and not been read, without waiting."""
        data = self._take()
        if len(data) > size:
            self._chunks.append(data[size:])
            self._size = len(data) - size
            data = data[:size]
        return data

    async def readany(self) -> bytes:
        """What has arrived, waiting for something if nothing has; b"" at the end of the body.
        A connection that failed raises UpstreamBroken once what arrived before has been read."""
        self._want = 1
        self._limit = BUFFER_LIMIT
        while not self._size:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._take()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        connection = self._connection
        if connection is not None and connection.paused:
            connection.paused = False
            connection.transport.resume_reading()
        return data

    async def _wait(self) -> None:
        connection = self._connection
        if connection is None:  # (cannot happen: an ended answer is done or failed)
            raise UpstreamBroken("The answer ended without being complete.")
        if connection.paused and self._size < self._limit:
            connection.paused = False
            connection.transport.resume_reading()
        self._waiter = connection.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamBroken) -> None:
        self._connection = None
        if not self._done and self._error is None:
            self._error = error
        self._wake()

    def close(self) -> None:
        """Done with this answer: if it had not fully arrived, its connection is closed (a reader
        still waiting on it gets UpstreamBroken)."""
        connection = self._connection
        if connection is not None:
            connection.abort(UpstreamBroken("The connection was closed before the answer ended."))

    release = close


class _Connection(asyncio.Protocol):
    """One connection to an upstream, carrying one exchange at a time."""

    __slots__ = (
        "pool",
        "key",
        "loop",
        "transport",
        "parser",
        "response",
        "closed",
        "counted",
        "idle",
        "reused",
        "received",
        "sent_at",
        "lost_in_idle_race",
        "race_window",
        "long_body",
        "paused",
        "expires",
        "keep_for",
        "_raw_headers",
        "_finished",
        "_keep",
        "_interim",
    )

    def __init__(
        self, pool: UpstreamClient, key: tuple[str, str, int], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.counted = False  # holds one of the pool's `limit` places
        self.idle = False  # in the pool's idle list
        self.reused = False  # taken from the pool for the exchange in progress
        self.received = False  # a byte of the current exchange's answer arrived
        self.sent_at = 0.0  # loop time the current exchange's request was written
        self.lost_in_idle_race = False  # see IDLE_CLOSE_RACE_SECONDS
        self.race_window = IDLE_CLOSE_RACE_SECONDS  # set from the connect time once opened
        self.long_body = False  # the current exchange's body is larger than JOINED_WRITE
        self.paused = False
        self.expires = 0.0
        self.keep_for = pool.idle_seconds
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._finished = False
        self._keep = False
        self._interim = False

    # --- the exchange ---------------------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes) -> UpstreamResponse:
        """Send one request; its answer once the head has arrived."""
        if self.closed:  # the server closed it as it was opened
            raise UpstreamBroken("The upstream closed the connection before answering.")
        response = UpstreamResponse(self)
        self.response = response
        self.received = False
        self.long_body = len(body) > JOINED_WRITE
        if self.long_body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head + body)
        self.sent_at = self.loop.time()
        try:
            while not response.status:
                if response._error is not None:
                    raise response._error
                await response._wait()
        except BaseException:
            # Cancelled (the caller's deadline, its client gone) or failed: the exchange is over.
            # Unless the answer had already come whole: its connection may be back in the pool by
            # now, carrying another call's exchange, which must not be cut.
            if self.response is response:
                self.abort(UpstreamBroken("The request was abandoned before the answer."))
            raise
        return response

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abort(None)  # an idle connection must stay silent: its next answer would be wrong
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.abort(UpstreamBroken("The upstream switched protocols."))
            return
        except httptools.HttpParserError as error:
            if self._finished:
                self._finished = False
                self._end(keep=False)  # the answer is whole; what followed it was not asked for
            else:
                self.abort(UpstreamBroken(f"The upstream's answer is not valid HTTP: {error}"))
            return
        if self._finished:
            self._finished = False
            self._end(keep=self._keep)

    def eof_received(self) -> bool:
        return False  # close: a half-closed connection can carry no further answer

    def connection_lost(self, exc: Exception | None) -> None:
        response = self.response
        if response is not None:
            self.response = None
            if response.status and response._until_close and exc is None:
                response._connection = None
                response._done = True
                response._wake()
            elif not response.status:
                self.lost_in_idle_race = (
                    self.reused and not self.received and self.loop.time() - self.sent_at <= self.race_window
                )
                reason = f": {exc}" if exc else ""
                response._fail(
                    UpstreamBroken(f"The upstream closed the connection before answering{reason}.")
                )
            else:
                reason = f": {exc}" if exc else ""
                response._fail(UpstreamBroken(f"The upstream closed the connection mid-answer{reason}."))
        self._forget()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._finished:
            raise UpstreamBroken("a second answer to one request")  # bytes that were not asked for
        # A chunked answer's trailer fields come through on_header after its head: they are not
        # this answer's headers (connections are shared by every account calling the host).
        self._raw_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        raw, self._raw_headers = self._raw_headers, []
        status = self.parser.get_status_code()
        if status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in raw:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        response = self.response
        response.headers = headers
        response.status = status
        coding = headers.get("transfer-encoding")
        response._until_close = (
            "content-length" not in headers
            and (coding is None or not coding.lower().rstrip().endswith("chunked"))
            and status not in (204, 304)
        )
        if "keep-alive" in headers:
            self.keep_for = _keep_for(headers["keep-alive"], self.pool.idle_seconds)
        response._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        response._chunks.append(body)
        response._size += len(body)
        if response._size >= response._want:
            response._wake()
        if response._size > response._limit and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        # (Asked now: the parser forgets the answer's framing once this returns.)
        self._keep = self.parser.should_keep_alive()
        self._finished = True  # ended after the parser returns (data_received)

    # --- the pool's side --------------------------------------------------------------------

    def _end(self, *, keep: bool) -> None:
        """The answer has fully arrived: it no longer needs the connection."""
        response = self.response
        self.response = None
        response._connection = None
        response._done = True
        response._wake()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        # An answer may come before the whole request has left (an early 413 or 401 to a large
        # body), and the rest of that body would then go out ahead of the next request. How much
        # has left cannot be told here: over TLS the transport's buffer counts only what is not
        # yet encrypted, and over TCP bytes in the kernel's buffers count as written. So, judged
        # conservatively: a server answers with success only once it has read the request, but
        # an error may come first, and an error to a body larger than one joined write, or to any
        # body over TLS (a fresh TLS connection's kernel buffer can hold less than one joined
        # write), is never pooled (a new connection costs a handshake; a pooled one out of step,
        # a wrong answer).
        early = response.status >= 400 and (self.long_body or self.key[0] == "https")
        if keep and not early and not self.closed and not self.transport.get_write_buffer_size():
            self.pool._put_back(self)
        else:
            self.abort(None)

    def abort(self, error: UpstreamBroken | None) -> None:
        """Close now; the answer in progress, if any, fails with `error`."""
        response = self.response
        if response is not None:
            self.response = None
            response._fail(error or UpstreamBroken("The connection was closed."))
        self._forget()
        if self.transport is not None:
            self.transport.abort()

    def _forget(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._dropped(self)


def _keep_for(header: str, idle_seconds: float) -> float:
    """How long to keep a connection whose server said `Keep-Alive: timeout=N`: a second less,
    so that it is not reused just as the server closes it."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "timeout":
            try:
                return max(0.0, min(idle_seconds, float(value) - 1))
            except ValueError:
                break
    return idle_seconds


class UpstreamClient:
    """The process's pool of upstream connections (created on the event loop that uses it)."""

    def __init__(
        self,
        *,
        limit: int,
        idle_seconds: float = IDLE_SECONDS,
        resolver: CheckedResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limit = limit  # 0: no cap
        self.idle_seconds = idle_seconds
        self._resolver = resolver or CheckedResolver()
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._connections: set[_Connection] = set()
        self._open = 0  # connections open or being opened: what `limit` caps
        self._waiters: deque[asyncio.Future] = deque()
        self._opening: set[asyncio.Task] = set()  # connections being opened
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweep_slack = min(SWEEP_SLACK, idle_seconds / 10)
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return sum(len(connections) for connections in self._idle.values())

    async def post(
        self, url: str, body: bytes, headers: Sequence[tuple[str, str]], *, connect_timeout: float
    ) -> UpstreamResponse:
        """POST `body` to `url` with `headers` (never host, content-length, accept-encoding or
        connection: the client writes those); the answer once its head has arrived.

        `connect_timeout` bounds waiting for a place in the pool plus opening a connection (a
        TimeoutError); the caller bounds the rest by cancelling."""
        target = _target(url)
        head = _request_head(target, headers, len(body))
        connection = self._pick(target.key)
        if connection is None:
            connection = await self._connection(target, connect_timeout, fresh=False)
        try:
            return await connection.exchange(head, body)
        except UpstreamBroken:
            if not connection.lost_in_idle_race:
                raise
        # The server closed a connection from the pool before a byte of the answer, within a
        # round trip of the request being written: it closed it as idle just as the request left
        # (its keep-alive time is its own), before taking the request up. The request goes once
        # more, on a new connection: failover would send it to the next account all the same,
        # and a lone account would fail the request for a race it did not lose. A later close,
        # or one we made, is not retried (IDLE_CLOSE_RACE_SECONDS, `race_window`).
        connection = await self._connection(target, connect_timeout, fresh=True)
        return await connection.exchange(head, body)

    def _pick(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = idle[-1].loop.time()
        while idle:
            connection = idle.pop()
            connection.idle = False
            if connection.expires > now and not connection.transport.is_closing():
                if not idle:
                    del self._idle[key]
                connection.reused = True
                return connection
            connection.abort(None)  # past its idle time (the older ones behind it too)
        del self._idle[key]
        return None

    async def _connection(self, target: _Target, connect_timeout: float, *, fresh: bool) -> _Connection:
        async with asyncio.timeout(connect_timeout):
            woken = False
            while True:
                if self._closed:
                    raise UpstreamConnectError(OSError("the upstream client is closed"))
                if not fresh and (connection := self._pick(target.key)) is not None:
                    return connection
                if self.limit <= 0 or self._open < self.limit or self._close_an_idle_connection():
                    break
                # Woken, but a call that had not waited took the place first: this one stays
                # first in line among the waiters.
                await self._wait_for_a_place(first=woken)
                woken = True
            self._open += 1
            # A task of its own, which `close` can cancel: shutdown does not wait for a handshake.
            opening = asyncio.get_running_loop().create_task(self._open_connection(target))
            self._opening.add(opening)
            try:
                connection = await opening
                if self._closed:
                    raise UpstreamConnectError(OSError("the upstream client is closed"))
                # The transport started reading in the turn between the task's end and this one:
                # a server that spoke first (an SSH or SMTP banner, a broken relay) or closed at
                # once has had the connection closed already, before it held a place of its own
                # (`counted`), so only this path can give the place back.
                if connection.closed:
                    raise UpstreamConnectError(
                        ConnectionResetError(
                            f"{target.host} closed the connection, or spoke before the request, as it opened"
                        )
                    )
            except BaseException as error:
                self._open -= 1
                self._wake_a_waiter()
                if opening.done() and not opening.cancelled() and opening.exception() is None:
                    # Opened, but this call is leaving (cancelled as it opened, or closed since).
                    opening.result().abort(None)
                closing = opening.cancelled() and not asyncio.current_task().cancelling()
                if isinstance(error, asyncio.CancelledError) and closing:
                    raise UpstreamConnectError(OSError("the upstream client is closed")) from None
                raise
            finally:
                self._opening.discard(opening)
            connection.counted = True
            connection.reused = False
            self._connections.add(connection)
            return connection

    def _close_an_idle_connection(self) -> bool:
        """At the cap: close the idle connection idle longest (another host's, or a retry's own),
        to open one in its place."""
        oldest: _Connection | None = None
        for connections in self._idle.values():
            if connections and (oldest is None or connections[0].expires < oldest.expires):
                oldest = connections[0]
        if oldest is None:
            return False
        oldest.abort(None)
        return True

    async def _wait_for_a_place(self, *, first: bool) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_a_waiter()  # woken, but leaving: the place goes to the next in line
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            # (Otherwise a wake came after the cancel: `_wake_a_waiter` passed over this one.)
            raise

    def _wake_a_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _open_connection(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            addresses = await self._resolver.resolve(target.host, target.port)
        except OSError as error:
            raise UpstreamConnectError(error) from error
        except ValueError as error:  # the resolver's IDNA codec: an empty label, one over 63 bytes
            raise UpstreamConnectError(
                OSError(f"{target.host} is not a host name that can be resolved ({error})")
            ) from error
        context = self._context() if target.tls else None
        failure: OSError | None = None
        for family, _type, proto, _name, address in addresses:
            try:
                # (No socket for this one, EMFILE or EAFNOSUPPORT: the next address may do.)
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
            except OSError as error:
                failure = error
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                started = loop.time()
                await loop.sock_connect(sock, address)
                connect_seconds = loop.time() - started
                _transport, connection = await loop.create_connection(
                    partial(_Connection, self, target.key, loop),
                    sock=sock,
                    ssl=context,
                    server_hostname=target.name if context is not None else None,
                )
            except ssl.SSLCertVerificationError as error:
                sock.close()
                raise UpstreamConnectError(error) from error  # the same certificate at every address
            except OSError as error:  # ssl.SSLError too: one backend's broken handshake
                sock.close()
                failure = error  # the next address, if any
                continue
            except BaseException:
                sock.close()
                raise
            if connection.closed:  # (https) closed, or spoke, once the handshake was done: as a refusal
                failure = ConnectionResetError(f"{address[0]} closed the connection as it opened")
                continue
            connection.race_window = min(
                IDLE_CLOSE_RACE_MAX_SECONDS, max(IDLE_CLOSE_RACE_SECONDS, 2 * connect_seconds)
            )
            return connection
        raise UpstreamConnectError(failure or OSError(f"{target.host} has no address"))

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
            self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    def _put_back(self, connection: _Connection) -> None:
        if self._closed:
            connection.abort(None)
            return
        connection.expires = connection.loop.time() + connection.keep_for
        connection.idle = True
        idle = self._idle.get(connection.key)
        if idle is None:
            idle = self._idle[connection.key] = []
        idle.append(connection)
        self._sweep_by(connection.expires + self._sweep_slack, connection.loop)
        if self._waiters:
            self._wake_a_waiter()

    def _dropped(self, connection: _Connection) -> None:
        """A connection closed (either side): it no longer holds a place."""
        if connection.idle:
            connection.idle = False
            idle = self._idle[connection.key]
            idle.remove(connection)
            if not idle:
                del self._idle[connection.key]
        if connection.counted:
            connection.counted = False
            self._open -= 1
            self._connections.discard(connection)
            if self._waiters:
                self._wake_a_waiter()

    def _sweep_by(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        timer = self._sweep_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()  # (a shorter Keep-Alive: timeout than the connections before it)
        self._sweep_timer = loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle past their time; the next sweep comes just after the next
        one's time, none while no connection is idle."""
        self._sweep_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_time: float | None = None
        for connections in list(self._idle.values()):
            for connection in list(connections):
                if connection.expires <= now:
                    connection.abort(None)
                elif next_time is None or connection.expires < next_time:
                    next_time = connection.expires
        if next_time is not None and not self._closed:
            self._sweep_by(next_time + self._sweep_slack, loop)

    async def close(self) -> None:
        """Close every connection, idle, in use or being opened (shutdown, after the drain)."""
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for connection in list(self._connections):
            connection.abort(UpstreamBroken("The gateway is shutting down."))
        for opening in list(self._opening):
            opening.cancel()
        while self._waiters:
            self._wake_a_waiter()
        await asyncio.sleep(0)  # the transports' own closing
