"""Gateway processes for tests that need more than the in-process server: real uvicorn
subprocesses serving config.asgi on the test database, which a test can start, split requests
across, and kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx2 as httpx
from django.conf import settings

from tests.fake_upstream import ROOT

# Redis index 1 is this suite's for multi-process gateway tests (snapshot invalidation across them).
REDIS_URL = "redis://127.0.0.1:6379/1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GatewayProcess:
    """`uvicorn config.asgi:application` on the test database, with `redis_url` ("" = no Redis)
    and the given settings."""

    def __init__(self, *, redis_url: str = REDIS_URL, **env: str) -> None:
        database = settings.DATABASES["default"]
        environment = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
        if redis_url:
            environment["REDIS_URL"] = redis_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--port",
                str(self.port),
                "--lifespan",
                "on",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env={
                **environment,
                "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
                **env,
            },
        )

    def wait(self, timeout: float = 60) -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(self.url + "/v1/models", timeout=1)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no lifespan shutdown, no drain, no recording flushed."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def started(*processes: GatewayProcess) -> list[GatewayProcess]:
    """Wait for processes started together (their start-ups overlap)."""
    return [process.wait() for process in processes]
