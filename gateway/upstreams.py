"""Where and how to call an upstream account: URL and headers per platform and account type.

Pure functions over plain inputs (an account's platform, type, decrypted credentials and base
URL), so the relay can be exercised without the database:

| Platform / type | URL base | Authentication |
|---|---|---|
| OpenAI `apikey`, `upstream` | the account's base URL, else `GATEWAY_OPENAI_BASE_URL` | `Authorization: Bearer <api_key>` |
| OpenAI `oauth` | `GATEWAY_OPENAI_BASE_URL` | `Authorization: Bearer <access_token>` |
| Anthropic `apikey`, `upstream` | the account's base URL, else `GATEWAY_ANTHROPIC_BASE_URL` | `x-api-key: <api_key>` |
| Anthropic `oauth` / `setup-token` | `GATEWAY_ANTHROPIC_BASE_URL` | `Authorization: Bearer <token>` + the OAuth beta |
| Bedrock | not relayed yet: `UnsupportedAccount` | |

A base URL may be given with or without its trailing `/v1`; the request's own `/v1/...` path is
appended to it, so `https://relay.example.com/v1` and `https://relay.example.com` are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from django.conf import settings

from gateway.addresses import RefusedAddress, literal_host_problem
from gateway.usage import CHAT

ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_OAUTH_BETA = "oauth-2025-04-20"

# Client headers passed on to the upstream (lower-case): protocol versions and betas only. The
# client's own credentials, cookies and hop-by-hop headers never leave the gateway.
FORWARDED_HEADERS = {
    "anthropic": (b"anthropic-version", b"anthropic-beta"),
    "openai": (b"openai-beta",),
}


class UnsupportedAccount(Exception):
    """The account's type cannot be relayed by this gateway yet (Bedrock)."""


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    url: str
    headers: tuple[tuple[str, str], ...]


def base_url(*, platform: str, account_type: str, configured: str) -> str:
    if account_type in ("apikey", "upstream") and configured:
        root = configured
    elif platform == "anthropic":
        root = settings.GATEWAY_ANTHROPIC_BASE_URL
    else:
        root = settings.GATEWAY_OPENAI_BASE_URL
    root = root.rstrip("/")
    return root.removesuffix("/v1")


def upstream_target(
    *,
    platform: str,
    account_type: str,
    credentials: Mapping[str, str],
    configured_base_url: str,
    path: str,
    client_headers: Mapping[bytes, bytes],
    request_id: str,
    stream: bool,
) -> UpstreamTarget:
    """The URL and headers of one upstream call for `path` (e.g. "/v1/messages")."""
    if account_type == "bedrock":
        raise UnsupportedAccount("Bedrock accounts are not relayed by the gateway yet.")
    root = base_url(platform=platform, account_type=account_type, configured=configured_base_url)
    if problem := literal_host_problem(root):
        raise RefusedAddress(problem)
    url = root + path
    headers: list[tuple[str, str]] = [
        ("content-type", "application/json"),
        ("accept", "text/event-stream" if stream else "application/json"),
        ("x-tollgate-request-id", request_id),
    ]
    for name in FORWARDED_HEADERS.get(platform, ()):
        value = client_headers.get(name)
        if value and name != b"anthropic-beta":
            headers.append((name.decode(), value.decode("latin-1")))
    if platform == "anthropic":
        if b"anthropic-version" not in client_headers:
            headers.append(("anthropic-version", ANTHROPIC_VERSION))
        betas = [
            beta.strip()
            for beta in client_headers.get(b"anthropic-beta", b"").decode("latin-1").split(",")
            if beta.strip()
        ]
        if account_type in ("oauth", "setup-token"):
            token = credentials.get("access_token") or credentials.get("setup_token") or ""
            headers.append(("authorization", f"Bearer {token}"))
            if ANTHROPIC_OAUTH_BETA not in betas:
                betas.append(ANTHROPIC_OAUTH_BETA)
        else:
            headers.append(("x-api-key", credentials.get("api_key", "")))
        if betas:
            headers.append(("anthropic-beta", ",".join(betas)))
    else:
        token = credentials.get("api_key") or credentials.get("access_token") or ""
        headers.append(("authorization", f"Bearer {token}"))
    return UpstreamTarget(url=url, headers=tuple(headers))


def upstream_payload(
    raw: bytes, body: dict, *, kind: str, stream: bool, upstream_model: str, requested_model: str
) -> tuple[bytes, bool]:
    """The bytes to send upstream, and whether the gateway added the chat usage chunk to strip.

    The client's bytes go untouched unless the model name changes or a chat stream must be asked
    for its usage (`stream_options.include_usage`), which the client then does not see."""
    changed = dict(body) if upstream_model != requested_model else None
    if changed is not None:
        changed["model"] = upstream_model
    strip = False
    if kind == CHAT and stream:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage")):
            changed = changed if changed is not None else dict(body)
            changed["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            strip = True
    return (raw if changed is None else orjson.dumps(changed)), strip
