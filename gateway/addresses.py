"""The gateway's own check of where it connects (docs/gateway.md#upstream-addresses).

The console refuses a base URL by the host as typed (accounts.upstream_urls). A host *name* can
still resolve to a metadata, link-local or private address, and a setting can change after the URL
was saved, so the gateway checks again at connect time:

- `CheckedResolver` filters every address a name resolves to through the same rule
  (`address_problem`) and fails the connection when none is left, so a name pointing at
  169.254.169.254 is never connected to;
- `literal_host_problem` covers what a resolver never sees: aiohttp connects to an IP literal
  without resolving it, so a base URL spelling an address is checked before the call.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from django.conf import settings

from accounts.upstream_urls import address_problem, upstream_url_problem


class RefusedAddress(Exception):
    """The upstream's address is one Tollgate never sends requests to."""


class CheckedResolver(AbstractResolver):
    """A resolver that drops refused addresses; `inner` does the resolving."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        allow_private = settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS
        allowed, problems = [], []
        for result in await self._inner.resolve(host, port, family):
            problem = address_problem(ipaddress.ip_address(result["host"]), allow_private=allow_private)
            if problem:
                problems.append(problem)
            else:
                allowed.append(result)
        if not allowed:
            # aiohttp turns an OSError from the resolver into a connection error for this account.
            raise OSError(
                f"{host} resolves only to refused addresses ({problems[0] if problems else 'none'})"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def literal_host_problem(url: str) -> str:
    """Why the gateway must not call `url` as its host is written, or "" (cached per URL)."""
    return _literal_host_problem(url, settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS)


@lru_cache(maxsize=4096)
def _literal_host_problem(url: str, allow_private: bool) -> str:
    return upstream_url_problem(url, allow_private=allow_private)
