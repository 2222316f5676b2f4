"""Gateway test fixtures: the fake upstream LLM server, running for real in its own process."""

from __future__ import annotations

import pytest

from tests.fake_upstream import FakeUpstreamServer, running_fake_upstream


@pytest.fixture(scope="session")
def fake_upstream_server() -> FakeUpstreamServer:
    with running_fake_upstream() as server:
        yield server


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstreamServer) -> FakeUpstreamServer:
    """The session's fake upstream, with an empty served-requests log and cold prompt caches."""
    fake_upstream_server.reset()
    return fake_upstream_server
