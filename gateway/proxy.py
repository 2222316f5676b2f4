"""A relayed request from key to ledger row (docs/gateway.md): admit, choose, relay, record.

    snapshot (cached) → admit (checks 3–15) → candidates → for each: call upstream → relay → record

The hot path for a cached key makes no database query and no thread hop before the upstream
call: snapshots come from the in-process cache, slots and account state live in this process.
The one database transaction per request is the recording, after the response.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from django.conf import settings

from gateway import metrics, recorder
from gateway.admission import Hold, admit
from gateway.errors import GatewayError
from gateway.failover import PASS_ON, RETRY_AND_DISABLE, RETRY_AND_RATE_LIMIT, classify, rate_limited_until
from gateway.incoming import Route, parse_body, read_body
from gateway.limits import LocalLimiter
from gateway.logs import hide_credentials
from gateway.relay import (
    UPSTREAM_CUT,
    UPSTREAM_ERROR,
    ClientChannel,
    ClientGone,
    Relayed,
    Timeouts,
    UpstreamFailure,
    call_upstream,
    read_first_chunk,
    relay_json,
    relay_stream,
)
from gateway.scheduling import AccountBoard, StickySessions, account_model, candidates, session_key
from gateway.upstreams import RefusedAddress, UnsupportedAccount, upstream_payload, upstream_target
from gateway.usage import COUNT_TOKENS, EMBEDDINGS, UsageMeter

logger = logging.getLogger("gateway")


class Proxy:
    def __init__(self, *, session: aiohttp.ClientSession, db: Any, auth: Any) -> None:
        self.session = session
        self.db = db
        self.auth = auth
        self.board = AccountBoard()
        self.sticky = StickySessions(ttl=settings.GATEWAY_STICKY_TTL, size=settings.GATEWAY_STICKY_SIZE)
        self.limiter = LocalLimiter()
        self.recordings: set[asyncio.Task] = set()
        auth.on_accounts_reloaded = self.board.forget

    async def handle(
        self,
        *,
        route: Route,
        protocol: str,
        secret: str,
        headers: dict[bytes, bytes],
        client_ip: str,
        request_id: str,
        started: float,
        receive,
        send,
    ) -> None:
        key = await self.auth.key(hashlib.sha256(secret.encode()).hexdigest())
        if key is None:
            raise GatewayError("INVALID_API_KEY", "This API key is not valid.")
        if route.kind in ("models", "usage"):
            from gateway import selfservice

            await selfservice.answer(
                gateway=self,
                kind=route.kind,
                key=key,
                protocol=protocol,
                client_ip=client_ip,
                request_id=request_id,
                send=send,
            )
            return
        raw = await read_body(receive, headers, settings.GATEWAY_MAX_BODY_BYTES)
        body = parse_body(raw)
        model = body["model"]
        group = key.group
        channel = await self.auth.channel(group.id) if group is not None else None
        platform = group.platform if group is not None else protocol
        mapped = channel.map_model(platform=platform, model=model) if channel is not None else model
        decision = admit(
            key=key,
            channel=channel,
            now=datetime.now(UTC),
            client_ip=client_ip,
            protocol=protocol,
            model=model,
            mapped_model=mapped,
            limiter=self.limiter,
        )
        if isinstance(decision, GatewayError):
            raise decision
        metrics.note_model(model)
        try:
            await self._relay(
                hold=decision,
                route=route,
                protocol=protocol,
                raw=raw,
                body=body,
                headers=headers,
                client_ip=client_ip,
                request_id=request_id,
                started=started,
                receive=receive,
                send=send,
            )
        finally:
            decision.release()

    async def _relay(
        self,
        *,
        hold: Hold,
        route: Route,
        protocol: str,
        raw: bytes,
        body: dict,
        headers: dict,
        client_ip: str,
        request_id: str,
        started: float,
        receive,
        send,
    ) -> None:
        key, group = hold.key, hold.key.group
        stream = bool(body.get("stream")) and route.kind not in (EMBEDDINGS, COUNT_TOKENS)
        accounts = await self.auth.accounts([member.account_id for member in group.members])
        conversation = session_key(kind=route.kind, body=body, key_id=key.id)
        found = candidates(
            platform=group.platform,
            members=group.members,
            accounts=accounts,
            model=hold.mapped_model,
            routed=group.routed_account_ids(hold.model),
            now=datetime.now(UTC),
            board=self.board,
            sticky_account_id=self.sticky.get(conversation),
        )
        if not found.accounts:
            if found.unsupported:
                raise GatewayError(
                    "ACCOUNT_TYPE_NOT_SUPPORTED",
                    f"The group's accounts for {hold.model!r} are AWS Bedrock accounts, which the gateway "
                    "does not relay yet.",
                )
            raise GatewayError(
                "NO_ACCOUNT_AVAILABLE",
                f"No account of this key's group can serve {hold.model!r} right now.",
                retry_after=settings.GATEWAY_NO_ACCOUNT_RETRY_SECONDS,
            )
        client = ClientChannel(send, receive)
        client.watch()
        last: tuple[Any, UpstreamFailure] | None = None
        busy = 0
        attempts = 0
        try:
            for account in found.accounts:
                if attempts >= settings.GATEWAY_MAX_ATTEMPTS:
                    break
                if not self.board.try_acquire(account):
                    busy += 1
                    continue
                attempts += 1
                if last is not None:
                    metrics.failed_over(last[0].id)
                try:
                    relayed, meter, upstream_model = await self._attempt(
                        hold=hold,
                        account=account,
                        route=route,
                        protocol=protocol,
                        raw=raw,
                        body=body,
                        headers=headers,
                        stream=stream,
                        request_id=request_id,
                        started=started,
                        client=client,
                    )
                except UpstreamFailure as failure:
                    metrics.upstream_failed(account.id, failure.kind, failure.status)
                    if failure.kind == "status" and classify(failure.status) == PASS_ON:
                        await self._pass_on(failure, client, request_id)
                        self._record(
                            hold=hold,
                            account=account,
                            route=route,
                            request_id=request_id,
                            meter=None,
                            relayed=Relayed(UPSTREAM_ERROR, None),
                            status=failure.status,
                            stream=stream,
                            started=started,
                            client_ip=client_ip,
                            headers=headers,
                            upstream_model=account_model(account, hold.mapped_model),
                        )
                        return
                    self._mark(account, failure)
                    last = (account, failure)
                    continue
                except ClientGone:
                    logger.info("request %s: the client left before the first byte", request_id)
                    return
                finally:
                    self.board.release(account.id)
                self.sticky.put(conversation, account.id)
                if route.kind != COUNT_TOKENS:
                    self._record(
                        hold=hold,
                        account=account,
                        route=route,
                        request_id=request_id,
                        meter=meter,
                        relayed=relayed,
                        status=200,
                        stream=stream,
                        started=started,
                        client_ip=client_ip,
                        headers=headers,
                        upstream_model=upstream_model,
                    )
                return
        finally:
            client.close()
        if last is None:
            raise GatewayError(
                "NO_ACCOUNT_AVAILABLE",
                f"Every account that can serve {hold.model!r} is busy ({busy} at their concurrency limit).",
                retry_after=1,
            )
        account, failure = last
        retry_after = None
        if failure.status == 429:
            limited = self.board.rate_limited_until.get(account.id)
            retry_after = (limited - datetime.now(UTC)).total_seconds() if limited else None
        # A refused credential's message may quote the operator's own key or organisation: the
        # client is told what happened, the operator reads the details on the account.
        detail = (
            f"the upstream refused the account's credential (HTTP {failure.status})"
            if failure.status in (401, 403)
            else hide_credentials(failure.message, self.auth.credentials(account))
        )
        raise GatewayError(
            "NO_ACCOUNT_AVAILABLE",
            f"No account could serve the request; the last upstream error: {detail}",
            status=failure.status,
            retry_after=retry_after,
        )

    async def _attempt(
        self,
        *,
        hold: Hold,
        account: Any,
        route: Route,
        protocol: str,
        raw: bytes,
        body: dict,
        headers: dict,
        stream: bool,
        request_id: str,
        started: float,
        client: ClientChannel,
    ) -> tuple[Relayed, UsageMeter, str]:
        timeouts = Timeouts(
            connect=settings.GATEWAY_CONNECT_TIMEOUT,
            first_byte=settings.GATEWAY_FIRST_BYTE_TIMEOUT,
            idle=settings.GATEWAY_IDLE_TIMEOUT,
            total=settings.GATEWAY_TOTAL_TIMEOUT,
        )
        upstream_model = account_model(account, hold.mapped_model)
        payload, strip = upstream_payload(
            raw,
            body,
            kind=route.kind,
            stream=stream,
            upstream_model=upstream_model,
            requested_model=hold.model,
        )
        try:
            target = upstream_target(
                platform=account.platform,
                account_type=account.type,
                credentials=self.auth.credentials(account),
                configured_base_url=account.base_url,
                path=_upstream_path(route),
                client_headers=headers,
                request_id=request_id,
                stream=stream,
            )
        except UnsupportedAccount as error:
            raise UpstreamFailure("connect", 501, str(error)) from error
        except RefusedAddress as error:
            raise UpstreamFailure("connect", 502, f"The upstream could not be reached: {error}") from error
        response = await call_upstream(
            session=self.session,
            target=target,
            payload=payload,
            timeouts=timeouts,
            client=client,
            started=started,
        )
        meter = UsageMeter(kind=route.kind, body=body)
        if stream:
            first = await read_first_chunk(
                response=response, client=client, timeouts=timeouts, started=started
            )
            relayed = await relay_stream(
                response=response,
                first_chunk=first,
                client=client,
                meter=meter,
                strip_usage=strip,
                protocol=protocol,
                request_id=request_id,
                timeouts=timeouts,
                started=started,
            )
        else:
            relayed = await relay_json(
                response=response,
                client=client,
                meter=meter,
                request_id=request_id,
                timeouts=timeouts,
                started=started,
            )
        return relayed, meter, upstream_model

    async def _pass_on(self, failure: UpstreamFailure, client: ClientChannel, request_id: str) -> None:
        """The client's own mistake, as the upstream worded it (same protocol, same shape)."""
        await client.start(
            failure.status,
            [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())],
        )
        await client.body(failure.body, more=False)

    def _mark(self, account: Any, failure: UpstreamFailure) -> None:
        action = classify(failure.status) if failure.kind == "status" else None
        said = hide_credentials(failure.message, self.auth.credentials(account))
        now = datetime.now(UTC)
        if action == RETRY_AND_RATE_LIMIT:
            until = rate_limited_until(
                failure.headers, now, default_seconds=settings.GATEWAY_RATE_LIMIT_DEFAULT_SECONDS
            )
            self.board.mark_rate_limited(account.id, until)
            self._background(self.db.run(recorder.account_rate_limited, account_id=account.id, until=until))
        elif action == RETRY_AND_DISABLE:
            self.board.mark_disabled(account.id)
            message = f"HTTP {failure.status} from the upstream: {said}"
            self._background(self.db.run(recorder.account_failed, account_id=account.id, message=message))
        logger.warning("account %s failed (%s %s): %s", account.id, failure.kind, failure.status, said)

    def _record(
        self,
        *,
        hold: Hold,
        account: Any,
        route: Route,
        request_id: str,
        meter: UsageMeter | None,
        relayed: Relayed,
        status: int,
        stream: bool,
        started: float,
        client_ip: str,
        headers: dict,
        upstream_model: str,
    ) -> None:
        if relayed.outcome == UPSTREAM_CUT:
            metrics.upstream_failed(account.id, "cut", status)
        if meter is None:
            usage, source = recorder.NO_USAGE, "none"
        else:
            usage, source = meter.usage()
        entry = recorder.Entry(
            request_id=request_id,
            key=hold.key,
            channel=hold.channel,
            account=account,
            requested_model=hold.model,
            mapped_model=hold.mapped_model,
            upstream_model=upstream_model,
            usage=usage,
            usage_source=source,
            outcome=relayed.outcome,
            stream=stream,
            status_code=status,
            duration_ms=int((time.monotonic() - started) * 1000),
            first_token_ms=relayed.first_byte_ms,
            client_ip=client_ip,
            user_agent=headers.get(b"user-agent", b"").decode("latin-1"),
        )
        self._background(self._settle(entry))

    async def _settle(self, entry: recorder.Entry) -> None:
        try:
            result, fresh = await self.db.run(recorder.record, entry)
        except Exception:
            logger.exception("recording request %s failed", entry.request_id)
            return
        if not result.duplicate:
            metrics.recorded(
                model=entry.requested_model,
                usage=entry.usage,
                actual_cost=float(result.breakdown.actual_cost),
                account_cost=float(result.breakdown.account_cost),
            )
        self.auth.refresh(entry.key, fresh)

    def _background(self, work) -> None:
        task = asyncio.ensure_future(work)
        self.recordings.add(task)
        task.add_done_callback(self.recordings.discard)

    async def drain(self, *, timeout: float) -> None:
        """Wait for the recordings still running (shutdown)."""
        if self.recordings:
            await asyncio.wait(set(self.recordings), timeout=timeout)


def _upstream_path(route: Route) -> str:
    return {
        "chat": "/v1/chat/completions",
        "responses": "/v1/responses",
        "embeddings": "/v1/embeddings",
        "messages": "/v1/messages",
        "count_tokens": "/v1/messages/count_tokens",
    }[route.kind]
