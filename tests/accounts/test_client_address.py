"""The client address behind trusted reverse proxies (TRUSTED_PROXIES)."""

from __future__ import annotations

import pytest

from accounts.client_address import client_ip


def request_from(rf, remote: str, forwarded: str | None = None):
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    return rf.get("/login/", REMOTE_ADDR=remote, **headers)


def test_without_trusted_proxies_the_forwarded_header_is_ignored(rf, settings):
    settings.TRUSTED_PROXIES = []
    assert client_ip(request_from(rf, "10.0.0.5", "203.0.113.7")) == "10.0.0.5"


def test_a_trusted_proxy_passes_on_the_address_it_received_the_request_from(rf, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.5"]
    assert client_ip(request_from(rf, "10.0.0.5", "203.0.113.7")) == "203.0.113.7"


def test_hops_a_client_wrote_itself_are_not_believed(rf, settings):
    # The client sent "X-Forwarded-For: 1.2.3.4"; the proxy appended the real address.
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(request_from(rf, "10.0.0.5", "1.2.3.4, 203.0.113.7")) == "203.0.113.7"


def test_trusted_hops_are_skipped_from_the_right(rf, settings):
    # Load balancer 10.1.0.1 → nginx 10.0.0.5 → app; both trusted.
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    request = request_from(rf, "10.0.0.5", "1.2.3.4, 198.51.100.20, 10.1.0.1")
    assert client_ip(request) == "198.51.100.20"


def test_an_untrusted_peer_cannot_forge_the_header(rf, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(request_from(rf, "198.51.100.20", "10.0.0.9")) == "198.51.100.20"


def test_a_trusted_proxy_without_a_header_is_the_client(rf, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.5"]
    assert client_ip(request_from(rf, "10.0.0.5")) == "10.0.0.5"


def test_a_hop_that_is_not_an_address_stops_the_walk_at_the_nearest_proxy(rf, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(request_from(rf, "10.0.0.5", "203.0.113.7, unknown, 10.0.0.7")) == "10.0.0.7"


def test_ipv6_proxies_and_clients(rf, settings):
    settings.TRUSTED_PROXIES = ["fd00::/8", "127.0.0.1"]
    assert client_ip(request_from(rf, "fd00::1", "2001:db8::7")) == "2001:db8::7"
    # An IPv4 proxy seen through an IPv6 socket.
    assert client_ip(request_from(rf, "::ffff:127.0.0.1", "203.0.113.7")) == "203.0.113.7"


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.0/33"])
def test_settings_refuse_a_trusted_proxy_that_is_not_an_address(value, tmp_path):
    from tests.test_settings import manage

    result = manage("check", env={"TRUSTED_PROXIES": f"10.0.0.1,{value}", "TOLLGATE_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "TRUSTED_PROXIES" in result.stderr and value in result.stderr
