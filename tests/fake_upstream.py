"""The fake upstream (gateway/fake_upstream.py) in its own process, for tests and benchmarks.

    with running_fake_upstream() as upstream:
        client = OpenAI(api_key="sk-test", base_url=upstream.openai_base_url("slow=20"))
        ...
        upstream.requests()  # what it served, oldest first

Tests get it as the `fake_upstream` fixture (this module is a pytest plugin, see tests/conftest.py):
one server per test session, its log and prompt caches emptied before each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.fake_upstream import key_fingerprint

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["FakeUpstreamServer", "key_fingerprint", "running_fake_upstream"]


class FakeUpstreamServer:
    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process = process
        self.url = url

    def base_url(self, scenario: str = "") -> str:
        """The server's root, or the root that applies `scenario` to every request (an account's base URL)."""
        return f"{self.url}/scenario/{scenario}" if scenario else self.url

    def openai_base_url(self, scenario: str = "") -> str:
        return self.base_url(scenario) + "/v1"

    def anthropic_base_url(self, scenario: str = "") -> str:
        return self.base_url(scenario)

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """The served requests, oldest first (those with seq > since)."""
        return self._call("GET", f"/_fake/requests?since={since}")["data"]

    def last_request(self) -> dict[str, Any]:
        served = self.requests()
        assert served, "the fake upstream has served nothing yet"
        return served[-1]

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/_fake/health")

    def reset(self) -> None:
        """Empty the served-requests log and forget every prompt cache."""
        self._call("DELETE", "/_fake/requests")
        self._call("DELETE", "/_fake/cache")

    def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> list[dict]:
        """Poll the log until condition(requests) holds; the requests then."""
        deadline = time.monotonic() + timeout
        while True:
            served = self.requests()
            if condition(served):
                return served
            if time.monotonic() > deadline:
                raise AssertionError(f"fake upstream log never matched; last: {served[-3:]}")
            time.sleep(0.02)

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own loopback URL
            return json.load(response)


@contextmanager
def running_fake_upstream(
    *, scenario: str = "", env: dict[str, str] | None = None
) -> Iterator[FakeUpstreamServer]:
    """Start `python -m gateway.fake_upstream` on a free loopback port; stop it on exit."""
    command = [sys.executable, "-m", "gateway.fake_upstream", "--host", "127.0.0.1", "--port", "0"]
    if scenario:
        command += ["--scenario", scenario]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        if "http://" not in line:
            process.wait(timeout=5)
            raise RuntimeError(f"the fake upstream did not start (exit code {process.returncode}): {line!r}")
        server = FakeUpstreamServer(process, line.split()[-1])
        _wait_until_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def _wait_until_healthy(server: FakeUpstreamServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.health()
            return
        except OSError:
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstreamServer]:
    with running_fake_upstream() as server:
        yield server


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstreamServer) -> FakeUpstreamServer:
    """The session's fake upstream, with an empty served-requests log and cold prompt caches."""
    fake_upstream_server.reset()
    return fake_upstream_server
