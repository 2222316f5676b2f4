"""The gateway's own ASGI application: everything under /v1/ (docs/gateway.md).

A raw ASGI app, not a Django view: a gateway request pays for none of the console's request
handling or middleware (sessions, CSRF, messages, auth, staff-only, CSP). config/asgi.py sends it
every /v1/ path and the ASGI `lifespan`, which starts and stops what one process shares:

- the upstream HTTP client (gateway.upstream_http: HTTP/1.1 on keep-alive connections, at most
  `GATEWAY_UPSTREAM_POOL_SIZE` open, every address checked as it connects; the four timeouts of
  settings apply to each call);
- the database threads (`GATEWAY_DB_THREADS`): the ORM never runs on the event loop;
- the snapshot cache and, with `REDIS_URL`, its pub/sub listener (gateway.auth);
- the shared limits' store (gateway.limits: Redis, the database, or this process);
- the recorder thread (`GATEWAY_RECORD_BATCH_SIZE`, `GATEWAY_RECORD_BATCH_WAIT_MS`), which records
  finished requests in batches on its own connection;
- the recordings still running, which shutdown waits for;
- at start-up, recovery of the pending records a dead process left (gateway.recovery);
- the loop watch (gateway.loop_watch): how late the event loop runs, in a metric, and a warning
  with the loop thread's stack when it is blocked (`GATEWAY_LOOP_WATCH_INTERVAL_MS`,
  `GATEWAY_LOOP_STALL_LOG_MS`, `GATEWAY_LOOP_STALL_LOG_EVERY_S`), from the end of warm-up.

On SIGTERM the process drains (docs/gateway.md#shutdown): new gateway requests get 503
`SHUTTING_DOWN`, requests in flight run on for up to `GATEWAY_DRAIN_SECONDS` (then their upstream
is cut and they are recorded as cut), and shutdown waits for every recording.

It also answers `GET /metrics` (gateway.metrics): every request is counted there once its answer
is over, and every log line about it carries its request id (common.logs).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import secrets
import signal
import sys
import threading
import time

from django.conf import settings

from accounts.client_address import client_ip_from
from common import logs
from gateway import metrics
from gateway.errors import GatewayError, error_body
from gateway.incoming import ROUTES, header_map, presented_key, protocol_for, refuse_key_in_query
from gateway.logs import install_access_log_redaction
from gateway.loop_watch import LoopWatch, loop_watch_start
from gateway.upstream_http import UpstreamClient

logger = logging.getLogger("gateway")
shutdown_logger = logging.getLogger("gateway.shutdown")  # about the process, not one request


# Request ids need to be unique, not secret: 96 bits from a generator seeded once per process
# from the OS (and again in a forked child) cost no system call per request, unlike `secrets`.
_ids = random.Random(secrets.randbits(256))
os.register_at_fork(after_in_child=lambda: _ids.seed(secrets.randbits(256)))


def _freeze_startup_objects(_warmed: asyncio.Future) -> None:
    """Once the price catalog is loaded: collect, then move every object alive (Django, the
    catalog, the modules: about 125,000) out of the garbage collector's reach. A full collection
    walked them all, ~80 ms with the event loop stopped and every request in flight waiting;
    now it walks only what was made since (docs/gateway.md#serving)."""
    gc.collect()
    gc.freeze()


def new_request_id() -> str:
    return f"req_{_ids.getrandbits(96):024x}"


class Gateway:
    """One per process. `__call__` is the ASGI entry point for /v1/ paths and lifespan."""

    def __init__(self) -> None:
        self.upstream_client: UpstreamClient | None = None
        self.db = None
        self.auth = None
        self.proxy = None
        self.started = False
        self.draining = False
        self._starting: asyncio.Lock | None = None
        self._warming: asyncio.Future | None = None
        self.loop_watch: LoopWatch | None = None
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
            from channels.catalog import catalog_warm
            from gateway import gauges
            from gateway.auth import SnapshotCache
            from gateway.db import DatabaseThreads
            from gateway.proxy import Proxy
            from gateway.recorder import BatchRecorder

            if settings.GATEWAY_SWITCH_INTERVAL_MS > 0:
                # Process-wide: a database or recorder thread whose answer has arrived gets the GIL
                # from the event loop within this, not Python's 5 ms (docs/gateway.md#serving).
                sys.setswitchinterval(settings.GATEWAY_SWITCH_INTERVAL_MS / 1000)
            self.db = DatabaseThreads(settings.GATEWAY_DB_THREADS)
            self.upstream_client = UpstreamClient(limit=settings.GATEWAY_UPSTREAM_POOL_SIZE)
            # The price catalog is a large module: imported by the first recording, it would cost
            # that request's recording (and every request queued behind it) about a second. Loaded
            # in the background, so that start-up does not wait for it.
            self._warming = asyncio.ensure_future(self.db.run(catalog_warm))
            if settings.GATEWAY_GC_FREEZE:
                self._warming.add_done_callback(_freeze_startup_objects)
            self.auth = SnapshotCache(db=self.db)
            await self.auth.start()
            recorder = BatchRecorder(
                size=settings.GATEWAY_RECORD_BATCH_SIZE, wait=settings.GATEWAY_RECORD_BATCH_WAIT_MS / 1000
            )
            self.proxy = Proxy(
                upstream_client=self.upstream_client, db=self.db, auth=self.auth, recorder=recorder
            )
            self.draining = False
            self._hear_sigterm()
            metrics.start()
            gauges.register()  # pending requests, holds, slot leases
            # How late the event loop runs (docs/gateway.md#event-loop-lag-and-stalls): the ticks
            # from here, as requests may come; the watchdog once warm-up is over (`_warmed`).
            self.loop_watch = loop_watch_start(
                interval=settings.GATEWAY_LOOP_WATCH_INTERVAL_MS / 1000,
                stall_after=settings.GATEWAY_LOOP_STALL_LOG_MS / 1000,
                log_every=settings.GATEWAY_LOOP_STALL_LOG_EVERY_S,
                watchdog=False,
            )
            self.started = True
            # Callbacks run in the order they were added (and one added to a future already done
            # runs soon): the watchdog starts once the catalog is loaded and frozen, so that neither
            # is reported as a stall.
            self._warming.add_done_callback(self._warmed)
            if self.proxy.holds:
                # What a dead process left (docs/gateway.md#pending-records); in the background,
                # so serving starts at once, and waited for at shutdown like a recording.
                self.proxy._background(self._recover())

    def _warmed(self, warmed: asyncio.Future) -> None:
        """The catalog is loaded (and frozen), or failed to load: start watching for stalls, unless
        the gateway was shut down (or started again, with a warm-up of its own) meanwhile."""
        if not warmed.cancelled() and (error := warmed.exception()) is not None:
            logger.warning("loading the price catalog at start-up failed (recording loads it): %r", error)
        if self.started and warmed is self._warming and self.loop_watch is not None:
            self.loop_watch.start_watchdog()

    async def _recover(self) -> None:
        from gateway.recovery import pending_recover

        try:
            recovered = await self.db.run(pending_recover)
        except Exception:
            logger.exception("recovering pending records at start-up failed")
            return
        if recovered:
            logger.warning("recovered %s pending records a stopped gateway process left", recovered)

    def _hear_sigterm(self) -> None:
        """Start draining on SIGTERM, then let the server's own handler do its part (uvicorn: stop
        listening, wait for the connections in flight, then the lifespan shutdown)."""
        if threading.current_thread() is not threading.main_thread():
            return  # a server run in a thread (tests): it stops through its lifespan only
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return  # no server handler to hand on to: leave SIGTERM as it is
        loop = asyncio.get_running_loop()

        def on_sigterm(signum, frame) -> None:
            loop.call_soon_threadsafe(self.begin_drain)
            previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def begin_drain(self) -> None:
        """Refuse new requests; cut what is still relaying after GATEWAY_DRAIN_SECONDS."""
        if self.draining or self.proxy is None:
            return
        self.draining = self.proxy.draining = True
        shutdown_logger.warning(
            "draining: refusing new requests, %d upstream answers in flight get %.0f s",
            len(self.proxy.upstreams),
            settings.GATEWAY_DRAIN_SECONDS,
        )
        asyncio.get_running_loop().call_later(settings.GATEWAY_DRAIN_SECONDS, self._drain_time_up)

    def _drain_time_up(self) -> None:
        if self.proxy is not None and (cut := self.proxy.cut_upstreams()):
            shutdown_logger.warning("draining: cut %d upstream answers still running", cut)

    async def shutdown(self) -> None:
        if not self.started:
            return
        self.draining = True
        self.started = False
        try:
            await self.proxy.drain(timeout=settings.GATEWAY_SHUTDOWN_SECONDS)
            if self.proxy.loop_holds is not None:
                await self.proxy.loop_holds.close()
            await self.proxy.limiter.close()
            await self.auth.stop()
            await self.upstream_client.close()
            await asyncio.get_running_loop().run_in_executor(None, self.proxy.recorder.stop)
            await asyncio.get_running_loop().run_in_executor(None, self.db.shutdown)
        finally:
            # Whatever failed above: no watchdog thread outlives the gateway it watches.
            if self.loop_watch is not None:
                self.loop_watch.stop()
                self.loop_watch = None

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
        if not self.started and not self.draining:
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
            if self.draining:
                raise GatewayError(
                    "SHUTTING_DOWN",
                    "This gateway process is shutting down: send the request again.",
                    retry_after=1,
                )
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
