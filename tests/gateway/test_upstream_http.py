"""The gateway's upstream HTTP client (gateway/upstream_http.py) over real loopback sockets, against
small servers of the test's own that send exactly the bytes a case needs."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import itertools
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import gateway.upstream_http
from gateway.addresses import CheckedResolver
from gateway.relay import ClientChannel, Timeouts, UpstreamFailure, call_upstream
from gateway.upstream_http import (
    BUFFER_LIMIT,
    IDLE_CLOSE_RACE_MAX_SECONDS,
    IDLE_CLOSE_RACE_SECONDS,
    UpstreamBroken,
    UpstreamClient,
    UpstreamConnectError,
)
from gateway.upstreams import UpstreamTarget
from tests.gateway.test_upstream_addresses import fixed_answers

HEADERS = (("content-type", "application/json"), ("authorization", "Bearer sk-test"))
BODY = b'{"model": "gpt-4o"}'
T = TypeVar("T")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a scenario on asyncio's own loop, then on uvloop's (the gateway's, under uvicorn)."""
    runner = asyncio.run if request.param == "asyncio" else uvloop.run

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        # A thread of its own: the browser tests keep a loop running in the main thread.
        with ThreadPoolExecutor(1, thread_name_prefix="test-loop") as pool:
            return pool.submit(runner, coroutine).result()

    return run


@pytest.fixture(autouse=True)
def _private_networks_allowed(settings):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = True  # the servers are on loopback


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


Conversation = Callable[["Upstream", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Upstream:
    """A server on loopback: each connection it accepts (numbered from 0) runs `conversation`."""

    def __init__(
        self, conversation: Conversation, *, host: str = "127.0.0.1", port: int = 0, tls=None
    ) -> None:
        self.conversation = conversation
        self.host = host
        self.port = port
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._accepted, self.host, self.port, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        authority = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self.tls else 'http'}://{authority}:{self.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self.server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self._writers.append(writer)
        try:
            await self.conversation(self, reader, writer, number)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went: the conversation is over
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head).group(1))
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def answering(*answers: bytes, delay: float = 0.0) -> Conversation:
    """Answer the requests of each connection with `answers` in turn (the last one repeated)."""

    async def conversation(upstream, reader, writer, number) -> None:
        for index in itertools.count():
            await upstream.request(reader)
            await asyncio.sleep(delay)
            writer.write(answers[min(index, len(answers) - 1)])
            await writer.drain()

    return conversation


def silent() -> Conversation:
    """Read the request, then never answer."""

    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        await asyncio.sleep(60)

    return conversation


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), not an orderly FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def post(client: UpstreamClient, url: str, *, connect_timeout: float = 5.0):
    return await client.post(url + "/v1/chat/completions", BODY, HEADERS, connect_timeout=connect_timeout)


async def until(condition: Callable[[], bool], *, seconds: float = 5.0) -> bool:
    """Whether `condition` came true within `seconds` (polled: a loaded machine is slow, not wrong)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def read_all(response) -> bytes:
    received = b""
    while chunk := await response.readany():
        received += chunk
    return received


# --- requests and answers ----------------------------------------------------------------------


def test_the_request_names_its_host_and_length_asks_for_no_compression_and_sends_no_user_agent(run):
    async def scenario() -> tuple[bytes, int]:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4)
            response = await client.post(
                upstream.url + "/v1/messages?beta=true", b"hello", HEADERS, connect_timeout=5
            )
            await response.read()
            await client.close()
            return upstream.requests[0], upstream.port

    request, port = run(scenario())
    assert request == (
        b"POST /v1/messages?beta=true HTTP/1.1\r\n"
        + f"host: 127.0.0.1:{port}\r\n".encode()
        + b"accept-encoding: identity\r\n"
        + b"content-type: application/json\r\nauthorization: Bearer sk-test\r\n"
        + b"content-length: 5\r\n\r\nhello"
    )


def test_a_sized_answer_is_read_whole_and_its_connection_serves_the_next_request(run):
    async def scenario() -> tuple[list, int, int]:
        async with Upstream(
            answering(answer(b'{"n": 1}'), answer(b'{"n": 2}'), answer(b'{"n": 3}'))
        ) as upstream:
            client = UpstreamClient(limit=4)
            bodies = []
            for _ in range(3):
                response = await post(client, upstream.url)
                bodies.append((response.status, await response.read()))
            idle = client.idle_connections
            await client.close()
            return bodies, upstream.connections, idle

    bodies, connections, idle = run(scenario())
    assert bodies == [(200, b'{"n": 1}'), (200, b'{"n": 2}'), (200, b'{"n": 3}')]
    assert connections == 1
    assert idle == 1


async def two_answers(conversation) -> tuple[list[bytes], int]:
    """Two requests in turn to an upstream speaking `conversation`: their bodies, and how many
    connections the upstream saw."""
    async with Upstream(conversation) as upstream:
        client = UpstreamClient(limit=4)
        bodies = [await (await post(client, upstream.url)).read() for _ in range(2)]
        await client.close()
        return bodies, upstream.connections


def test_a_chunked_answer_is_read_whole_and_its_connection_kept(run):
    async def conversation(upstream, reader, writer, number) -> None:
        while True:
            await upstream.request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await asyncio.sleep(0.02)
            writer.write(b"6\r\n world\r\n0\r\n\r\n")

    assert run(two_answers(conversation)) == ([b"hello world", b"hello world"], 1)


def test_a_chunked_answers_trailers_are_not_headers_of_the_next_answer_on_its_connection(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-usage\r\n\r\n"
            b"2\r\n{}\r\n0\r\nx-usage: tenant-a\r\n\r\n"
        )
        await upstream.request(reader)
        writer.write(answer(b"{}"))
        await asyncio.sleep(60)

    async def scenario() -> tuple[list, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            answers = []
            for _ in range(2):
                response = await post(client, upstream.url)
                answers.append((await response.read(), response.headers))
            await client.close()
            return answers, upstream.connections

    (first, second), connections = run(scenario())
    assert first[0] == second[0] == b"{}"
    assert connections == 1
    assert "x-usage" not in first[1]
    assert "x-usage" not in second[1]


def test_an_answer_without_a_length_is_read_until_the_server_closes_and_its_connection_is_gone(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\n")
        await asyncio.sleep(0.02)
        writer.write(b"data: 2\n\n")
        await writer.drain()
        writer.close()

    async def scenario() -> tuple[bytes, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            body = await read_all(await post(client, upstream.url))
            await asyncio.sleep(0.01)
            open_connections = client.open_connections
            await client.close()
            return body, open_connections

    assert run(scenario()) == (b"data: 1\n\ndata: 2\n\n", 0)


def test_header_names_are_lower_case_and_repeated_headers_joined(run):
    headers = ("X-Thing: a", "OpenAI-Processing-MS: 12", "x-thing: b")

    async def scenario() -> dict:
        async with Upstream(answering(answer(b"{}", *headers))) as upstream:
            client = UpstreamClient(limit=4)
            response = await post(client, upstream.url)
            await client.close()
            return response.headers

    headers = run(scenario())
    assert headers["x-thing"] == "a, b"
    assert headers["openai-processing-ms"] == "12"


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\nlink: </x>\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n",
    ],
)
def test_an_interim_answer_is_skipped_for_the_answer_that_follows(interim, run):
    async def scenario() -> tuple[int, dict, bytes, int]:
        async with Upstream(answering(interim + answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4)
            response = await post(client, upstream.url)
            body = await response.read()
            idle = client.idle_connections
            await client.close()
            return response.status, response.headers, body, idle

    status, headers, body, idle = run(scenario())
    assert (status, body, idle) == (200, b"{}", 1)
    assert "link" not in headers


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"],
)
def test_an_answer_without_a_body_by_its_status_is_read_empty_and_its_connection_kept(head, run):
    async def scenario() -> tuple[bytes, bytes, int]:
        async with Upstream(answering(head, answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4)
            empty = await (await post(client, upstream.url)).read()
            body = await (await post(client, upstream.url)).read()
            await client.close()
            return empty, body, upstream.connections

    assert run(scenario()) == (b"", b"{}", 1)


def test_an_answer_switching_protocols_is_a_broken_connection(run):
    switching = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"

    async def scenario() -> int:
        async with Upstream(answering(switching)) as upstream:
            client = UpstreamClient(limit=4)
            with pytest.raises(UpstreamBroken, match="switched protocols"):
                await post(client, upstream.url)
            open_connections = client.open_connections
            await client.close()
            return open_connections

    assert run(scenario()) == 0


def test_bytes_after_the_answer_in_the_same_read_close_its_connection(run):
    async def conversation(upstream, reader, writer, number) -> None:
        if number > 0:
            await answering(answer(b'{"n": 3}'))(upstream, reader, writer, number)
            return
        await upstream.request(reader)
        writer.write(answer(b'{"n": 1}') + answer(b'{"n": 2}'))  # one answer too many
        await asyncio.sleep(60)

    assert run(two_answers(conversation)) == ([b'{"n": 1}', b'{"n": 3}'], 2)


def test_bytes_arriving_on_an_idle_connection_close_it(run):
    async def conversation(upstream, reader, writer, number) -> None:
        if number > 0:
            await answering(answer(b'{"fresh": true}'))(upstream, reader, writer, number)
            return
        await upstream.request(reader)
        writer.write(answer(b"{}"))
        await asyncio.sleep(0.02)
        writer.write(answer(b'{"stale": true}'))  # asked for by nobody: the next call's answer?
        await asyncio.sleep(60)

    async def scenario() -> tuple[bool, bytes, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            await (await post(client, upstream.url)).read()
            closed = await until(lambda: client.open_connections == 0)
            body = await (await post(client, upstream.url)).read()
            await client.close()
            return closed, body, upstream.connections

    assert run(scenario()) == (True, b'{"fresh": true}', 2)


def test_read_up_to_stops_at_its_size_and_leaves_the_rest_to_read(run):
    async def scenario() -> tuple[bytes, bytes]:
        async with Upstream(answering(answer(b"0123456789" * 10))) as upstream:
            client = UpstreamClient(limit=4)
            response = await post(client, upstream.url)
            first = await response.read_up_to(15)
            rest = await read_all(response)
            await client.close()
            return first, rest

    first, rest = run(scenario())
    assert first == b"012345678901234"
    assert len(rest) == 85


def test_an_answer_that_is_not_http_is_a_broken_connection(run):
    async def scenario() -> None:
        async with Upstream(answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as upstream:
            client = UpstreamClient(limit=4)
            with pytest.raises(UpstreamBroken, match="not valid HTTP"):
                await post(client, upstream.url)
            assert client.open_connections == 0
            await client.close()

    run(scenario())


def test_a_header_value_with_a_line_break_is_never_sent(run):
    async def scenario() -> None:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4)
            with pytest.raises(UpstreamConnectError, match="line break"):
                await client.post(
                    upstream.url, BODY, (("x-api-key", "sk\r\nx-injected: 1"),), connect_timeout=5
                )
            assert upstream.connections == 0
            await client.close()

    run(scenario())


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://relay.test/v1", "is not an http:// or https:// URL"),
        ("http:///v1", "is not an http:// or https:// URL"),
        ("http://./v1", "is not an http:// or https:// URL"),
        ("http://relay.test:99999/v1", "has an invalid port"),
        ("http://relay.test:0/v1", "has an invalid port"),
        ("https://sk-secret@relay.test/v1", "carries a user name or password (user@host), which is never"),
        ("https://user:hunter2@relay.test/v1", "carries a user name or password"),
        ("http://[fe80::1%25eth0]:8080/v1", "names an IPv6 zone, which is not supported"),
    ],
)
def test_a_url_the_client_cannot_call_is_a_connect_error_saying_why(url, problem, run):
    async def scenario() -> str:
        client = UpstreamClient(limit=4)
        with pytest.raises(UpstreamConnectError) as refused:
            await client.post(url, BODY, HEADERS, connect_timeout=5)
        await client.close()
        return str(refused.value)

    message = run(scenario())
    assert problem in message
    assert "secret" not in message
    assert "hunter2" not in message


def test_a_percent_encoded_host_name_is_not_taken_for_an_ipv6_zone(run):
    async def scenario() -> tuple[bytes, bytes]:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4, resolver=CheckedResolver(fixed_answers("127.0.0.1")))
            body = await (await post(client, f"http://ex%61mple.test:{upstream.port}")).read()
            await client.close()
            return body, upstream.requests[0]

    body, request = run(scenario())
    assert body == b"{}"
    assert b"\r\nhost: ex%61mple.test:" in request


# --- broken connections ------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["closed", "reset"])
def test_what_arrived_before_a_drop_is_handed_over_before_the_error(ending, run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()
        await asyncio.sleep(0.05)
        if ending == "reset":
            reset(writer)
        else:
            writer.close()

    async def scenario() -> tuple[bytes, str]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            response = await post(client, upstream.url)
            received = b""
            with pytest.raises(UpstreamBroken) as broken:
                while True:
                    received += await response.readany()
            await client.close()
            return received, str(broken.value)

    received, error = run(scenario())
    assert received == b"x" * 40
    assert "mid-answer" in error


def test_reading_a_whole_body_that_was_cut_short_raises(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            response = await post(client, upstream.url)
            with pytest.raises(UpstreamBroken, match="mid-answer"):
                await response.read()
            await client.close()

    run(scenario())


def test_a_connection_closed_before_the_answer_is_broken_and_not_retried_when_it_was_new(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)  # then closes without a word

    async def scenario() -> int:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            with pytest.raises(UpstreamBroken, match="before answering"):
                await post(client, upstream.url)
            await client.close()
            return len(upstream.requests)

    assert run(scenario()) == 1


def test_a_reused_connection_closed_as_the_request_arrives_is_retried_once_on_a_new_one(monkeypatch, run):
    # The reset must be seen within the window of the request leaving: wide here, so that a loaded
    # machine's slow turns do not decide the test (the window's width has a test of its own).
    monkeypatch.setattr(gateway.upstream_http, "IDLE_CLOSE_RACE_SECONDS", 5.0)
    monkeypatch.setattr(gateway.upstream_http, "IDLE_CLOSE_RACE_MAX_SECONDS", 5.0)

    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(answer(f'{{"connection": {number}}}'.encode()))
        if number == 0:
            # Its keep-alive time is up just as the second request arrives: closed unanswered.
            await reader.read(1)
            reset(writer)
            return
        await asyncio.sleep(60)

    async def scenario() -> tuple[bytes, bytes, int, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            first = await (await post(client, upstream.url)).read()
            second = await (await post(client, upstream.url)).read()
            await client.close()
            return first, second, len(upstream.requests), upstream.connections

    assert run(scenario()) == (b'{"connection": 0}', b'{"connection": 1}', 2, 2)


def test_a_reused_connection_closed_later_than_a_round_trip_after_the_request_is_not_retried(
    run, monkeypatch
):
    # The window pinned to its floor: measured from a loopback connect, a loop stalled by a busy
    # machine could otherwise stretch it past the server's delay below.
    monkeypatch.setattr(gateway.upstream_http, "IDLE_CLOSE_RACE_MAX_SECONDS", IDLE_CLOSE_RACE_SECONDS)

    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(answer(b"{}"))
        # The second request is taken up, and the server dies before a byte of the answer (a long
        # completion, a crash): sent again, it would run and be billed twice.
        await upstream.request(reader)
        await asyncio.sleep(IDLE_CLOSE_RACE_SECONDS + 0.2)
        reset(writer)

    async def scenario() -> tuple[int, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            await (await post(client, upstream.url)).read()
            with pytest.raises(UpstreamBroken, match="before answering"):
                await post(client, upstream.url)
            await client.close()
            return len(upstream.requests), upstream.connections

    assert run(scenario()) == (2, 1)


def test_the_retry_window_is_twice_the_connect_time_within_its_floor_and_cap(monkeypatch):
    connect = asyncio.selector_events.BaseSelectorEventLoop.sock_connect

    async def distant_connect(loop, sock, address):
        await asyncio.sleep(0.3)  # a distant upstream, or a stalled loop: the connect is slow
        return await connect(loop, sock, address)

    async def scenario() -> float:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4)
            await (await post(client, upstream.url)).read()
            (connection,) = client._connections
            await client.close()
            return connection.race_window

    def window() -> float:
        with ThreadPoolExecutor(1) as pool:  # (asyncio's own loop: its sock_connect is the one slowed)
            return pool.submit(asyncio.run, scenario()).result()

    near = window()
    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", distant_connect)
    far = window()
    assert IDLE_CLOSE_RACE_SECONDS <= near < 0.6  # loopback: the floor (a stalled loop may add a little)
    assert 0.6 <= far <= IDLE_CLOSE_RACE_MAX_SECONDS


def test_a_reused_connection_that_had_begun_to_answer_is_not_retried(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(answer(b"{}"))
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await writer.drain()
        reset(writer)

    async def scenario() -> int:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            await (await post(client, upstream.url)).read()
            with pytest.raises(UpstreamBroken):
                await post(client, upstream.url)
            await client.close()
            return len(upstream.requests)

    assert run(scenario()) == 2


# --- the pool ----------------------------------------------------------------------------------


def test_an_answer_with_connection_close_does_not_leave_its_connection_in_the_pool(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(answer(b"{}", "connection: close"))
        await asyncio.sleep(60)  # the server keeps it open: the client must not use it again

    async def scenario() -> int:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            for _ in range(2):
                await (await post(client, upstream.url)).read()
            await client.close()
            return upstream.connections

    assert run(scenario()) == 2


def test_a_connection_the_server_closed_while_idle_is_not_used_again(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        await asyncio.sleep(0.02)  # (then closed, as a server does after its keep-alive time)

    async def scenario() -> tuple[int, int, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            await (await post(client, upstream.url)).read()
            await asyncio.sleep(0.1)
            left_open = client.open_connections
            await (await post(client, upstream.url)).read()
            await client.close()
            return left_open, upstream.connections, len(upstream.requests)

    assert run(scenario()) == (0, 2, 2)


def test_an_answer_left_unread_closes_its_connection_instead_of_returning_it(run):
    async def conversation(upstream, reader, writer, number) -> None:
        while True:
            await upstream.request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
            await asyncio.sleep(0.05)
            writer.write(b"x" * 990)

    async def scenario() -> tuple[int, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            response = await post(client, upstream.url)
            response.release()  # 990 bytes still to come: the connection cannot carry another request
            left_open = client.open_connections
            await (await post(client, upstream.url)).read()
            await client.close()
            return left_open, upstream.connections

    assert run(scenario()) == (0, 2)


@pytest.mark.parametrize(
    ("scheme", "size"),
    [
        ("http", 1024 * 1024),  # all of it in the kernel's buffers: "written", and never read
        ("http", 32 * 1024 * 1024),  # more than the two sockets' buffers hold
        ("https", 16 * 1024 * 1024),  # encrypted, so out of the TLS layer's buffer, not sent
        ("https", 48 * 1024),  # one joined write: may outgrow a fresh TLS connection's kernel buffer
    ],
)
def test_an_answer_that_comes_while_the_request_is_still_being_written_closes_its_connection(
    scheme, size, tmp_path, run
):
    server_tls, pem = certificate(tmp_path, "127.0.0.1") if scheme == "https" else (None, None)

    async def conversation(upstream, reader, writer, number) -> None:
        if number > 0:
            await answering(answer(b"{}"))(upstream, reader, writer, number)
            return
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is refused unread
        writer.write(answer(b'{"error": "too large"}', status="413 Payload Too Large"))
        await asyncio.sleep(60)

    async def scenario() -> tuple[int, int, int, bytes, int]:
        async with Upstream(conversation, tls=server_tls) as upstream:
            context = ssl.create_default_context(cadata=pem) if pem else None
            client = UpstreamClient(limit=4, ssl_context=context)
            url = upstream.url + "/v1/chat/completions"
            refused = await client.post(url, b"x" * size, HEADERS, connect_timeout=5)
            await refused.read()
            idle, open_connections = client.idle_connections, client.open_connections
            async with asyncio.timeout(5):
                body = await (await post(client, upstream.url)).read()
            await client.close()
            return refused.status, idle, open_connections, body, upstream.connections

    assert run(scenario()) == (413, 0, 0, b"{}", 2)


def test_a_success_answer_to_a_large_body_keeps_its_connection(run):
    async def scenario() -> tuple[list, int]:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4)
            url = upstream.url + "/v1/chat/completions"
            bodies = []
            for _ in range(2):
                response = await client.post(url, b"x" * 1024 * 1024, HEADERS, connect_timeout=5)
                bodies.append(await response.read())  # (answered once the body was read whole)
            await client.close()
            return bodies, upstream.connections

    assert run(scenario()) == ([b"{}", b"{}"], 1)


def test_a_connection_idle_past_its_time_is_closed_and_not_used_again(run):
    async def scenario() -> tuple[int, int]:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4, idle_seconds=0.2)
            await (await post(client, upstream.url)).read()
            await asyncio.sleep(0.5)  # past its time, and past the sweep that follows it
            left_open = client.open_connections
            await (await post(client, upstream.url)).read()
            await client.close()
            return left_open, upstream.connections

    assert run(scenario()) == (0, 2)


def test_an_idle_connection_is_closed_soon_after_its_time_whenever_it_went_back_to_the_pool(run):
    async def scenario() -> tuple[int, float, bool]:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4, idle_seconds=1.0)  # closed at most 0.1 s late
            loop = asyncio.get_running_loop()
            await (await post(client, upstream.url)).read()  # a sweep set for 1.1 s from here
            await asyncio.sleep(0.55)
            await (await post(client, upstream.url)).read()  # idle again, for a second from here
            back = loop.time()
            (connection,) = client._connections
            # Past the first sweep, before the connection's own time: still open, and the next
            # sweep set for just after that time (how late a timer fires is the loop's own).
            await asyncio.sleep(back + 0.85 - loop.time())
            before = client.open_connections
            late = client._sweep_timer.when() - connection.expires
            closed = await until(lambda: client.open_connections == 0)
            await client.close()
            return before, late, closed

    before, late, closed = run(scenario())
    assert before == 1
    assert 0 < late <= 0.1 + 0.002  # uvloop's timers keep whole milliseconds
    assert closed


def test_no_sweep_is_left_running_once_no_connection_is_idle(run):
    async def scenario() -> tuple[dict, object]:
        async with Upstream(answering(answer(b"{}"), answer(b"{}", "connection: close"))) as upstream:
            client = UpstreamClient(limit=4, idle_seconds=0.2)
            await (await post(client, upstream.url)).read()
            await (await post(client, upstream.url)).read()  # taken from the pool, then closed
            await asyncio.sleep(0.5)
            idle, timer = dict(client._idle), client._sweep_timer
            await client.close()
            return idle, timer

    assert run(scenario()) == ({}, None)


def test_a_server_keep_alive_timeout_shortens_how_long_its_connection_is_kept(run):
    async def scenario() -> int:
        async with Upstream(answering(answer(b"{}", "keep-alive: timeout=1, max=100"))) as upstream:
            client = UpstreamClient(limit=4)
            for _ in range(2):
                await (await post(client, upstream.url)).read()
            await client.close()
            return upstream.connections

    # Kept for a second less than the server's timeout: not at all.
    assert run(scenario()) == 2


def test_at_the_cap_a_caller_waits_for_a_connection_to_come_free(run):
    async def scenario() -> tuple[list, int, float]:
        async with Upstream(answering(answer(b"{}"), delay=0.1)) as upstream:
            client = UpstreamClient(limit=1)
            most = 0

            async def one() -> bytes:
                nonlocal most
                response = await post(client, upstream.url)
                most = max(most, client.open_connections)
                return await response.read()

            started = time.monotonic()
            bodies = await asyncio.gather(one(), one(), one())
            elapsed = time.monotonic() - started
            await client.close()
            return bodies, upstream.connections, elapsed

    bodies, connections, elapsed = run(scenario())
    assert bodies == [b"{}"] * 3
    assert connections == 1  # each waited for the one connection and used it in turn
    assert elapsed >= 0.3 - 0.005  # (uvloop's timers may fire up to a millisecond early)


def test_at_the_cap_a_caller_gives_up_after_its_connect_timeout(run):
    async def scenario() -> int:
        async with Upstream(silent()) as upstream:
            client = UpstreamClient(limit=1)
            stuck = asyncio.ensure_future(post(client, upstream.url))
            await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):
                await post(client, upstream.url, connect_timeout=0.1)
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            open_connections = client.open_connections
            await client.close()
            return open_connections

    assert run(scenario()) == 0


def test_at_the_cap_an_idle_connection_to_another_host_makes_way(run):
    async def scenario() -> tuple[bytes, int]:
        async with Upstream(answering(answer(b"a"))) as first, Upstream(answering(answer(b"b"))) as second:
            client = UpstreamClient(limit=1)
            await (await post(client, first.url)).read()
            body = await (await post(client, second.url)).read()
            open_connections = client.open_connections
            await client.close()
            return body, open_connections

    assert run(scenario()) == (b"b", 1)


def test_a_head_slower_than_the_callers_deadline_ends_the_call_and_frees_its_place(run):
    async def scenario() -> tuple[int, bytes]:
        async with Upstream(silent()) as slow, Upstream(answering(answer(b"{}"))) as quick:
            client = UpstreamClient(limit=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await post(client, slow.url)
            open_connections = client.open_connections
            body = await (await post(client, quick.url, connect_timeout=0.5)).read()
            await client.close()
            return open_connections, body

    assert run(scenario()) == (0, b"{}")


def test_cancelling_a_call_whose_answer_has_come_whole_leaves_its_connection_to_the_next_call(run):
    async def conversation(upstream, reader, writer, number) -> None:
        if number > 0:
            await answering(answer(b'"on a new connection"'))(upstream, reader, writer, number)
            return
        await upstream.request(reader)  # the first call's: the test hands its answer over itself
        await upstream.request(reader)
        writer.write(answer(b'"second"'))
        await asyncio.sleep(60)

    async def scenario() -> tuple[bytes, int, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            first = asyncio.ensure_future(post(client, upstream.url))
            while not upstream.requests:
                await asyncio.sleep(0.005)
            (connection,) = client._connections
            go = asyncio.get_running_loop().create_future()

            async def second_call() -> bytes:
                await go
                return await (await post(client, upstream.url)).read()

            second = asyncio.ensure_future(second_call())
            await asyncio.sleep(0)
            # One turn of the loop: the second call is due to run; the first call's whole answer
            # arrives (its connection goes back to the pool), and its deadline cancels it before
            # it resumes. The second call takes the connection and sends on it first.
            go.set_result(None)
            connection.data_received(answer(b'"first"'))
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            body = await second
            await client.close()
            return body, len(upstream.requests), upstream.connections

    assert run(scenario()) == (b'"second"', 2, 1)


@pytest.mark.parametrize("order", ["cancelled, then woken", "woken, then cancelled"])
def test_a_waiter_cancelled_as_a_place_comes_free_leaves_the_place_to_the_next_in_line(order, run):
    async def conversation(upstream, reader, writer, number) -> None:
        if number > 0:
            await answering(answer(b"{}"))(upstream, reader, writer, number)
            return
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")  # and no end
        await asyncio.sleep(60)

    async def scenario() -> tuple[bytes, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=1)
            holder = await post(client, upstream.url)  # the one place
            first = asyncio.ensure_future(post(client, upstream.url))
            second = asyncio.ensure_future(post(client, upstream.url))
            await asyncio.sleep(0.02)  # both wait for a place, first in line first
            # In one turn of the loop (a deadline and a place coming free together):
            if order == "cancelled, then woken":
                first.cancel()
                holder.close()
            else:
                holder.close()
                first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            body = await (await asyncio.wait_for(second, 2)).read()
            open_connections = client.open_connections
            await client.close()
            return body, open_connections

    assert run(scenario()) == (b"{}", 1)


def test_closing_an_answer_wakes_its_reader_with_an_error(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(60)

    async def scenario() -> tuple[bytes, int]:
        async with Upstream(conversation) as upstream:
            client = UpstreamClient(limit=4)
            response = await post(client, upstream.url)
            first = await response.readany()
            reading = asyncio.ensure_future(response.readany())
            await asyncio.sleep(0.02)
            response.close()  # what a drain's time up does to a stream still running
            with pytest.raises(UpstreamBroken, match="closed"):
                await reading
            open_connections = client.open_connections
            await client.close()
            return first, open_connections

    assert run(scenario()) == (b"hello", 0)


def test_a_stream_read_slower_than_it_arrives_stops_the_connection_reading(run):
    size = 32 * 1024 * 1024

    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
        upstream.finished = True

    async def scenario() -> tuple[int, bool, int, bool]:
        async with Upstream(conversation) as upstream:
            upstream.finished = False
            client = UpstreamClient(limit=4)
            response = await post(client, upstream.url)
            await asyncio.sleep(0.3)
            buffered, finished_early = response.buffered, upstream.finished
            received = len(await read_all(response))
            await asyncio.sleep(0.01)
            await client.close()
            return buffered, finished_early, received, upstream.finished

    buffered, finished_early, received, finished = run(scenario())
    assert buffered <= BUFFER_LIMIT + 256 * 1024  # one socket read past the limit at most
    assert not finished_early
    assert (received, finished) == (size, True)


def test_closing_the_client_closes_its_connections_idle_and_in_use(run):
    async def scenario() -> tuple[int, str]:
        async with Upstream(answering(answer(b"{}"))) as idle, Upstream(silent()) as busy:
            client = UpstreamClient(limit=4)
            await (await post(client, idle.url)).read()
            waiting = asyncio.ensure_future(post(client, busy.url))
            await asyncio.sleep(0.05)
            await client.close()
            with pytest.raises(UpstreamBroken) as broken:
                await waiting
            return client.open_connections, str(broken.value)

    open_connections, error = run(scenario())
    assert open_connections == 0
    assert "shutting down" in error


def test_closing_the_client_closes_a_connection_still_being_opened(run):
    async def conversation(upstream, reader, writer, number) -> None:
        await reader.read(65536)  # the ClientHello of a TLS handshake that is never answered
        upstream.hello.set()
        while await reader.read(65536):
            pass
        upstream.closed_by_client = True

    async def scenario() -> tuple[str, bool, int]:
        async with Upstream(conversation) as upstream:
            upstream.closed_by_client = False
            upstream.hello = asyncio.Event()
            client = UpstreamClient(limit=4, resolver=CheckedResolver(fixed_answers("127.0.0.1")))
            opening = asyncio.ensure_future(post(client, f"https://relay.test:{upstream.port}"))
            await asyncio.wait_for(upstream.hello.wait(), 5)
            await client.close()
            with pytest.raises(UpstreamConnectError) as closed:
                await asyncio.wait_for(opening, 5)
            closed_by_client = await until(lambda: upstream.closed_by_client)
            return str(closed.value), closed_by_client, client.open_connections

    assert run(scenario()) == ("the upstream client is closed", True, 0)


# --- addresses and TLS -------------------------------------------------------------------------


def test_an_address_nobody_listens_on_is_a_connect_error_carrying_the_os_error(run):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the call: nothing listens there

    async def scenario() -> None:
        client = UpstreamClient(limit=4)
        with pytest.raises(UpstreamConnectError) as refused:
            await post(client, f"http://127.0.0.1:{port}")
        assert isinstance(refused.value.os_error, ConnectionRefusedError)
        assert client.open_connections == 0
        await client.close()

    run(scenario())


def test_a_server_that_closes_each_connection_as_it_opens_leaves_no_place_taken(run):
    async def conversation(upstream, reader, writer, number) -> None:
        pass  # closed at once

    async def scenario() -> tuple[list, int, bytes]:
        async with Upstream(conversation) as closing, Upstream(answering(answer(b"{}"))) as healthy:
            client = UpstreamClient(limit=1)
            outcomes = []
            for _ in range(3):
                # The request is written before the loop reads the close (a transport starts
                # reading in the turn that hands it over): a new connection broken, not retried.
                # Read before the connection is handed over (the loop's order of events decides),
                # the close is a connect error instead: either way no place stays taken.
                with pytest.raises((UpstreamBroken, UpstreamConnectError), match="closed the connection"):
                    await post(client, closing.url, connect_timeout=1)
                outcomes.append(client.open_connections)
            # The one place is free: another host is served at once.
            body = await (await post(client, healthy.url, connect_timeout=0.5)).read()
            await client.close()
            return outcomes, closing.connections, body

    assert run(scenario()) == ([0, 0, 0], 3, b"{}")


def test_a_server_that_speaks_as_the_connection_opens_leaves_no_place_taken(run):
    # A base URL pointing at an SSH or SMTP port: its banner comes as soon as it accepts. Written
    # from a thread of its own, it can arrive before the loop has handed the new connection over.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            accepted.append(conn)

    async def scenario() -> tuple[list, bytes]:
        async with Upstream(answering(answer(b"{}"))) as healthy:
            client = UpstreamClient(limit=2)
            outcomes = []
            for _ in range(6):
                with pytest.raises((UpstreamConnectError, UpstreamBroken)):
                    await post(client, f"http://127.0.0.1:{port}", connect_timeout=1)
                outcomes.append(client.open_connections)
            # Both places are free: another host is served at once.
            body = await (await post(client, healthy.url, connect_timeout=0.5)).read()
            await client.close()
            return outcomes, body

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        outcomes, body = run(scenario())
    finally:
        done.set()
        server.join()
        listener.close()
        for conn in accepted:
            conn.close()
    assert (outcomes, body, len(accepted)) == ([0] * 6, b"{}", 6)


def test_a_name_resolving_only_to_refused_addresses_is_never_connected_to(settings, run):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = False

    async def scenario() -> int:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4, resolver=CheckedResolver(fixed_answers("127.0.0.1")))
            with pytest.raises(UpstreamConnectError, match="relay.test resolves only to refused .*loopback"):
                await post(client, f"http://relay.test:{upstream.port}")
            await client.close()
            return upstream.connections

    assert run(scenario()) == 0


@pytest.mark.parametrize(
    ("allow_private", "address", "problem"),
    [
        (False, "127.0.0.1", "127.0.0.1 is a loopback address"),
        (True, "169.254.169.254", "169.254.169.254 is a link-local or cloud metadata address"),
    ],
)
def test_a_url_spelling_a_refused_address_is_never_connected_to(
    allow_private, address, problem, settings, run
):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = allow_private

    async def scenario() -> tuple[str, int]:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4)  # the system's resolver, as in the gateway
            with pytest.raises(UpstreamConnectError) as refused:
                await post(client, f"http://{address}:{upstream.port}", connect_timeout=1)
            await client.close()
            return str(refused.value), upstream.connections

    message, connections = run(scenario())
    assert problem in message
    assert connections == 0


def test_the_next_address_is_tried_when_the_first_refuses_the_connection(run):
    async def scenario() -> tuple[bytes, bytes]:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            # Nothing listens on 127.0.0.2 (the server is bound to 127.0.0.1 only).
            resolver = CheckedResolver(fixed_answers("127.0.0.2", "127.0.0.1"))
            client = UpstreamClient(limit=4, resolver=resolver)
            body = await (await post(client, f"http://relay.test:{upstream.port}")).read()
            await client.close()
            return body, upstream.requests[0]

    body, request = run(scenario())
    assert body == b"{}"
    assert b"\r\nhost: relay.test:" in request


def test_the_next_address_is_tried_when_no_socket_can_be_made_for_the_first(run):
    async def resolve(host: str, port: int) -> list:
        # A socket the system cannot make (as with EMFILE, or EAFNOSUPPORT on a host without IPv6).
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_UDP, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
        ]

    async def scenario() -> tuple[bytes, int]:
        async with Upstream(answering(answer(b"{}"))) as upstream:
            client = UpstreamClient(limit=4, resolver=CheckedResolver(resolve))
            body = await (await post(client, f"http://relay.test:{upstream.port}")).read()
            open_connections = client.open_connections
            await client.close()
            return body, open_connections

    assert run(scenario()) == (b"{}", 1)


@pytest.mark.parametrize("host", ["api..openai.com", "a" * 64 + ".openai.com"])
def test_a_host_name_the_resolver_cannot_encode_is_a_connect_error(host, run):
    async def scenario() -> str:
        client = UpstreamClient(limit=4)
        with pytest.raises(UpstreamConnectError) as refused:
            await post(client, f"https://{host}")
        open_connections = client.open_connections
        await client.close()
        assert open_connections == 0
        return str(refused.value)

    assert "is not a host name that can be resolved" in run(scenario())


def test_an_ipv6_upstream_is_reached_by_its_address(run):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")

    async def scenario() -> tuple[bytes, bytes, int]:
        async with Upstream(answering(answer(b"{}")), host="::1") as upstream:
            client = UpstreamClient(limit=4)
            body = await (await post(client, upstream.url)).read()
            await client.close()
            return body, upstream.requests[0], upstream.port

    body, request, port = run(scenario())
    assert body == b"{}"
    assert f"\r\nhost: [::1]:{port}\r\n".encode() in request


def certificate(directory: Path, name: str) -> tuple[ssl.SSLContext, str]:
    """A self-signed certificate for `name` (a host name or an IP address): the server's TLS
    context, and the PEM to trust it."""
    try:
        alt_name = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alt_name = x509.DNSName(name)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (directory / "cert.pem").write_text(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return server, pem


def test_https_reaches_a_server_whose_certificate_names_the_host(tmp_path, run):
    server_tls, pem = certificate(tmp_path, "relay.test")

    async def scenario() -> tuple[bytes, int]:
        async with Upstream(answering(answer(b"{}")), tls=server_tls) as upstream:
            client = UpstreamClient(
                limit=4,
                resolver=CheckedResolver(fixed_answers("127.0.0.1")),
                ssl_context=ssl.create_default_context(cadata=pem),
            )
            url = f"https://relay.test:{upstream.port}"
            bodies = [await (await post(client, url)).read() for _ in range(2)]
            await client.close()
            return b"".join(bodies), upstream.connections

    assert run(scenario()) == (b"{}{}", 1)


def test_https_to_a_host_name_with_a_trailing_dot_verifies_and_names_it_without_the_dot(tmp_path, run):
    server_tls, pem = certificate(tmp_path, "relay.test")

    async def scenario() -> tuple[bytes, bytes, int]:
        async with Upstream(answering(answer(b"{}")), tls=server_tls) as upstream:
            client = UpstreamClient(
                limit=4,
                resolver=CheckedResolver(fixed_answers("127.0.0.1")),
                ssl_context=ssl.create_default_context(cadata=pem),
            )
            body = await (await post(client, f"https://relay.test.:{upstream.port}")).read()
            await client.close()
            return body, upstream.requests[0], upstream.port

    body, request, port = run(scenario())
    assert body == b"{}"
    assert f"\r\nhost: relay.test:{port}\r\n".encode() in request


@pytest.mark.parametrize(("named", "reached"), [("127.0.0.1", True), ("relay.test", False)])
def test_https_to_an_ip_address_verifies_the_certificate_against_that_address(named, reached, tmp_path, run):
    server_tls, pem = certificate(tmp_path, named)

    async def scenario() -> bool:
        async with Upstream(answering(answer(b"{}")), tls=server_tls) as upstream:
            client = UpstreamClient(limit=4, ssl_context=ssl.create_default_context(cadata=pem))
            try:
                return await (await post(client, f"https://127.0.0.1:{upstream.port}")).read() == b"{}"
            except UpstreamConnectError as refused:
                assert isinstance(refused.os_error, ssl.SSLCertVerificationError)
                return False
            finally:
                await client.close()

    assert run(scenario()) is reached


def test_https_refuses_a_certificate_for_another_name(tmp_path, run):
    server_tls, pem = certificate(tmp_path, "someone-else.test")

    async def scenario() -> None:
        async with Upstream(answering(answer(b"{}")), tls=server_tls) as upstream:
            client = UpstreamClient(
                limit=4,
                resolver=CheckedResolver(fixed_answers("127.0.0.1")),
                ssl_context=ssl.create_default_context(cadata=pem),
            )
            with pytest.raises(UpstreamConnectError) as refused:
                await post(client, f"https://relay.test:{upstream.port}")
            assert isinstance(refused.value.os_error, ssl.SSLCertVerificationError)
            assert client.open_connections == 0
            await client.close()

    run(scenario())


def test_a_broken_tls_handshake_at_one_address_moves_on_to_the_next(tmp_path, run):
    server_tls, pem = certificate(tmp_path, "relay.test")

    async def not_tls(upstream, reader, writer, number) -> None:
        await reader.read(65536)  # the client's hello
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async def scenario() -> tuple[bytes, int]:
        async with (
            Upstream(answering(answer(b"{}")), tls=server_tls) as good,
            Upstream(not_tls, host="127.0.0.2", port=good.port) as broken,
        ):
            client = UpstreamClient(
                limit=4,
                resolver=CheckedResolver(fixed_answers("127.0.0.2", "127.0.0.1")),
                ssl_context=ssl.create_default_context(cadata=pem),
            )
            body = await (await post(client, f"https://relay.test:{good.port}")).read()
            await client.close()
            return body, broken.connections

    assert run(scenario()) == (b"{}", 1)


def test_a_certificate_refused_at_one_address_is_not_tried_at_the_next(tmp_path, run):
    (tmp_path / "wrong").mkdir()
    (tmp_path / "right").mkdir()
    wrong_tls, wrong_pem = certificate(tmp_path / "wrong", "someone-else.test")
    right_tls, right_pem = certificate(tmp_path / "right", "relay.test")

    async def scenario() -> tuple[type, int]:
        async with (
            Upstream(answering(answer(b"{}")), tls=right_tls) as right,
            Upstream(answering(answer(b"{}")), host="127.0.0.2", port=right.port, tls=wrong_tls),
        ):
            client = UpstreamClient(
                limit=4,
                resolver=CheckedResolver(fixed_answers("127.0.0.2", "127.0.0.1")),
                ssl_context=ssl.create_default_context(cadata=wrong_pem + right_pem),
            )
            with pytest.raises(UpstreamConnectError) as refused:
                await post(client, f"https://relay.test:{right.port}")
            await client.close()
            return type(refused.value.os_error), right.connections

    assert run(scenario()) == (ssl.SSLCertVerificationError, 0)


# --- the relay's use ---------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["stalls", "resets"])
def test_an_error_body_cut_short_by_the_deadline_or_a_drop_is_passed_on_as_far_as_it_came(ending, run):
    partial = b'{"error": {"message": "The server is overloaded.", "type": "overl'

    async def conversation(upstream, reader, writer, number) -> None:
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 1000\r\n\r\n" + partial)
        await writer.drain()
        await asyncio.sleep(0.05 if ending == "resets" else 60)
        reset(writer)

    async def never_disconnects() -> dict:
        await asyncio.Event().wait()
        return {}

    async def scenario() -> UpstreamFailure:
        async with Upstream(conversation) as upstream:
            upstream_client = UpstreamClient(limit=4)
            with pytest.raises(UpstreamFailure) as failed:
                await call_upstream(
                    upstream_client=upstream_client,
                    target=UpstreamTarget(url=upstream.url + "/v1/chat/completions", headers=HEADERS),
                    payload=BODY,
                    timeouts=Timeouts(connect=5, first_byte=0.3, idle=5, total=10),
                    client=ClientChannel(send=None, receive=never_disconnects),
                    started=time.monotonic(),
                )
            await upstream_client.close()
            return failed.value

    failure = run(scenario())
    assert (failure.kind, failure.status, failure.body) == ("status", 503, partial)
