"""The gateway's own check of where it connects (docs/gateway.md#upstream-addresses).

The console refuses a base URL by the host as typed (accounts.upstream_urls). A host *name* can
still resolve to a metadata, link-local or private address, and a setting can change after the URL
was saved, so the gateway checks again at connect time:

- `CheckedResolver` resolves a host for the upstream client (gateway.upstream_http) and drops
  every address the same rule (`address_problem`) refuses, failing the connection when none is
  left, so a name pointing at 169.254.169.254 is never connected to;
- `literal_host_problem` refuses a base URL that spells a refused address before the call, in the
  console's own words (the resolver would refuse it too, only later and more tersely).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from functools import lru_cache

from django.conf import settings

from accounts.upstream_urls import address_problem, upstream_url_problem

# What getaddrinfo answers: (family, type, proto, canonical name, socket address).
AddressInfo = tuple[int, int, int, str, tuple]
Resolve = Callable[[str, int], Awaitable[list[AddressInfo]]]


class RefusedAddress(Exception):
    """The upstream's address is one Tollgate never sends requests to."""


async def system_resolve(host: str, port: int) -> list[AddressInfo]:
    """The system resolver's addresses for `host`; an IP literal without a trip to its thread."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if address.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


class CheckedResolver:
    """Resolves with `inner` (the system's resolver unless given) and drops refused addresses."""

    def __init__(self, inner: Resolve | None = None) -> None:
        self._inner = inner or system_resolve

    async def resolve(self, host: str, port: int) -> list[AddressInfo]:
        allow_private = settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS
        allowed: list[AddressInfo] = []
        problems: list[str] = []
        seen: set[tuple] = set()
        for info in await self._inner(host, port):
            sockaddr = info[4]
            if sockaddr in seen:
                continue  # getaddrinfo repeats an address once per protocol it knows
            seen.add(sockaddr)
            problem = address_problem(ipaddress.ip_address(sockaddr[0]), allow_private=allow_private)
            if problem:
                problems.append(problem)
            else:
                allowed.append(info)
        if not allowed:
            # The upstream client fails the connection with this (UpstreamConnectError).
            raise OSError(
                f"{host} resolves only to refused addresses ({problems[0] if problems else 'none'})"
            )
        return allowed


def literal_host_problem(url: str) -> str:
    """Why the gateway must not call `url` as its host is written, or "" (cached per URL)."""
    return _literal_host_problem(url, settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS)


@lru_cache(maxsize=4096)
def _literal_host_problem(url: str, allow_private: bool) -> str:
    return upstream_url_problem(url, allow_private=allow_private)
