"""Where Tollgate may send requests: the check on an upstream account's base URL.

The gateway relays requests to an account's base URL with the account's credentials, so a base
URL pointing inside the network would make Tollgate a proxy into it (SSRF). Link-local addresses
and the cloud metadata services are always refused: they hand out the host's own credentials.
Loopback and private networks are refused unless settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS is on
(the embedded default turns it on, for a local fake upstream or a relay on the LAN).

The console checks the address as typed. A host name is checked by name here and must be
checked again, by the address it resolves to, when the gateway connects (`address_problem`).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services outside the link-local range, and their well-known names.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle (also link-local)
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
    )
)
METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SETTING = "UPSTREAM_ALLOW_PRIVATE_NETWORKS"


def _literal_address(host: str) -> IPAddress | None:
    """The address a host spells out, in any form a resolver accepts ("2852039166", "0xa9.0.0.1")."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    """An IPv4 address carried inside IPv6 (::ffff:a.b.c.d, 64:ff9b::a.b.c.d) is that address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_problem(address: IPAddress, *, allow_private: bool) -> str:
    """Why requests must not go to `address`, or "" when they may."""
    address = _embedded_ipv4(address)
    if address in METADATA_ADDRESSES or address.is_link_local:
        return f"{address} is a link-local or cloud metadata address; Tollgate never sends requests there."
    if address.is_unspecified or address.is_multicast or (address.is_reserved and not address.is_loopback):
        return f"{address} is not an address a server can be reached at."
    if not address.is_global and not allow_private:
        kind = "a loopback" if address.is_loopback else "a private network"
        return f"{address} is {kind} address; set {SETTING}=true to allow upstreams on private networks."
    return ""


def upstream_url_problem(url: str, *, allow_private: bool) -> str:
    """Why a base URL must not be used, or "" when it may (by its host as written). What the
    gateway's client would refuse at call time (gateway.upstream_http) is refused here first."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return (
            "A base URL must not carry a user name or password (user@host): the gateway never "
            "sends them. Put the credential in the API key field."
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "The URL's port must be a number from 1 to 65535."
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "The URL names no host."
    if ":" in host and "%" in host:
        return "IPv6 zone ids (…%eth0) are not supported: zones go with link-local addresses."
    if host in METADATA_NAMES:
        return f"{host} is a cloud metadata service; Tollgate never sends requests there."
    address = _literal_address(host)
    if address is not None:
        return address_problem(address, allow_private=allow_private)
    if (host == "localhost" or host.endswith(".localhost")) and not allow_private:
        return f"{host} is a loopback address; set {SETTING}=true to allow upstreams on private networks."
    return ""
