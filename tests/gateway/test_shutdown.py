"""SIGTERM drains a gateway process (docs/gateway.md#shutdown): a real uvicorn process, real signals.

What a client can observe: uvicorn closes its listening socket within a tenth of a second of the
signal, so a new connection is refused; a request already on a connection when the signal came
(its body still arriving) gets 503 SHUTTING_DOWN; a stream in flight finishes if it can within
GATEWAY_DRAIN_SECONDS and is cut (and recorded as cut) if not; every recording is in the ledger
when the process has exited.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import openai
import pytest

from tests.gateway.conftest import ledger_rows, make_tenant, openai_sdk
from tests.gateway.test_shared_limits import GatewayProcess

pytestmark = pytest.mark.django_db(transaction=True)

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Streamer(threading.Thread):
    """One streamed chat with the OpenAI SDK: the words it received, and the error it ended with."""

    def __init__(self, url: str, secret: str) -> None:
        super().__init__(daemon=True)
        self.client = openai_sdk(url, secret)
        self.words: list[str] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            chunks = self.client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.words.append(chunk.choices[0].delta.content)
        except Exception as error:  # noqa: BLE001 - the test reads it
            self.error = error


def test_sigterm_finishes_streams_refuses_new_requests_and_records_everything(fake_upstream):
    short = make_tenant(fake_upstream, platform="openai", scenarios=("slow=300,words=6",))
    long = make_tenant(fake_upstream, platform="openai", scenarios=("slow=400,words=40",))
    gateway = GatewayProcess(GATEWAY_LIMITS="database", GATEWAY_DRAIN_SECONDS="4").wait()
    finishing, cut = Streamer(gateway.url, short.secret), Streamer(gateway.url, long.secret)
    finishing.start()
    cut.start()
    fake_upstream.wait_for(lambda rows: len(rows) == 2, timeout=20)
    # A request whose headers are in but whose body is not, when the signal comes.
    waiting = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    waiting.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {short.secret}\r\ncontent-length: {len(BODY)}\r\n\r\n".encode()
    )
    time.sleep(0.3)
    signalled = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=2)

    waiting.sendall(BODY)
    answer = b""
    while chunk := waiting.recv(65536):
        answer += chunk
    waiting.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"retry-after: 1" in head.lower()
    error = json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])  # a chunked body
    assert error["error"]["code"] == "SHUTTING_DOWN"

    finishing.join(timeout=30)
    cut.join(timeout=30)
    assert finishing.error is None and len(finishing.words) == 6
    assert isinstance(cut.error, openai.APIError) and 0 < len(cut.words) < 40
    gateway.process.wait(timeout=60)
    assert time.monotonic() - signalled < 20  # the 16-second stream did not hold the exit
    rows = ledger_rows(2, timeout=0)
    assert {row.api_key_id: row.outcome for row in rows} == {
        short.key.pk: "completed",
        long.key.pk: "upstream_cut",
    }
