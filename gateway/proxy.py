"""A relayed request from key to ledger row (docs/gateway.md): admit, choose, relay, record.

    snapshot (cached) → admit (checks 3–15) → candidates → for each: call upstream → relay → record

The hot path for a cached key loads nothing from the database before the hold: snapshots come
from the in-process cache, slots from Redis (gateway.limits; without Redis the database store
takes them on a database thread). Its one database transaction before the upstream call is the
hold (gateway.holds, docs/gateway.md#holds-and-settle); the recording after the response settles
it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from django.conf import settings

from billing.holds import holds_supported, pending_observe, pending_release
from gateway import holds, metrics, recorder
from gateway.admission import Hold, admit
from gateway.checks import model_refusal
from gateway.errors import GatewayError
from gateway.failover import PASS_ON, RETRY_AND_DISABLE, RETRY_AND_RATE_LIMIT, classify, rate_limited_until
from gateway.incoming import Route, parse_body, read_body
from gateway.limits import SLOT_REFUSALS, Slot, limiter_for
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
from gateway.scheduling import (
    AccountBoard,
    Candidates,
    StickySessions,
    account_model,
    candidates,
    session_key,
)
from gateway.upstream_http import UpstreamClient, UpstreamResponse
from gateway.upstreams import RefusedAddress, UnsupportedAccount, upstream_payload, upstream_target
from gateway.usage import COUNT_TOKENS, EMBEDDINGS, UsageMeter

# The token counts a stream's checkpoint keeps, as recovery reads them (gateway.recovery).
OBSERVED_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
)

logger = logging.getLogger("gateway")


@dataclass(slots=True)
class EarlyHold:
    """A hold started beside the admission: the candidates it was taken for, and the task that
    answers `Proxy._hold_and_first_slot`'s (accounts to try, first slot, pending hold)."""

    conversation: str
    found: Candidates
    ask: dict[str, Any]  # what the hold queue is asked to hold (`_hold_ask`), the accounts aside
    task: asyncio.Future


class Proxy:
    def __init__(
        self,
        *,
        upstream_client: UpstreamClient,
        db: Any,
        auth: Any,
        recorder: recorder.BatchRecorder,
    ) -> None:
        self.upstream_client = upstream_client
        self.db = db
        self.recorder = recorder
        self.auth = auth
        self.board = AccountBoard()
        self.sticky = StickySessions(ttl=settings.GATEWAY_STICKY_TTL, size=settings.GATEWAY_STICKY_SIZE)
        self.limiter = limiter_for(db)
        self.recordings: set[asyncio.Task] = set()
        self.holds = holds_supported()
        self.loop_holds = (
            holds.LoopHolds(db=db, size=settings.GATEWAY_LOOP_HOLD_CONNECTIONS, fallback=holds.reserve_many)
            if self.holds and settings.GATEWAY_LOOP_HOLD_CONNECTIONS > 0
            else None
        )
        self.hold_queue = holds.HoldQueue(
            db=db,
            size=settings.GATEWAY_HOLD_BATCH_SIZE,
            hold_many=holds.reserve_many,
            release=holds.release_reserved,
            alone=self.loop_holds.hold if self.loop_holds is not None else None,
        )
        self.beside_admission = holds.BesideAdmission(enabled=settings.GATEWAY_HOLD_BESIDE_ADMISSION)
        # Upstream answers being relayed: closed when a drain's time is up (docs/gateway.md#shutdown).
        self.upstreams: set[UpstreamResponse] = set()
        self.cut_by_shutdown = False
        self.draining = False  # SIGTERM: a request whose body arrives now is not started
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
        if self.draining:
            raise GatewayError(
                "SHUTTING_DOWN",
                "This gateway process is shutting down: send the request again.",
                retry_after=1,
            )
        body = parse_body(raw)
        model = body["model"]
        group = key.group
        channel = await self.auth.channel(group.id) if group is not None else None
        platform = group.platform if group is not None else protocol
        mapped = channel.map_model(platform=platform, model=model) if channel is not None else model
        # Started at once (eagerly): with Redis, its script is written at the end of this turn.
        admission = asyncio.Task(
            admit(
                key=key,
                channel=channel,
                now=datetime.now(UTC),
                client_ip=client_ip,
                protocol=protocol,
                model=model,
                mapped_model=mapped,
                limiter=self.limiter,
                request_id=request_id,
            ),
            loop=asyncio.get_running_loop(),
            eager_start=True,
        )
        guess: holds.Estimate | None = None
        early: EarlyHold | None = None
        try:
            if self.holds and route.kind != COUNT_TOKENS:
                guess, early = await self._price_and_hold_beside(
                    admission,
                    key=key,
                    channel=channel,
                    model=model,
                    mapped_model=mapped,
                    route=route,
                    body=body,
                    request_id=request_id,
                    protocol=protocol,
                )
            # Shielded: cancelling this request must not cancel the admission (a take already on its
            # way would still land), so that `_abandon` gives back what it takes.
            decision = await asyncio.shield(admission)
        except BaseException:
            _abandon(admission)
            # Tracked until it answers, so a drain waits for it and for its give-back.
            self.recordings.add(admission)
            admission.add_done_callback(self.recordings.discard)
            if early is not None:
                self._give_back_early(early, request_id=request_id, api_key_id=key.id)
            raise
        if isinstance(decision, GatewayError):
            if decision.code in SLOT_REFUSALS:
                self.beside_admission.refused(key)
            if early is not None:
                self._give_back_early(early, request_id=request_id, api_key_id=key.id)
            raise decision
        metrics.note_model(model)
        try:
            await self._relay(
                hold=decision,
                guess=guess,
                early=early,
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
            if decision.pending is not None and not decision.recorded:
                # Nothing to record (refused, no account could serve, the client left first):
                # give the holds back now rather than at the lease's end.
                self._background(
                    self.db.run(pending_release, request_id=request_id, api_key_id=decision.key.id)
                )

    async def _price_and_hold_beside(
        self,
        admission: asyncio.Task,
        *,
        key: Any,
        channel: Any,
        model: str,
        mapped_model: str,
        route: Route,
        body: dict,
        request_id: str,
        protocol: str,
    ) -> tuple[holds.Estimate | None, EarlyHold | None]:
        """While the admission's round trip is under way: price the hold's estimate, then start the
        hold itself when it may go beside the admission (docs/gateway.md#the-hold-beside-the-admission)."""
        if not admission.done():
            await asyncio.sleep(0)  # a turn first, so that the admission's script leaves before
        if _refused_at_once(admission):
            return None, None
        guess = holds.early_estimate(
            key=key, channel=channel, kind=route.kind, body=body, model=model, mapped_model=mapped_model
        )
        group = key.group
        if (
            guess is None
            or group is None
            or not self.beside_admission.allows(key)
            # A model the channel does not allow is refused after the slots: nothing to hold for.
            or model_refusal(channel, platform=group.platform, model=model, mapped_model=mapped_model)
        ):
            return guess, None
        ask = _hold_ask(
            key=key,
            channel=channel,
            model=model,
            mapped_model=mapped_model,
            guess=guess,
            route=route,
            body=body,
            request_id=request_id,
            protocol=protocol,
        )
        early = await self._hold_early(ask, admission)
        return guess, early

    async def _relay(
        self,
        *,
        hold: Hold,
        guess: holds.Estimate | None,
        early: EarlyHold | None,
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
        stream = _streams(route, body)
        if early is not None:
            conversation, found = early.conversation, early.found
        else:
            conversation, found = await self._candidates(
                key=hold.key, model=hold.model, mapped_model=hold.mapped_model, kind=route.kind, body=body
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
        accounts_to_try = found.accounts
        first_slot: Slot | None = None  # the first candidate's slot, taken while the hold runs
        if early is not None:
            accounts_to_try, first_slot = await self._early_hold_result(
                early, hold=hold, request_id=request_id
            )
        elif self.holds and route.kind != COUNT_TOKENS:
            ask = _hold_ask(
                key=hold.key,
                channel=hold.channel,
                model=hold.model,
                mapped_model=hold.mapped_model,
                guess=guess,
                route=route,
                body=body,
                request_id=request_id,
                protocol=protocol,
            )
            try:
                accounts_to_try, first_slot, hold.pending = await self._hold_and_first_slot(
                    ask, found.accounts
                )
            except GatewayError:
                self.beside_admission.refused(hold.key)  # its next requests hold after the admission
                raise
        client = ClientChannel(send, receive)
        client.watch()
        last: tuple[Any, UpstreamFailure] | None = None
        # Candidates the hold passed over for want of quota room count as such, like a failed move:
        # when the rest fail too, the answer says an account's quota is the reason.
        no_room = len(hold.pending.skipped_account_ids) if hold.pending is not None else 0
        busy = 0
        attempts = 0
        try:
            for account in accounts_to_try:
                if attempts >= settings.GATEWAY_MAX_ATTEMPTS:
                    break
                if self.cut_by_shutdown:
                    raise GatewayError(
                        "SHUTTING_DOWN", "The gateway is shutting down: send the request again."
                    )
                if first_slot is not None and account is accounts_to_try[0]:
                    account_slot, first_slot = first_slot, None
                else:
                    account_slot = await self.limiter.take_account(
                        account_id=account.id, concurrency=account.concurrency, token=request_id
                    )
                if account_slot is None:
                    busy += 1
                    continue
                try:
                    moved = await self._hold_moved_to(
                        account, hold=hold, route=route, body=body, request_id=request_id
                    )
                except BaseException:
                    account_slot.release()
                    raise
                if not moved:
                    account_slot.release()
                    no_room += 1
                    continue
                self.board.touch(account.id)
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
                    account_slot.release()
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
            if first_slot is not None:
                first_slot.release()  # not reached (shutting down before the first attempt)
        if no_room:
            # An account that could serve had no quota left for the estimate: say so (and when
            # to try again) rather than pass on another account's failure.
            raise holds.refusal("account_quota", hold.key, hold.model)
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

    async def _hold_moved_to(
        self, account: Any, *, hold: Hold, route: Route, body: dict, request_id: str
    ) -> bool:
        """Before relaying to an account other than the one the request holds on (failover), move
        the account hold there, so its quota is held like the first one's; False when it has no
        room. Nothing to do without holds or when the request already holds on `account`."""
        pending = hold.pending
        if pending is None or pending.account_id is None or pending.account_id == account.id:
            return True
        moved = await self.db.run(
            holds.move,
            request_id=request_id,
            key=hold.key,
            channel=hold.channel,
            account=account,
            kind=route.kind,
            body=body,
            model=hold.model,
            mapped_model=hold.mapped_model,
        )
        if moved:
            hold.pending = dataclasses.replace(pending, account_id=account.id)
        return moved

    async def _candidates(
        self, *, key: Any, model: str, mapped_model: str, kind: str, body: dict
    ) -> tuple[str, Candidates]:
        """The request's conversation (for sticky sessions) and its candidate accounts, in order."""
        group = key.group
        accounts = await self.auth.accounts([member.account_id for member in group.members])
        conversation = session_key(kind=kind, body=body, key_id=key.id)
        found = candidates(
            platform=group.platform,
            members=group.members,
            accounts=accounts,
            model=mapped_model,
            routed=group.routed_account_ids(model),
            now=datetime.now(UTC),
            board=self.board,
            sticky_account_id=self.sticky.get(conversation),
        )
        return conversation, found

    async def _hold_early(self, ask: dict[str, Any], admission: asyncio.Task) -> EarlyHold | None:
        """Choose the candidates and start the hold (and the first candidate's slot) before the
        admission has answered (docs/gateway.md#the-hold-beside-the-admission); None when there is
        no candidate (the relay answers that, after the admission) or the admission has refused."""
        conversation, found = await self._candidates(
            key=ask["key"],
            model=ask["model"],
            mapped_model=ask["mapped_model"],
            kind=ask["kind"],
            body=ask["body"],
        )
        if not found.accounts or _refused_at_once(admission):  # (the accounts may have been loaded)
            return None
        task = asyncio.ensure_future(self._hold_and_first_slot(ask, found.accounts))
        return EarlyHold(conversation=conversation, found=found, ask=ask, task=task)

    async def _early_hold_result(
        self, early: EarlyHold, *, hold: Hold, request_id: str
    ) -> tuple[tuple, Slot | None]:
        """The hold started beside the admission, now that the admission let the request in: the
        accounts to try and the first one's slot. A refusal is tried once more, held the usual
        way: what did not fit may have been another request's hold, taken beside an admission
        that then refused it and not yet given back."""
        try:
            accounts_to_try, first_slot, hold.pending = await asyncio.shield(early.task)
        except GatewayError:
            self.beside_admission.refused(hold.key)
        except BaseException:
            self._give_back_early(early, request_id=request_id, api_key_id=hold.key.id)
            raise
        else:
            return accounts_to_try, first_slot
        accounts_to_try, first_slot, hold.pending = await self._hold_and_first_slot(
            early.ask, early.found.accounts
        )
        return accounts_to_try, first_slot

    def _give_back_early(self, early: EarlyHold, *, request_id: str, api_key_id: int) -> None:
        """The request will not be relayed (its admission refused it, or it stopped): once the hold
        started beside the admission has finished, give back its slot and its holds."""

        async def give_back() -> None:
            try:
                _accounts, slot, pending = await early.task
            except Exception:  # noqa: BLE001 - refused or failed: it holds nothing
                return
            if slot is not None:
                slot.release()
            if pending is not None:
                await self.db.run(pending_release, request_id=request_id, api_key_id=api_key_id)

        self._background(give_back())

    async def _hold_and_first_slot(self, ask: dict[str, Any], accounts: tuple) -> tuple:
        """The hold (a database round trip) and the first candidate's slot (a Redis one) at once,
        as the hold nearly always chooses that account: (the accounts to try, that slot when the
        hold chose its account, else None; a None slot also when the account was full, the
        pending hold)."""
        first = accounts[0]
        taking = asyncio.ensure_future(
            self.limiter.take_account(
                account_id=first.id, concurrency=first.concurrency, token=ask["request_id"]
            )
        )
        try:
            accounts_to_try, pending = await self._hold(ask, accounts)
        except BaseException:
            self._background(_give_back(taking))
            raise
        try:
            slot = await taking
        except BaseException:
            # Held, but the request stops here (the slot's store failed, or it was cancelled):
            # nobody else knows of this hold yet, so give it back now.
            self._background(
                self.db.run(pending_release, request_id=ask["request_id"], api_key_id=ask["key"].id)
            )
            raise
        if accounts_to_try and accounts_to_try[0] is first:
            return accounts_to_try, slot, pending
        if slot is not None:
            slot.release()  # the hold skipped that account (no quota room): its slot is not needed
        return accounts_to_try, None, pending

    async def _hold(self, ask: dict[str, Any], accounts: tuple) -> tuple[tuple, Any]:
        """Hold the estimate and write the pending record (together with the key's other holds
        waiting then: docs/gateway.md#hold-batches); the accounts to try, the one held on first,
        and the pending hold. Raises the refusal of a limit it did not fit."""
        key = ask["key"]
        result = await self.hold_queue.reserve(key.id, {**ask, "accounts": list(accounts)})
        if not result.held:
            raise holds.refusal(result.refused, key, ask["model"])
        if result.account_id is None:
            return accounts, result
        skipped = set(result.skipped_account_ids)
        held = [account for account in accounts if account.id == result.account_id]
        return (*held, *(a for a in accounts if a.id != result.account_id and a.id not in skipped)), result

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
            upstream_client=self.upstream_client,
            target=target,
            payload=payload,
            timeouts=timeouts,
            client=client,
            started=started,
        )
        meter = UsageMeter(kind=route.kind, body=body)
        checkpoint = None
        if stream and hold.pending is not None and settings.GATEWAY_OBSERVE_EVERY_SECONDS > 0:
            checkpoint = partial(self._observe, meter, request_id=request_id, api_key_id=hold.key.id)
        self.upstreams.add(response)
        try:
            return await self._relay_answer(
                response=response,
                meter=meter,
                checkpoint=checkpoint,
                client=client,
                stream=stream,
                strip=strip,
                protocol=protocol,
                request_id=request_id,
                timeouts=timeouts,
                started=started,
                upstream_model=upstream_model,
            )
        finally:
            self.upstreams.discard(response)
            # Whatever ended the relay (a cancellation too), a connection whose answer had not
            # fully arrived is closed, never left holding a place in the pool.
            response.close()

    async def _relay_answer(
        self,
        *,
        response: UpstreamResponse,
        meter: UsageMeter,
        client: ClientChannel,
        stream: bool,
        strip: bool,
        protocol: str,
        request_id: str,
        timeouts: Timeouts,
        started: float,
        upstream_model: str,
        checkpoint: Callable[[], None] | None = None,
    ) -> tuple[Relayed, UsageMeter, str]:
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
                checkpoint=checkpoint,
                checkpoint_every=settings.GATEWAY_OBSERVE_EVERY_SECONDS,
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

    def _observe(self, meter: UsageMeter, *, request_id: str, api_key_id: int) -> None:
        """Keep a held stream's usage so far on its pending record, in the background: if this
        process dies, recovery bills it (usage_source "observed") instead of the admission
        estimate (docs/gateway.md#pending-records). A write that lands after the recording has
        settled the record matches nothing."""
        usage, _source = meter.usage()
        observed = {name: getattr(usage, name) for name in OBSERVED_COUNTS}
        self._background(
            self.db.run(pending_observe, request_id=request_id, api_key_id=api_key_id, observed=observed)
        )

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
            finished_at=datetime.now(UTC),
        )
        hold.recorded = True  # the recording's transaction settles the holds
        self._background(self._settle(entry))

    async def _settle(self, entry: recorder.Entry) -> None:
        try:
            result, fresh = await self.recorder.record(entry)
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
        # Added here, so the callback runs in the request's context (its log lines name it).
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self.recordings.discard(task)
        # Read here, or it is reported only when the task is collected, long after and unnamed.
        if not task.cancelled() and (error := task.exception()) is not None:
            work = getattr(task.get_coro(), "__name__", "?")
            logger.error("background work failed (%s)", work, exc_info=error)

    def cut_upstreams(self) -> int:
        """A drain's time is up: close every upstream answer still being relayed. Each request
        ends as a cut stream (its client gets the error event) and is recorded with the usage seen."""
        self.cut_by_shutdown = True
        cut = list(self.upstreams)
        for response in cut:
            response.close()
        return len(cut)

    async def drain(self, *, timeout: float) -> None:
        """Wait for the recordings, slot releases and holds still running (shutdown)."""
        deadline = time.monotonic() + timeout
        while self.recordings or self.limiter.releasing or not self.hold_queue.idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logging.getLogger("gateway.shutdown").error(
                    "%d recordings did not finish in %.0f s", len(self.recordings), timeout
                )
                return
            await asyncio.wait(
                {*self.recordings, *self.limiter.releasing, *self.hold_queue.tasks}, timeout=remaining
            )


def _streams(route: Route, body: dict) -> bool:
    """Whether the request is relayed as a stream (embeddings and count_tokens never are)."""
    return bool(body.get("stream")) and route.kind not in (EMBEDDINGS, COUNT_TOKENS)


def _hold_ask(
    *,
    key: Any,
    channel: Any,
    model: str,
    mapped_model: str,
    guess: holds.Estimate | None,
    route: Route,
    body: dict,
    request_id: str,
    protocol: str,
) -> dict[str, Any]:
    """What the hold queue holds for a request (gateway.holds.hold_request's arguments), the
    candidate accounts aside."""
    return {
        "request_id": request_id,
        "key": key,
        "channel": channel,
        "kind": route.kind,
        "body": body,
        "model": model,
        "mapped_model": mapped_model,
        "protocol": protocol,
        "stream": _streams(route, body),
        "guess": guess,
    }


def _upstream_path(route: Route) -> str:
    return {
        "chat": "/v1/chat/completions",
        "responses": "/v1/responses",
        "embeddings": "/v1/embeddings",
        "messages": "/v1/messages",
        "count_tokens": "/v1/messages/count_tokens",
    }[route.kind]


def _admitted(admission: asyncio.Task) -> Hold | None:
    """The Hold an admission that has finished answered; None when it refused, failed or was
    cancelled (or has not finished)."""
    if not admission.done() or admission.cancelled() or admission.exception() is not None:
        return None
    decision = admission.result()
    return decision if isinstance(decision, Hold) else None


def _refused_at_once(admission: asyncio.Task) -> bool:
    """The admission has already answered, and not with a Hold (nothing to price for)."""
    return admission.done() and _admitted(admission) is None


def _abandon(admission: asyncio.Task) -> None:
    """The request stopped before it read its admission: give back what it took, once it has
    answered. It is not cancelled: its take may already be on its way (the Redis script sent, the
    database thread at work), and would then hold the slots until their lease ends."""
    admission.add_done_callback(_release_admitted)


def _release_admitted(admission: asyncio.Task) -> None:
    if (decision := _admitted(admission)) is not None:
        decision.release()


async def _give_back(taking: asyncio.Future) -> None:
    """Release a slot whose taking was started for a request that then failed."""
    slot = await taking
    if slot is not None:
        slot.release()
