from __future__ import annotations

import logging
import threading
from functools import cache

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponsePermanentRedirect, JsonResponse
from django.templatetags.static import static

from console.access import public

logger = logging.getLogger("tollgate.health")

# What the last probe in this process found down; a change is logged once, not every probe.
_last_down: tuple[str, ...] = ()
_state_lock = threading.Lock()


@public
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers: 200 while the database (and Redis, when configured) answer, else 503.

    Plain HTTP is fine (SECURE_REDIRECT_EXEMPT), and the body names what is down. Details
    go to the log, not to whoever probes.
    """
    errors = {"database": _database_error()}
    if settings.REDIS_URL:
        errors["redis"] = _redis_error(settings.REDIS_URL)
    down = tuple(name for name, error in errors.items() if error)
    _log_change(down, errors)
    body = {"status": "down" if down else "ok", "down": list(down), "checked": list(errors)}
    response = JsonResponse(body, status=503 if down else 200)
    # Django logs every 5xx response; the change of state is already logged above, once.
    response._has_been_logged = True
    return response


def _database_error() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:  # noqa: BLE001 - any failure means the database does not answer
        return f"{type(error).__name__}: {error}".strip()
    return None


@cache
def _redis_client(url: str) -> redis.Redis:
    # Short timeouts: a probe must answer before the load balancer gives up on it.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def _redis_error(url: str) -> str | None:
    try:
        _redis_client(url).ping()
    except Exception as error:  # noqa: BLE001 - any failure means Redis does not answer
        return f"{type(error).__name__}: {error}".strip()
    return None


def _log_change(down: tuple[str, ...], errors: dict[str, str | None]) -> None:
    global _last_down
    with _state_lock:
        if down == _last_down:
            return
        before, _last_down = _last_down, down
    for name in down:
        if name not in before:
            logger.error("Health check: %s is down (%s)", name, " ".join(str(errors[name]).split()))
    for name in before:
        if name not in down:
            logger.warning("Health check: %s answers again", name)


@public
def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    # Browsers ask for /favicon.ico on pages (Django admin) that do not link ours.
    return HttpResponsePermanentRedirect(static("img/favicon.svg"))
