"""The address a request really comes from, behind trusted reverse proxies or not.

X-Forwarded-For is believed only when the connection comes from a proxy listed in
settings.TRUSTED_PROXIES (IPs or CIDRs). The header is then read from the right: each trusted
proxy appends the address it received the request from, so the first hop, from the right, that
is not a trusted proxy is the client. Anything left of it was written by the client and may be
forged. Without trusted proxies the header is ignored and REMOTE_ADDR is the client.
"""

from __future__ import annotations

import ipaddress
from functools import cache, lru_cache

from django.conf import settings
from django.http import HttpRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@cache
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


@lru_cache(maxsize=4096)  # the gateway parses its peer's address on every request: few distinct ones
def _address(value: str) -> Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def is_trusted_proxy(address: Address | None) -> bool:
    if address is None:
        return False
    # An IPv4 peer seen through an IPv6 socket (::ffff:10.0.0.1) matches its IPv4 networks.
    plain = getattr(address, "ipv4_mapped", None) or address
    return any(plain in network for network in _networks(tuple(settings.TRUSTED_PROXIES)))


def client_ip(request: HttpRequest) -> str:
    """The client's address as a string (REMOTE_ADDR unless it is a trusted proxy)."""
    return client_ip_from(request.META.get("REMOTE_ADDR", ""), request.META.get("HTTP_X_FORWARDED_FOR", ""))


def client_ip_from(remote: str, forwarded_for: str) -> str:
    """The same rule over plain values: the peer's address and the X-Forwarded-For header (the
    gateway's ASGI app has no HttpRequest)."""
    nearest = _address(remote)
    if not is_trusted_proxy(nearest):
        return remote
    hops = [hop for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            # A trusted proxy wrote something that is not an address ("unknown"): the nearest
            # proxy is the best key there is, and nothing further left can be believed.
            break
        nearest = address
        if not is_trusted_proxy(address):
            break
    return str(nearest)
