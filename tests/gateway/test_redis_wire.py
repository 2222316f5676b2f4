"""The gateway's own Redis connection (gateway/redis_wire.py), against the real Redis on loopback
(DB 14) and, for what Redis cannot be made to do on cue, a socket server of the test's own."""

from __future__ import annotations

import asyncio

import pytest
import redis

from gateway.limits import REDIS_PREFIX, Limit, RedisLimiter
from gateway.redis_wire import RedisReplyError, RedisUnavailable, RedisWire, _Incomplete, pack, parse
from tests import event_loop

REDIS_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def plain_redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_concurrent_commands_on_one_connection_each_get_their_own_reply(plain_redis):
    async def scenario() -> list:
        wire = RedisWire(REDIS_URL)
        try:
            return await asyncio.gather(*(wire.call("ECHO", f"reply-{n}") for n in range(300)))
        finally:
            await wire.close()

    assert event_loop.run(scenario()) == [f"reply-{n}".encode() for n in range(300)]


def test_the_database_in_the_url_is_the_one_written(plain_redis):
    async def scenario() -> None:
        wire = RedisWire(REDIS_URL)
        await wire.call("SET", "wire-db", "14")
        await wire.close()

    event_loop.run(scenario())
    assert plain_redis.get("wire-db") == b"14"
    assert redis.Redis.from_url("redis://127.0.0.1:6379/0").get("wire-db") is None


def test_an_error_reply_is_raised_and_the_connection_stays_usable(plain_redis):
    async def scenario() -> tuple:
        wire = RedisWire(REDIS_URL)
        try:
            with pytest.raises(RedisReplyError, match="unknown command"):
                await wire.call("NO-SUCH-COMMAND")
            return await wire.call("INCRBY", "counter", 5), await wire.call("GET", "counter")
        finally:
            await wire.close()

    assert event_loop.run(scenario()) == (5, b"5")


def test_a_script_redis_has_forgotten_is_sent_again_in_full(plain_redis):
    source = "return tonumber(ARGV[1]) + 1"

    async def scenario() -> tuple:
        wire = RedisWire(REDIS_URL)
        try:
            first = await wire.script(source, [], [41])
            plain_redis.script_flush()
            return first, await wire.script(source, [], [1])
        finally:
            await wire.close()

    assert event_loop.run(scenario()) == (42, 2)


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        (b":-7\r\n", -7),
        (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
        (b"$-1\r\n", None),
        (b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n", [1, [b"x"]]),
        (b"+OK\r\n", b"OK"),
    ],
)
def test_a_reply_is_read_whole_and_only_when_all_of_it_has_arrived(reply, value):
    assert parse(reply, 0) == (value, len(reply))
    for cut in range(1, len(reply)):
        with pytest.raises(_Incomplete):
            parse(reply[:cut], 0)


def test_a_command_is_packed_as_an_array_of_bulk_strings():
    assert pack(("ZADD", b"k", 12, "t")) == b"*4\r\n$4\r\nZADD\r\n$1\r\nk\r\n$2\r\n12\r\n$1\r\nt\r\n"


class SilentServer:
    """Accepts connections, records what arrives, answers +OK only when told to."""

    def __init__(self, *, answer: bool) -> None:
        self.answer = answer
        self.received = bytearray()
        self.connections = 0
        self.listening: asyncio.Server | None = None

    async def url(self, path: str = "/0") -> str:
        """Start listening on a free loopback port: a Redis URL that reaches this server."""
        self.listening = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.listening.sockets[0].getsockname()[1]}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0  # bytes of self.received already answered
        while data := await reader.read(65536):
            self.received += data
            while self.answer:
                try:
                    _command, answered = parse(self.received, answered)
                except _Incomplete:
                    break
                writer.write(b"+OK\r\n")
        writer.close()


def test_the_url_password_and_database_are_sent_before_the_first_command():
    async def scenario() -> bytes:
        server = SilentServer(answer=True)
        wire = RedisWire(f"redis://gate:s%40cret@{await server.url('/3')}")
        try:
            assert await wire.call("PING") == b"OK"
        finally:
            await wire.close()
            server.listening.close()
        return bytes(server.received)

    sent = event_loop.run(scenario())
    assert sent == pack(("AUTH", "gate", "s@cret")) + pack(("SELECT", 3)) + pack(("PING",))


def test_a_silent_redis_fails_the_command_in_time_and_the_next_one_connects_again():
    async def scenario() -> int:
        server = SilentServer(answer=False)
        wire = RedisWire(f"redis://{await server.url()}", timeout=0.2)
        try:
            for _ in range(2):
                with pytest.raises(RedisUnavailable, match="did not answer"):
                    await wire.call("PING")
        finally:
            await wire.close()
            server.listening.close()
        return server.connections

    assert event_loop.run(scenario()) == 2


def test_redis_going_away_fails_the_waiting_commands_and_the_limiter_counts_in_its_process():
    async def scenario() -> None:
        server = SilentServer(answer=False)
        limiter = RedisLimiter(f"redis://{await server.url()}")
        waiting = asyncio.ensure_future(limiter.redis.call("PING"))
        await asyncio.sleep(0.1)
        server.listening.close()
        limiter.redis._protocol.transport.close()  # as a restart of Redis would
        with pytest.raises(RedisUnavailable):
            await waiting
        one = [Limit("key:1", 1, 60.0)]
        assert await limiter.take("a", one) is None  # counted in this process
        assert await limiter.take("b", one) is not None
        await limiter.close()

    event_loop.run(scenario())


def test_the_slots_a_request_gives_back_in_one_turn_go_in_one_call(plain_redis):
    async def scenario() -> tuple[int, list]:
        limiter = RedisLimiter(REDIS_URL)
        try:
            assert await limiter.take("t1", [Limit("user:1", 5, 60.0), Limit("key:1", 5, 60.0)]) is None
            assert await limiter.take("t1", [Limit("account:1", 5, 60.0)]) is None
            limiter.release_soon("t1", ["account:1"])
            limiter.release_soon("t1", ["user:1", "key:1"])
            calls = len(limiter.releasing)
            await limiter.drain(timeout=5)
            left = [plain_redis.zcard(REDIS_PREFIX + scope) for scope in ("user:1", "key:1", "account:1")]
            return calls, left
        finally:
            await limiter.close()

    assert event_loop.run(scenario()) == (1, [0, 0, 0])
