"""A small pipelined Redis client for the gateway's slots (docs/gateway.md#shared-limits).

Why not redis-py here: its asyncio client spends more CPU per command than everything else the
gateway does for a request put together (a pool checkout, a retry wrapper, an encoder, a
pure-Python reply parser), and every request sends three scripts: admission, the account's slot
and the release. This client keeps ONE connection per process and pipelines on it: a command is
written as soon as it is asked for and its reply is the next one in order, so concurrent requests
never wait for a connection and never need one each.

It speaks RESP2 and knows only what the limiter needs: commands, replies (errors raised as
`RedisReplyError`), AUTH and SELECT from the URL (`redis://[user:password@]host[:port][/db]`,
`rediss://` for TLS, `unix:///path/to/redis.sock?db=N`) and scripts by SHA with a fallback to the script's text after a
`SCRIPT FLUSH` or a restart (NOSCRIPT). Anything that breaks the connection (a reset, a reply
that takes longer than `timeout`) fails every command waiting on it with `RedisUnavailable` and
closes it; the next command connects again. The caller decides what an outage means (the limiter
counts in its own process until Redis is back).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class RedisUnavailable(ConnectionError):
    """The connection failed or was closed before the reply came."""


class RedisReplyError(Exception):
    """Redis answered with an error reply (`-ERR …`, `-NOSCRIPT …`)."""


def pack(args: tuple) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            raise TypeError(f"a Redis argument must be bytes, str or int, not {type(arg).__name__}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def parse(buffer: bytes | bytearray, position: int) -> tuple[Any, int]:
    """One reply starting at `position`: (value, position after it). Raises _Incomplete."""
    end = buffer.find(b"\r\n", position)
    if end < 0:
        raise _Incomplete
    kind, line = buffer[position], bytes(buffer[position + 1 : end])
    position = end + 2
    if kind == 58:  # ':' integer
        return int(line), position
    if kind == 36:  # '$' bulk string
        length = int(line)
        if length < 0:
            return None, position
        if len(buffer) < position + length + 2:
            raise _Incomplete
        return bytes(buffer[position : position + length]), position + length + 2
    if kind == 42:  # '*' array
        count = int(line)
        if count < 0:
            return None, position
        items = []
        for _ in range(count):
            item, position = parse(buffer, position)
            items.append(item)
        return items, position
    if kind == 43:  # '+' simple string
        return line, position
    if kind == 45:  # '-' error
        return RedisReplyError(line.decode(errors="replace")), position
    raise RedisUnavailable(f"unexpected byte {kind!r} in a Redis reply")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.buffer = bytearray()
        self.closed = False
        self.unsent: list[bytes] = []  # commands asked for in this event-loop turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        position = 0
        try:
            while position < len(buffer):
                value, position = parse(buffer, position)
                future = self.waiting.popleft()
                if not future.done():
                    if isinstance(value, RedisReplyError):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
        except _Incomplete:
            pass
        except (RedisUnavailable, ValueError, IndexError) as error:
            self.fail(RedisUnavailable(f"the Redis connection is out of step: {error}"))
            return
        del buffer[:position]

    def connection_lost(self, error: Exception | None) -> None:
        self.fail(RedisUnavailable(f"the Redis connection closed: {error or 'by the server'}"))

    def fail(self, error: Exception) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes, count: int) -> list[asyncio.Future]:
        """Queue commands; they leave in one write once this event-loop turn is over, with every
        other command asked for in the same turn (a write to a socket costs more CPU than the
        rest of a command: under load this makes one of many)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(count)]
        self.waiting.extend(futures)
        if not self.unsent:
            loop.call_soon(self.flush)
        self.unsent.append(data)
        return futures

    def flush(self) -> None:
        unsent, self.unsent = self.unsent, []
        if not self.closed and unsent:
            self.transport.write(b"".join(unsent))  # type: ignore[union-attr]


class RedisWire:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        address = urlsplit(url)
        if address.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"the gateway's Redis URL must be redis://, rediss:// or unix://, not {address.scheme}://"
            )
        self.host = address.hostname or "127.0.0.1"
        self.port = address.port or 6379
        self.tls = address.scheme == "rediss"
        self.socket_path = address.path if address.scheme == "unix" else None
        self.username = unquote(address.username) if address.username else None
        self.password = unquote(address.password) if address.password else None
        query = parse_qs(address.query)
        path = "" if self.socket_path else address.path.strip("/")
        self.db = int(query["db"][0]) if "db" in query else int(path) if path else 0
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._scripts: dict[str, bytes] = {}

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.timeout):
                if self.socket_path:
                    _transport, protocol = await loop.create_unix_connection(_Protocol, self.socket_path)
                else:
                    _transport, protocol = await loop.create_connection(
                        _Protocol,
                        self.host,
                        self.port,
                        ssl=ssl.create_default_context() if self.tls else None,
                    )
                hello: list[tuple] = []
                if self.password is not None:
                    auth = (
                        ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    )
                    hello.append(auth)
                if self.db:
                    hello.append(("SELECT", self.db))
                if hello:
                    futures = protocol.send(b"".join(pack(command) for command in hello), len(hello))
                    try:
                        await asyncio.gather(*futures)
                    except BaseException:
                        protocol.fail(RedisUnavailable("the Redis connection was refused at AUTH or SELECT"))
                        raise
            self._protocol = protocol
            return protocol

    async def call(self, *args: Any) -> Any:
        """One command's reply; RedisReplyError for an error reply, RedisUnavailable for a broken
        or silent connection (which is then closed: the replies after it could not be matched)."""
        protocol = await self._connection()
        (future,) = protocol.send(pack(args), 1)
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError as error:
            protocol.fail(RedisUnavailable(f"Redis did not answer in {self.timeout} s"))
            raise RedisUnavailable(f"Redis did not answer in {self.timeout} s") from error

    async def script(self, source: str, keys: list, args: list) -> Any:
        """EVALSHA, or EVAL when Redis does not know the script (it then keeps it)."""
        sha = self._scripts.get(source)
        if sha is None:
            sha = self._scripts[source] = hashlib.sha1(source.encode()).hexdigest().encode()  # noqa: S324 - Redis's own script id
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RedisReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", source, len(keys), *keys, *args)

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.closed = True
            protocol.transport.close()
