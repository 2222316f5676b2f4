"""An account's base URL never points at link-local or cloud metadata addresses, and at private
networks only while UPSTREAM_ALLOW_PRIVATE_NETWORKS is on."""

from __future__ import annotations

import ipaddress

import pytest

from accounts.models import UpstreamAccount
from accounts.upstream_urls import address_problem, upstream_url_problem
from tests.accounts.test_upstream import account_data

ALWAYS_REFUSED = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://100.100.100.200/",
    "http://168.63.129.16/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./",
    "http://2852039166/",  # 169.254.169.254 as one number
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://user@169.254.169.254:80/",
    "http://0.0.0.0:8000/",
    "http://224.0.0.1/",
]
PRIVATE = [
    "http://127.0.0.1:8080/",
    "http://localhost:8000/v1",
    "http://api.localhost/",
    "http://[::1]/",
    "http://10.0.0.5/",
    "http://172.16.3.4/",
    "http://192.168.1.10:11434/",
    "http://100.64.0.1/",
    "http://[fd12:3456::1]/",
]
PUBLIC = [
    "https://api.anthropic.com",
    "https://relay.example.eu/v1",
    "http://8.8.8.8/",
    "https://[2606:4700::1111]/",
]


@pytest.mark.parametrize("url", ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_private", [True, False])
def test_link_local_metadata_and_unroutable_addresses_are_always_refused(url, allow_private):
    assert upstream_url_problem(url, allow_private=allow_private)


@pytest.mark.parametrize("url", PRIVATE)
def test_loopback_and_private_networks_need_the_setting(url):
    assert "set UPSTREAM_ALLOW_PRIVATE_NETWORKS=true" in upstream_url_problem(url, allow_private=False)
    assert upstream_url_problem(url, allow_private=True) == ""


@pytest.mark.parametrize("url", PUBLIC)
@pytest.mark.parametrize("allow_private", [True, False])
def test_public_endpoints_are_fine(url, allow_private):
    assert upstream_url_problem(url, allow_private=allow_private) == ""


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:secret@relay.example.eu/v1", "must not carry a user name or password"),
        ("https://relay.example.eu:0/", "port must be a number from 1 to 65535"),
        ("https://relay.example.eu:70000/", "port must be a number from 1 to 65535"),
        ("http://[fe80::1%25eth0]/", "IPv6 zone ids"),
    ],
)
def test_what_the_gateway_would_refuse_to_connect_to_is_refused_when_typed(url, message):
    assert message in upstream_url_problem(url, allow_private=True)


def test_the_gateway_can_check_the_address_a_name_resolved_to():
    assert address_problem(ipaddress.ip_address("169.254.169.254"), allow_private=True)
    assert address_problem(ipaddress.ip_address("10.1.2.3"), allow_private=False)
    assert address_problem(ipaddress.ip_address("10.1.2.3"), allow_private=True) == ""


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("allow_private", "url", "message"),
    [
        (True, "http://169.254.169.254/", "169.254.169.254 is a link-local or cloud metadata address"),
        (
            False,
            "http://127.0.0.1:9000/",
            "127.0.0.1 is a loopback address; set UPSTREAM_ALLOW_PRIVATE_NETWORKS=true",
        ),
        (False, "http://10.0.0.5/", "10.0.0.5 is a private network address"),
        (True, "https://me:pw@relay.example.eu/", "must not carry a user name or password"),
    ],
)
def test_the_account_form_refuses_such_a_base_url(staff_client, settings, allow_private, url, message):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = allow_private
    data = account_data(type="upstream", upstream__api_key="k", upstream__base_url=url)
    page = staff_client.post("/accounts/new", data).content.decode()
    assert message in page
    assert not UpstreamAccount.objects.exists()


@pytest.mark.django_db
def test_a_local_upstream_is_accepted_while_private_networks_are_allowed(staff_client, settings):
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = True
    data = account_data(type="upstream", upstream__api_key="k", upstream__base_url="http://127.0.0.1:9000")
    assert staff_client.post("/accounts/new", data).status_code == 302
    assert UpstreamAccount.objects.filter(name="anthropic-main").exists()
