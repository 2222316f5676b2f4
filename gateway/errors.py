"""The gateway's refusals and failures, in each protocol's own error shape (docs/gateway.md#error-shape).

Every answer the gateway makes itself carries a code from `CODES`, which fixes its HTTP status and
the error `type` each protocol's SDKs expect. OpenAI paths get `{"error": {"message", "type",
"code"}}`, Anthropic paths `{"type": "error", "error": {"type", "message"}}` (with the code in
`error.code` too, which Anthropic's SDK ignores and a person reading the body can use). Every 429
carries `Retry-After`. README.md's "Gateway error codes" table is built from the same data
(tests/gateway/test_errors.py keeps the two in step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

OPENAI = "openai"
ANTHROPIC = "anthropic"


@dataclass(frozen=True, slots=True)
class Code:
    status: int
    openai_type: str
    anthropic_type: str
    meaning: str


# The 15 checks, in order (docs/gateway.md#checks), then what the gateway adds.
CODES: dict[str, Code] = {
    "API_KEY_REQUIRED": Code(401, "invalid_request_error", "authentication_error", "no key in the request"),
    "INVALID_API_KEY": Code(401, "invalid_request_error", "authentication_error", "no key with this secret"),
    "API_KEY_DISABLED": Code(401, "invalid_request_error", "authentication_error", "the key is disabled"),
    "ACCESS_DENIED": Code(
        403,
        "permission_error",
        "permission_error",
        "the client IP is outside the key's allow list or in its deny list",
    ),
    "USER_INACTIVE": Code(401, "invalid_request_error", "authentication_error", "the key's user is disabled"),
    "GROUP_DISABLED": Code(
        403, "permission_error", "permission_error", "the key has no group, or its group is inactive"
    ),
    "GROUP_NOT_ALLOWED": Code(
        403, "permission_error", "permission_error", "an exclusive group the user is not allowed to use"
    ),
    "SUBSCRIPTION_NOT_FOUND": Code(
        403,
        "permission_error",
        "permission_error",
        "a subscription group without an active subscription in its term",
    ),
    "API_KEY_EXPIRED": Code(403, "permission_error", "permission_error", "the key is past its expiry"),
    "API_KEY_QUOTA_EXHAUSTED": Code(
        429, "insufficient_quota", "rate_limit_error", "the key's quota is used up"
    ),
    "USAGE_LIMIT_EXCEEDED": Code(
        429, "rate_limit_error", "rate_limit_error", "a subscription window is at or over its limit"
    ),
    "INSUFFICIENT_BALANCE": Code(
        403, "insufficient_quota", "permission_error", "a standard group and the user's balance is 0 or less"
    ),
    "rate_limit_exceeded": Code(
        429, "rate_limit_error", "rate_limit_error", "a key 5h / 1d / 7d spend window is at or over its limit"
    ),
    "USER_RPM_EXCEEDED": Code(
        429, "rate_limit_error", "rate_limit_error", "the user's (or group's) requests-per-minute limit"
    ),
    "USER_CONCURRENCY_EXCEEDED": Code(
        429, "rate_limit_error", "rate_limit_error", "the user's limit of requests in flight"
    ),
    "API_KEY_CONCURRENCY_EXCEEDED": Code(
        429, "rate_limit_error", "rate_limit_error", "the key's limit of requests in flight"
    ),
    "MODEL_NOT_ALLOWED": Code(
        404,
        "invalid_request_error",
        "not_found_error",
        "restrict_models: the channel has no price for the model",
    ),
    # Request problems the gateway finds before the checks.
    "API_KEY_IN_QUERY": Code(
        400,
        "invalid_request_error",
        "invalid_request_error",
        "a key was sent in the query string (refused, never logged)",
    ),
    "NOT_FOUND": Code(404, "invalid_request_error", "not_found_error", "no such endpoint"),
    "METHOD_NOT_ALLOWED": Code(405, "invalid_request_error", "invalid_request_error", "wrong HTTP method"),
    "INVALID_REQUEST": Code(
        400,
        "invalid_request_error",
        "invalid_request_error",
        "the body is not a JSON object, or lacks `model`",
    ),
    "REQUEST_TOO_LARGE": Code(
        413, "invalid_request_error", "request_too_large", "the body is larger than GATEWAY_MAX_BODY_BYTES"
    ),
    "ENDPOINT_NOT_SUPPORTED": Code(
        400,
        "invalid_request_error",
        "invalid_request_error",
        "the key's group is on another platform than this endpoint's protocol",
    ),
    # Upstream outcomes.
    "NO_ACCOUNT_AVAILABLE": Code(
        503,
        "server_error",
        "overloaded_error",
        "no account can serve the request now, or every candidate failed (status: the last upstream "
        "error's, 502 if unreachable, 504 on timeout)",
    ),
    "ACCOUNT_TYPE_NOT_SUPPORTED": Code(
        501,
        "server_error",
        "api_error",
        "the group's only accounts for the model are of a type the gateway cannot relay yet (Bedrock)",
    ),
    "UPSTREAM_STREAM_ERROR": Code(
        502,
        "server_error",
        "api_error",
        "the upstream failed after the answer had started (sent as a stream event)",
    ),
    "INTERNAL_ERROR": Code(500, "server_error", "api_error", "a fault in the gateway itself"),
    "SHUTTING_DOWN": Code(
        503,
        "server_error",
        "overloaded_error",
        "this gateway process is draining after SIGTERM: retry (another process will answer)",
    ),
}


@dataclass(slots=True)
class GatewayError(Exception):
    """An answer the gateway makes itself. `status` overrides the code's own (upstream errors)."""

    code: str
    message: str
    retry_after: float | None = None
    status: int | None = None

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown gateway error code {self.code!r}")

    @property
    def http_status(self) -> int:
        return self.status or CODES[self.code].status

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None or self.http_status == 429:
            headers.append((b"retry-after", str(retry_after_seconds(self.retry_after)).encode()))
        return headers

    def body(self, protocol: str) -> bytes:
        return error_body(protocol, self.code, self.message, status=self.http_status)


def retry_after_seconds(seconds: float | None) -> int:
    """Whole seconds, rounded up and at least 1: a client told 0 would retry at once."""
    return max(1, math.ceil(seconds or 0))


def error_body(protocol: str, code: str, message: str, *, status: int | None = None) -> bytes:
    spec = CODES[code]
    if protocol == ANTHROPIC:
        kind = spec.anthropic_type
        if status is not None and status != spec.status:
            kind = ANTHROPIC_TYPES_BY_STATUS.get(status, kind)
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message, "code": code}})
    kind = spec.openai_type
    if status is not None and status != spec.status:
        kind = OPENAI_TYPES_BY_STATUS.get(status, kind)
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


# When an upstream's status is passed on (NO_ACCOUNT_AVAILABLE), the type follows that status,
# so an SDK raises the exception class it would have raised talking to the provider directly.
ANTHROPIC_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OPENAI_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}
