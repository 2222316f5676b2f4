"""The gateway's own ASGI application: everything under /v1/ (docs/gateway.md).

A raw ASGI app, not a Django view: a gateway request pays for none of the console's request
handling or middleware (sessions, CSRF, messages, auth, staff-only, CSP). config/asgi.py sends it
every /v1/ path and the ASGI `lifespan`, which starts and stops what one process shares:

- the upstream HTTP client (aiohttp, pooled connections, the four timeouts of settings);
- the database threads (`GATEWAY_DB_THREADS`): the ORM never runs on the event loop;
- the snapshot cache and, with `REDIS_URL`, its pub/sub listener (gateway.auth);
- the recordings still running, which shutdown waits for.

It also answers `GET /metrics` (gateway.metrics): every request is counted there once its answer
is over, and every log line about it carries its request id (common.logs).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import aiohttp
from django.conf import settings

from accounts.client_address import client_ip_from
from common import logs
from gateway import metrics
from gateway.errors import GatewayError, error_body
from gateway.incoming import ROUTES, header_map, presented_key, protocol_for, refuse_key_in_query
from gateway.logs import install_access_log_redaction

logger = logging.getLogger("gateway")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class Gateway:
    """One per process. `__call__` is the ASGI entry point for /v1/ paths and lifespan."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.db = None
        self.auth = None
        self.proxy = None
        self.started = False
        self._starting: asyncio.Lock | None = None
        install_access_log_redaction()
        # The server set up its loggers before loading this app: JSON logs take them over now.
        logs.adopt_server_loggers(settings.LOG_FORMAT)

    # --- lifespan ---------------------------------------------------------------------------

    async def startup(self) -> None:
        if self.started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.started:
                return
            from gateway.addresses import CheckedResolver
            from gateway.auth import SnapshotCache
            from gateway.db import DatabaseThreads
            from gateway.proxy import Proxy

            self.db = DatabaseThreads(settings.GATEWAY_DB_THREADS)
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.GATEWAY_UPSTREAM_POOL_SIZE,
                    limit_per_host=0,
                    keepalive_timeout=30,
                    enable_cleanup_closed=True,
                    resolver=CheckedResolver(),
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
            self.auth = SnapshotCache(db=self.db)
            await self.auth.start()
            self.proxy = Proxy(session=self.session, db=self.db, auth=self.auth)
            metrics.start()
            self.started = True

    async def shutdown(self) -> None:
        if not self.started:
            return
        self.started = False
        await self.proxy.drain(timeout=settings.GATEWAY_SHUTDOWN_SECONDS)
        await self.auth.stop()
        await self.session.close()
        await asyncio.get_running_loop().run_in_executor(None, self.db.shutdown)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    logger.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    # --- requests ----------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if not self.started:
            # A server run without lifespan (or a test client): start on the first request.
            await self.startup()
        started = time.monotonic()
        path = scope["path"]
        if path == metrics.PATH:
            await self.serve_metrics(scope, send)
            return
        request_id = new_request_id()
        logged = logs.request_id.set(request_id)
        endpoint = path.rstrip("/") or path
        route = ROUTES.get(endpoint)
        observation = metrics.Observation(endpoint if route is not None else metrics.OTHER_ENDPOINT)
        observed = metrics.observing(observation)
        metrics.IN_FLIGHT.inc()

        async def send_observed(message: dict) -> None:
            if message["type"] == "http.response.start":
                observation.status = message["status"]
            await send(message)

        headers = header_map(scope)
        protocol = protocol_for(route, headers)
        try:
            refuse_key_in_query(scope.get("query_string", b""))
            if route is None:
                raise GatewayError("NOT_FOUND", f"There is no endpoint {scope['path']}.")
            if scope["method"] != route.method:
                raise GatewayError("METHOD_NOT_ALLOWED", f"{scope['path']} accepts {route.method} only.")
            secret = presented_key(headers)
            if not secret:
                raise GatewayError(
                    "API_KEY_REQUIRED",
                    "Send your Tollgate API key as `Authorization: Bearer <key>`, `x-api-key` or "
                    "`x-goog-api-key`.",
                )
            client = scope.get("client")
            client_ip = client_ip_from(client[0] if client else "", _text(headers.get(b"x-forwarded-for")))
            await self.proxy.handle(
                route=route,
                protocol=protocol,
                secret=secret,
                headers=headers,
                client_ip=client_ip,
                request_id=request_id,
                started=started,
                receive=receive,
                send=send_observed,
            )
        except GatewayError as error:
            metrics.refused(error.code)
            await answer_error(send_observed, error, protocol, request_id)
        except ConnectionAbortedError:
            return  # the client left while sending its request: nothing to answer, nothing served
        except Exception:
            logger.exception("gateway request %s failed", request_id)
            metrics.refused("INTERNAL_ERROR")
            await answer_error(
                send_observed,
                GatewayError("INTERNAL_ERROR", f"The gateway failed ({request_id})."),
                protocol,
                request_id,
            )
        finally:
            metrics.IN_FLIGHT.dec()
            elapsed = time.monotonic() - started
            metrics.finish(observation, elapsed)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s answered %s in %.1f ms (model %r)",
                    scope["method"],
                    endpoint,
                    observation.status or "nothing (the client left)",
                    elapsed * 1000,
                    observation.model,
                )
            metrics.current.reset(observed)
            logs.request_id.reset(logged)

    async def serve_metrics(self, scope, send) -> None:
        """GET /metrics for a scraper that passes the protection (gateway.metrics.refusal)."""
        headers = header_map(scope)
        client = scope.get("client")
        client_ip = client_ip_from(client[0] if client else "", _text(headers.get(b"x-forwarded-for")))
        refused = metrics.refusal(authorization=headers.get(b"authorization"), client_ip=client_ip)
        if refused is None and scope["method"] not in ("GET", "HEAD"):
            refused = (405, "GET /metrics only.")
        if refused is not None:
            status, reason = refused
            extra = [(b"www-authenticate", b'Bearer realm="metrics"')] if status == 401 else []
            await _plain(send, status, reason.encode() + b"\n", extra)
            return
        body = await self.db.run(metrics.render)
        await _plain(
            send, 200, b"" if scope["method"] == "HEAD" else body, [], content_type=metrics.CONTENT_TYPE
        )


async def _plain(
    send, status: int, body: bytes, extra: list, *, content_type: str = "text/plain; charset=utf-8"
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"cache-control", b"no-store"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""


async def answer_error(send, error: GatewayError, protocol: str, request_id: str) -> None:
    headers = [*error.headers(), (b"x-request-id", request_id.encode())]
    try:
        await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    except RuntimeError:
        return  # the response had already started: nothing more can be said on this connection
    await send(
        {
            "type": "http.response.body",
            "body": error_body(protocol, error.code, error.message, status=error.http_status),
        }
    )


application = Gateway()
