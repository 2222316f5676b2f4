"""What an upstream failure means for the request and for the account (docs/gateway.md#failover).

Pure functions over a status and response headers:
- a connect error, a timeout before the first byte, a 429 or a 5xx moves to the next candidate;
- a 429 marks the account rate-limited until its `Retry-After` (seconds or a date), else the
  provider's reset headers (Anthropic `anthropic-ratelimit-*-reset` dates of the exhausted
  limits, OpenAI `x-ratelimit-reset-*` durations such as `6m0s`), else a default;
- a 401 or 403 marks it `error` with the upstream's message (its credential is bad or barred);
- anything else (400, 404, 413, 422…) is the client's problem: it is passed on, not retried.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import orjson

RETRY = "retry"  # try the next candidate
RETRY_AND_RATE_LIMIT = "rate_limit"  # ... and mark this account rate-limited
RETRY_AND_DISABLE = "disable"  # ... and mark this account `error`
PASS_ON = "pass_on"  # answer the client with the upstream's error

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def classify(status: int) -> str:
    if status == 429:
        return RETRY_AND_RATE_LIMIT
    if status in (401, 403):
        return RETRY_AND_DISABLE
    if status >= 500:
        return RETRY
    return PASS_ON


def _duration_seconds(value: str) -> float | None:
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _date(value: str) -> datetime | None:
    value = value.strip()
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def rate_limited_until(headers: Mapping[str, str], now: datetime, *, default_seconds: float) -> datetime:
    """When a rate-limited account may be tried again, from its 429's headers (names lower-case)."""
    retry_after = headers.get("retry-after-ms")
    if retry_after and (seconds := _duration_seconds(retry_after)) is not None:
        return now + timedelta(milliseconds=seconds)
    retry_after = headers.get("retry-after")
    if retry_after:
        seconds = _duration_seconds(retry_after)
        if seconds is not None:
            return now + timedelta(seconds=seconds)
        moment = _date(retry_after)
        if moment is not None:
            return max(moment, now)
    latest: datetime | None = None
    for name, value in headers.items():
        if name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            remaining = headers.get(name.removesuffix("-reset") + "-remaining")
            if remaining not in (None, "0"):
                continue
            moment = _date(value)
        elif name.startswith("x-ratelimit-reset-"):
            remaining = headers.get("x-ratelimit-remaining-" + name.removeprefix("x-ratelimit-reset-"))
            if remaining not in (None, "0"):
                continue
            seconds = _duration_seconds(value)
            moment = None if seconds is None else now + timedelta(seconds=seconds)
        else:
            continue
        if moment is not None and (latest is None or moment > latest):
            latest = moment
    if latest is not None:
        return max(latest, now)
    return now + timedelta(seconds=default_seconds)


def error_message(body: bytes, status: int) -> str:
    """The upstream's own error message from an OpenAI- or Anthropic-shaped body, else a summary."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:1000]
        if isinstance(error, str):
            return error[:1000]
        if isinstance(payload.get("message"), str):
            return payload["message"][:1000]
    text = body[:300].decode("utf-8", "replace").strip()
    return f"Upstream answered HTTP {status}" + (f": {text}" if text else ".")
