"""The gateway checks where it connects, not only the URL as typed (docs/gateway.md#upstream-addresses)."""

from __future__ import annotations

import socket

import openai
import pytest

from accounts.crypto import encrypt_credentials
from accounts.models import UpstreamAccount
from accounts.snapshots import snapshots_changed
from gateway.addresses import AddressInfo, CheckedResolver, Resolve
from tests import event_loop
from tests.gateway.conftest import make_tenant, openai_sdk

QUESTION = [{"role": "user", "content": "Where are you?"}]


def fixed_answers(*addresses: str) -> Resolve:
    """A stand-in for DNS (the machines have none to spare): every name resolves to `addresses`."""

    async def resolve(host: str, port: int) -> list[AddressInfo]:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
            for address in addresses
        ]

    return resolve


def resolved(resolver: CheckedResolver, host: str) -> list[str]:
    return [info[4][0] for info in event_loop.run(resolver.resolve(host, 443))]


def test_a_name_that_resolves_to_the_metadata_service_is_never_connected_to(settings):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = True
    with pytest.raises(OSError, match="169.254.169.254 is a link-local or cloud metadata address"):
        resolved(CheckedResolver(fixed_answers("169.254.169.254")), "innocent.example.com")


def test_refused_addresses_are_dropped_and_the_allowed_ones_kept(settings):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = False
    resolver = CheckedResolver(fixed_answers("10.0.0.7", "169.254.10.1", "93.184.216.34", "::ffff:127.0.0.1"))
    assert resolved(resolver, "relay.example.com") == ["93.184.216.34"]


def test_an_address_the_resolver_repeats_is_tried_once(settings):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = False
    resolver = CheckedResolver(fixed_answers("93.184.216.34", "2606:2800:220:1::", "93.184.216.34"))
    assert resolved(resolver, "relay.example.com") == ["93.184.216.34", "2606:2800:220:1::"]


def test_private_addresses_pass_only_while_the_setting_allows_them(settings):
    resolver = CheckedResolver(fixed_answers("192.168.1.20"))
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = True
    assert resolved(resolver, "relay.lan") == ["192.168.1.20"]
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = False
    with pytest.raises(OSError, match="private network"):
        resolved(resolver, "relay.lan")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"], ids=["by name", "by address"])
def test_the_gateway_refuses_a_loopback_upstream_once_private_networks_are_turned_off(
    fake_upstream, gateway_url, settings, host
):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = True
    tenant = make_tenant(fake_upstream, platform="openai")
    account = tenant.accounts[0]
    served_before = len(fake_upstream.requests())
    client = openai_sdk(gateway_url, tenant.secret)
    assert client.chat.completions.create(model="gpt-4o", messages=QUESTION).choices

    port = fake_upstream.url.rsplit(":", 1)[1]
    # Saved while the setting allowed it; the operator then turns private networks off.
    credentials = {"api_key": "sk-upstream-openai", "base_url": f"http://{host}:{port}"}
    UpstreamAccount.objects.filter(pk=account.pk).update(
        credentials_encrypted=encrypt_credentials(credentials)
    )
    snapshots_changed(account_ids=[account.pk])
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = False
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert refused.value.status_code == 502
    assert "loopback" in refused.value.message
    assert len(fake_upstream.requests()) == served_before + 1, "nothing was sent to the refused address"
