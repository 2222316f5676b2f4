"""Sign-in throttle: failures counted per client IP and per username in the cache.

A fixed window per counter: the first failure opens it, and once the count
reaches LOGIN_FAILURE_LIMIT every attempt is refused until it lapses. With
Redis configured the counters are shared by all processes.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache


def _key(kind: str, value: str) -> str:
    digest = hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]
    return f"login-fail:{kind}:{digest}"


def _keys(ip: str, username: str) -> list[str]:
    keys = [_key("ip", ip or "unknown")]
    if username:
        keys.append(_key("user", username))
    return keys


def is_locked_out(*, ip: str, username: str) -> bool:
    counts = cache.get_many(_keys(ip, username))
    return any(count >= settings.LOGIN_FAILURE_LIMIT for count in counts.values())


def record_failure(*, ip: str, username: str) -> None:
    for key in _keys(ip, username):
        # add() opens the window only if none is open; incr() is atomic on Redis.
        if not cache.add(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW_SECONDS):
            try:
                cache.incr(key)
            except ValueError:  # expired between add() and incr()
                cache.add(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW_SECONDS)


def clear_username(username: str) -> None:
    """A successful sign-in forgives that username's failures (not the IP's)."""
    cache.delete(_key("user", username))


def lockout_minutes() -> int:
    return max(1, settings.LOGIN_FAILURE_WINDOW_SECONDS // 60)
