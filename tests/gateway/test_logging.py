"""Logs (README "Logging"): JSON lines with LOG_FORMAT=json, the request id on every line about a
request, and no secret in a whole DEBUG-level gateway run, in either format."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from django.conf import settings as django_settings

from accounts.models import GroupAccount
from accounts.services.keys import api_key_create
from accounts.services.upstream import upstream_account_create
from common.logs import JsonFormatter, PlainFormatter, RequestIdFilter, request_id
from gateway.logs import hide_credentials
from tests.factories import GroupFactory, UserFactory
from tests.fake_upstream import ROOT
from tests.gateway.conftest import anthropic_sdk, openai_sdk

QUESTION = [{"role": "user", "content": "Say hello to the toll gate."}]
METRICS_TOKEN = "metrics-" + secrets.token_hex(16)


def record(message: str, *args) -> logging.LogRecord:
    made = logging.LogRecord("gateway", logging.WARNING, __file__, 1, message, args, None)
    RequestIdFilter().filter(made)
    return made


def test_a_line_written_during_a_request_carries_its_id_in_both_formats():
    token = request_id.set("req_0123")
    try:
        inside = record("account %s failed", 7)
    finally:
        request_id.reset(token)
    outside = record("startup")
    assert json.loads(JsonFormatter().format(inside)) | {"time": ""} == {
        "time": "",
        "level": "WARNING",
        "logger": "gateway",
        "message": "account 7 failed",
        "request_id": "req_0123",
    }
    assert "request_id" not in json.loads(JsonFormatter().format(outside))
    assert PlainFormatter().format(inside).endswith("WARNING gateway account 7 failed request_id=req_0123")
    assert PlainFormatter().format(outside).endswith("WARNING gateway startup")


def test_an_upstream_message_quoting_a_credential_is_logged_with_it_hidden():
    credentials = {"api_key": "sk-upstream-abcdef123", "base_url": "http://127.0.0.1:9100"}
    said = "Incorrect API key provided: sk-upstream-abcdef123 at http://127.0.0.1:9100."
    assert (
        hide_credentials(said, credentials)
        == "Incorrect API key provided: [hidden] at http://127.0.0.1:9100."
    )


class Gateway:
    """One uvicorn process (production's command, access log on) logging at DEBUG into a file."""

    def __init__(self, log_format: str, log_file: Path) -> None:
        database = django_settings.DATABASES["default"]
        with socket_port() as port:
            self.url = f"http://127.0.0.1:{port}"
        self.log = log_file.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--port",
                self.url.rsplit(":", 1)[1],
                "--lifespan",
                "on",
                "--log-level",
                "debug",
                "--no-proxy-headers",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": (
                    f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
                ),
                "LOG_FORMAT": log_format,
                "LOG_LEVEL": "DEBUG",
                "METRICS_TOKEN": METRICS_TOKEN,
                "GATEWAY_DB_THREADS": "2",
                "PYTHONWARNINGS": "ignore",
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/v1/models", timeout=1)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline and self.process.poll() is None, (
                    "the gateway did not start"
                )
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class socket_port:
    def __enter__(self) -> int:
        import socket

        self.probe = socket.socket()
        self.probe.bind(("127.0.0.1", 0))
        return self.probe.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.probe.close()


def account(fake_upstream, group, *, platform: str, credential: str, scenario: str = "", priority: int = 10):
    created = upstream_account_create(
        fields={"name": f"{platform}-{credential[-6:]}", "platform": platform, "type": "apikey"},
        credentials={"api_key": credential, "base_url": fake_upstream.base_url(scenario)},
        actor=None,
    )
    GroupAccount.objects.create(group=group, account=created, priority=priority)
    return created


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("log_format", ["json", "plain"])
def test_a_debug_log_of_a_whole_gateway_run_holds_no_key_and_no_credential(
    fake_upstream, tmp_path, log_format
):
    # A real gateway process: the server's own loggers, the access log, every DEBUG line.
    user = UserFactory()
    openai_group = GroupFactory(platform="openai")
    anthropic_group = GroupFactory(platform="anthropic")
    failing_group = GroupFactory(platform="openai")
    upstream = {
        "openai": "sk-upstream-openai-" + secrets.token_hex(12),
        "anthropic": "sk-upstream-anthropic-" + secrets.token_hex(12),
        "failing": "sk-upstream-failing-" + secrets.token_hex(12),
        "revoked": "revoked-upstream-" + secrets.token_hex(12),  # the fake upstream quotes it back
    }
    account(fake_upstream, openai_group, platform="openai", credential=upstream["openai"])
    account(fake_upstream, anthropic_group, platform="anthropic", credential=upstream["anthropic"])
    account(
        fake_upstream, failing_group, platform="openai", credential=upstream["failing"], scenario="status=500"
    )
    account(fake_upstream, failing_group, platform="openai", credential=upstream["revoked"], priority=20)
    keys = {
        name: api_key_create(user=user, group=group, name=name)[1]
        for name, group in [
            ("bearer", openai_group),
            ("x-api-key", anthropic_group),
            ("x-goog-api-key", openai_group),
            ("in-query", openai_group),
            ("failing", failing_group),
        ]
    }
    unknown = "sk-unknown-" + secrets.token_hex(12)
    log_file = tmp_path / f"gateway-{log_format}.log"
    gateway = Gateway(log_format, log_file)
    request_ids = []
    try:
        # Authorization: Bearer (openai SDK), x-api-key (anthropic SDK, streaming), x-goog-api-key.
        chat = openai_sdk(gateway.url, keys["bearer"]).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=QUESTION
        )
        request_ids.append(chat.headers["x-request-id"])
        with anthropic_sdk(gateway.url, keys["x-api-key"]).messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=QUESTION
        ) as stream:
            stream.get_final_message()
        goog = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": QUESTION},
            headers={"x-goog-api-key": keys["x-goog-api-key"]},
            timeout=30,
        )
        assert goog.status_code == 200
        request_ids.append(goog.headers["x-request-id"])
        # A key in the URL is refused and never logged, whatever the parameter's name.
        for path in (
            f"/v1/chat/completions?key={keys['in-query']}",
            f"/v1/models?api_key={keys['in-query']}",
        ):
            refused = httpx.request(
                "POST" if "chat" in path else "GET", gateway.url + path, json={}, timeout=30
            )
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "API_KEY_IN_QUERY"
        # Every account of this group fails: a 500, then a 401 whose message quotes the credential.
        failing = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": QUESTION},
            headers={"authorization": f"Bearer {keys['failing']}"},
            timeout=30,
        )
        assert failing.status_code == 401 and failing.json()["error"]["code"] == "NO_ACCOUNT_AVAILABLE"
        request_ids.append(failing.headers["x-request-id"])
        served = [entry["key_fingerprint"] for entry in fake_upstream.requests()]
        assert len(served) == 5, "the failing group's two accounts were both called"
        assert (
            httpx.get(
                gateway.url + "/v1/models", headers={"authorization": f"Bearer {unknown}"}, timeout=30
            ).status_code
            == 401
        )
        scrape = httpx.get(
            gateway.url + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
        )
        assert scrape.status_code == 200
        time.sleep(0.5)  # the recordings after the last responses
    finally:
        gateway.stop()

    log = log_file.read_text()
    for name, secret in [*keys.items(), ("unknown", unknown), *upstream.items(), ("metrics", METRICS_TOKEN)]:
        assert secret not in log, f"the {name} secret is in the log"
    # The log is the whole run at DEBUG: the failures and the refused query string are in it.
    assert "DEBUG" in log and "Incorrect API key provided: [hidden]" in log
    assert "?key=[hidden]" in log and "?api_key=[hidden]" in log
    for request in request_ids:
        assert request in log, f"nothing was logged about {request}"

    if log_format == "json":
        lines = [json.loads(line) for line in log.splitlines() if line.strip()]
        about = [line for line in lines if line["logger"] in ("gateway", "uvicorn.access")]
        assert about, "no gateway or access line was logged"
        # Every gateway line about a request and every access line of /v1/ carries the request id.
        for line in about:
            if line["logger"] == "uvicorn.access" and "/metrics" in line["message"]:
                continue
            assert line.get("request_id", "").startswith("req_"), line
        assert {line.get("request_id") for line in about} >= set(request_ids)
    else:
        assert not log.lstrip().startswith("{")
        assert f"request_id={request_ids[-1]}" in log
