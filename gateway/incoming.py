"""Reading a client's request: routes, the key, the body (docs/gateway.md#key-sources).

Plain functions over the ASGI scope and receive channel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson

from gateway.errors import ANTHROPIC, OPENAI, GatewayError
from gateway.usage import CHAT, COUNT_TOKENS, EMBEDDINGS, MESSAGES, RESPONSES


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    protocol: str  # whose wire format and error shape; "" = by the request's headers
    kind: str


ROUTES: dict[str, Route] = {
    "/v1/chat/completions": Route("POST", OPENAI, CHAT),
    "/v1/responses": Route("POST", OPENAI, RESPONSES),
    "/v1/embeddings": Route("POST", OPENAI, EMBEDDINGS),
    "/v1/messages": Route("POST", ANTHROPIC, MESSAGES),
    "/v1/messages/count_tokens": Route("POST", ANTHROPIC, COUNT_TOKENS),
    "/v1/models": Route("GET", "", "models"),
    "/v1/usage": Route("GET", "", "usage"),
}

# Query parameters that carry a key somewhere (Gemini's `?key=`, and the usual spellings).
KEY_PARAMETERS = frozenset(
    {"key", "api_key", "api-key", "apikey", "x-api-key", "x-goog-api-key", "access_token", "token", "auth"}
)


def header_map(scope: dict) -> dict[bytes, bytes]:
    """Header name (lower-case, as ASGI gives it) → value; the first of repeated headers wins."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)
    return headers


def protocol_for(route: Route | None, headers: dict[bytes, bytes]) -> str:
    """Which error shape to answer in: the route's, else Anthropic's when the client speaks it."""
    if route is not None and route.protocol:
        return route.protocol
    if b"anthropic-version" in headers or (b"x-api-key" in headers and b"authorization" not in headers):
        return ANTHROPIC
    return OPENAI


def refuse_key_in_query(query_string: bytes) -> None:
    """A key in the URL ends up in access logs and proxies' histories: refuse it (400)."""
    if not query_string:
        return
    for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name.lower() in KEY_PARAMETERS:
            raise GatewayError(
                "API_KEY_IN_QUERY",
                "Send the API key in the Authorization (Bearer), x-api-key or x-goog-api-key header, "
                "never in the URL.",
            )


def presented_key(headers: dict[bytes, bytes]) -> str:
    """The key from `Authorization: Bearer`, `x-api-key` or `x-goog-api-key`; "" when none."""
    authorization = headers.get(b"authorization")
    if authorization:
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for name in (b"x-api-key", b"x-goog-api-key"):
        value = headers.get(name)
        if value and value.strip():
            return value.decode("latin-1").strip()
    return ""


async def read_body(receive: Callable[[], Awaitable[dict]], headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
    declared = headers.get(b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise GatewayError("REQUEST_TOO_LARGE", f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("the client left while sending its request")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise GatewayError("REQUEST_TOO_LARGE", f"The request body is larger than {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_body(raw: bytes) -> dict:
    """The JSON object of a relayed request, with a `model` string."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise GatewayError("INVALID_REQUEST", f"The request body is not valid JSON: {error}.") from error
    if not isinstance(body, dict):
        raise GatewayError("INVALID_REQUEST", "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise GatewayError("INVALID_REQUEST", "The request body needs a `model` (a string).")
    return body
