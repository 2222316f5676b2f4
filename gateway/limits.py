"""Check 14 and the accounts' slots: requests in flight and requests per minute, shared by every
process (docs/gateway.md#shared-limits).

A limit is a **scope** (`user:7`, `key:3`, `account:2`, `rpm:user:7`, `rpm:group:1`) with a number
of slots. Taking a slot is one atomic step for all the scopes a request needs at once: either every
one fits and each gets the request's token, or the first that is full answers and nothing is taken.

- concurrency (user, key, account): a slot is held while the request runs and given back when it
  ends (`Slot.release`, also after an error or a client that left). It carries a lease
  (`GATEWAY_SLOT_LEASE_SECONDS`, longer than any request may run): a process that dies without
  giving its slots back leaves them taken until the lease ends, then they are free again;
- RPM (user, group): a slot is taken for 60 seconds and never given back: at most `limit` requests
  in any 60 seconds (a sliding window). Retry-After is when the oldest of them leaves the minute.

Three stores answer the same questions:

- `RedisLimiter` (when `REDIS_URL` is set): one Lua script per admission over a sorted set per
  scope (members are request tokens, scores their lease's end in Redis's own clock), sent on one
  pipelined connection per process (gateway/redis_wire.py); the releases of one event-loop turn
  go in one script call;
- `DatabaseLimiter` (no Redis): `gateway.SlotLease` rows, a unique (scope, slot number) pair per
  taken slot, in one transaction (gateway/services.py); PostgreSQL or SQLite;
- `ProcessLimiter`: this process's memory only (`GATEWAY_LIMITS=process`): exact for one worker,
  `workers ×` the limits with several. It is also what a Redis outage falls back to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from gateway.errors import GatewayError

logger = logging.getLogger("gateway")

WINDOW_SECONDS = 60.0
REDIS_PREFIX = "tollgate:limit:"


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str
    limit: int  # > 0; a 0 (no limit) is never asked for
    lease: float  # seconds the slot stays taken unless given back
    minute: bool = False  # an RPM slot: never given back, it leaves the window by itself


@dataclass(frozen=True, slots=True)
class Full:
    """The first limit that did not fit (its index in the request) and how long until one frees."""

    index: int
    wait: float


@dataclass(slots=True)
class Slot:
    """What one request took; give it back exactly once when the request ends."""

    limiter: Any  # a limiter, None once released
    token: str
    scopes: tuple[str, ...]  # the concurrency scopes to give back (minute slots stay)

    def release(self) -> None:
        limiter, self.limiter = self.limiter, None
        if limiter is not None and self.scopes:
            limiter.release_soon(self.token, self.scopes)


# The codes `request_limits` refuses with: the admission's own refusals, after the snapshot checks.
SLOT_REFUSALS = frozenset({"USER_CONCURRENCY_EXCEEDED", "API_KEY_CONCURRENCY_EXCEEDED", "USER_RPM_EXCEEDED"})


def request_limits(key: Any) -> list[tuple[Limit, str, str]]:
    """Check 14's limits for a key snapshot, in order, each with its refusal code and message."""
    user, group = key.user, key.group
    lease = slot_lease_seconds()
    found: list[tuple[Limit, str, str]] = []
    if user.concurrency:
        found.append(
            (
                Limit(f"user:{user.id}", user.concurrency, lease),
                "USER_CONCURRENCY_EXCEEDED",
                f"Too many requests in flight: this account allows {user.concurrency} at once.",
            )
        )
    if key.concurrency:
        found.append(
            (
                Limit(f"key:{key.id}", key.concurrency, lease),
                "API_KEY_CONCURRENCY_EXCEEDED",
                f"Too many requests in flight: this API key allows {key.concurrency} at once.",
            )
        )
    if user.rpm_limit:
        found.append(
            (
                Limit(f"rpm:user:{user.id}", user.rpm_limit, WINDOW_SECONDS, minute=True),
                "USER_RPM_EXCEEDED",
                f"Too many requests: this account allows {user.rpm_limit} per minute.",
            )
        )
    if group is not None and group.rpm_limit:
        found.append(
            (
                Limit(f"rpm:group:{group.id}", group.rpm_limit, WINDOW_SECONDS, minute=True),
                "USER_RPM_EXCEEDED",
                f"Too many requests: this group allows {group.rpm_limit} per minute.",
            )
        )
    return found


def slot_lease_seconds() -> float:
    return settings.GATEWAY_SLOT_LEASE_SECONDS or settings.GATEWAY_TOTAL_TIMEOUT + 60


class Limiter:
    """The shared part of every store: admission and account slots over `take` and `release`."""

    def __init__(self) -> None:
        self.releasing: set[asyncio.Task] = set()

    async def take(self, token: str, limits: Sequence[Limit]) -> Full | None:
        raise NotImplementedError

    async def release(self, token: str, scopes: Sequence[str]) -> None:
        raise NotImplementedError

    async def admit(self, *, key: Any, token: str) -> Slot | GatewayError:
        limits = request_limits(key)
        if not limits:
            return Slot(None, token, ())
        full = await self.take(token, [limit for limit, _, _ in limits])
        if full is not None:
            limit, code, message = limits[full.index]
            return GatewayError(code, message, retry_after=full.wait if limit.minute else 1)
        return Slot(self, token, tuple(limit.scope for limit, _, _ in limits if not limit.minute))

    async def take_account(self, *, account_id: int, concurrency: int, token: str) -> Slot | None:
        """A slot on the upstream account, or None when it is full (the scheduler tries the next)."""
        if not concurrency:
            return Slot(None, token, ())
        scope = f"account:{account_id}"
        if await self.take(token, [Limit(scope, concurrency, slot_lease_seconds())]) is not None:
            return None
        return Slot(self, token, (scope,))

    def release_soon(self, token: str, scopes: Sequence[str]) -> None:
        """Give slots back without making the caller wait (a `finally:` may run while cancelled)."""
        task = asyncio.ensure_future(self._release_logged(token, scopes))
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def _release_logged(self, token: str, scopes: Sequence[str]) -> None:
        try:
            await self.release(token, scopes)
        except Exception:
            logger.warning(
                "giving back slots %s of %s failed: their lease frees them", scopes, token, exc_info=True
            )

    async def drain(self, *, timeout: float) -> None:
        if self.releasing:
            await asyncio.wait(set(self.releasing), timeout=timeout)

    async def close(self) -> None:
        return None


class ProcessLimiter(Limiter):
    """This process's memory: scope → {token: lease end (monotonic)}."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: dict[str, dict[str, float]] = {}

    async def take(self, token: str, limits: Sequence[Limit]) -> Full | None:
        return self.take_now(token, limits)

    def take_now(self, token: str, limits: Sequence[Limit]) -> Full | None:
        now = time.monotonic()
        for index, limit in enumerate(limits):
            slots = self.taken.get(limit.scope)
            if not slots:
                continue
            for held, ends in list(slots.items()):
                if ends <= now:
                    del slots[held]
            if len(slots) >= limit.limit:
                ends = sorted(slots.values())
                return Full(index, ends[len(ends) - limit.limit] - now)
        for limit in limits:
            self.taken.setdefault(limit.scope, {})[token] = now + limit.lease
        return None

    async def release(self, token: str, scopes: Sequence[str]) -> None:
        self.release_now(token, scopes)

    def release_now(self, token: str, scopes: Sequence[str]) -> None:
        for scope in scopes:
            slots = self.taken.get(scope)
            if slots is not None:
                slots.pop(token, None)
                if not slots:
                    del self.taken[scope]

    def release_soon(self, token: str, scopes: Sequence[str]) -> None:
        self.release_now(token, scopes)


# KEYS: the scopes' sorted sets. ARGV: the token, then per scope its limit and lease (ms).
# Every scope is pruned of ended leases and checked before any is taken: all or nothing.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    return {i, tonumber(oldest[2]) - now}
  end
end
for i, key in ipairs(KEYS) do
  local lease = tonumber(ARGV[2 * i + 1])
  redis.call('ZADD', key, now + lease, ARGV[1])
  redis.call('PEXPIRE', key, lease + 1000)
end
return {0, 0}
"""


# KEYS: the scopes' sorted sets; ARGV: the token to remove from each, in the same order. Every
# release of one event-loop turn goes in one call (RedisLimiter.release_soon).
RELEASE_SCRIPT = """
for i, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[i])
end
return #KEYS
"""


class RedisLimiter(Limiter):
    """The scripts above over one pipelined connection per process (gateway/redis_wire.py)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        from gateway.redis_wire import RedisWire

        self.redis = RedisWire(url, timeout=settings.GATEWAY_REDIS_TIMEOUT)
        self.fallback = ProcessLimiter()
        self._to_release: list[tuple[str, str]] = []  # (scope, token) waiting for this turn's call

    async def take(self, token: str, limits: Sequence[Limit]) -> Full | None:
        args: list[Any] = [token]
        for limit in limits:
            args += [limit.limit, int(limit.lease * 1000)]
        try:
            index, wait_ms = await self.redis.script(
                TAKE_SCRIPT, [REDIS_PREFIX + limit.scope for limit in limits], args
            )
        except Exception:
            logger.warning("Redis is unreachable: limits counted in this process only", exc_info=True)
            return self.fallback.take_now(token, limits)
        if index == 0:
            return None
        return Full(int(index) - 1, int(wait_ms) / 1000)

    async def release(self, token: str, scopes: Sequence[str]) -> None:
        await self._release_pairs([(scope, token) for scope in scopes])

    def release_soon(self, token: str, scopes: Sequence[str]) -> None:
        """Queue the slots; the first release of this event-loop turn starts one call for all of
        them, which runs once the turn is over. A request gives back its account's slot and then
        its own in the same turn: one round trip instead of two."""
        first = not self._to_release
        self._to_release.extend((scope, token) for scope in scopes)
        if first and self._to_release:
            task = asyncio.ensure_future(self._release_queued())
            self.releasing.add(task)
            task.add_done_callback(self.releasing.discard)

    async def _release_queued(self) -> None:
        pairs, self._to_release = self._to_release, []
        try:
            await self._release_pairs(pairs)
        except Exception:
            logger.warning("giving back slots %s failed: their lease frees them", pairs, exc_info=True)

    async def _release_pairs(self, pairs: list[tuple[str, str]]) -> None:
        for scope, token in pairs:
            self.fallback.release_now(token, [scope])
        await self.redis.script(
            RELEASE_SCRIPT, [REDIS_PREFIX + scope for scope, _ in pairs], [token for _, token in pairs]
        )

    async def close(self) -> None:
        await self.redis.close()


class DatabaseLimiter(Limiter):
    """gateway.SlotLease rows through the gateway's database threads (gateway/services.py)."""

    def __init__(self, db: Any) -> None:
        super().__init__()
        self.db = db

    async def take(self, token: str, limits: Sequence[Limit]) -> Full | None:
        from gateway.services import slot_lease_take

        return await self.db.run(slot_lease_take, token=token, limits=limits)

    async def release(self, token: str, scopes: Sequence[str]) -> None:
        from gateway.services import slot_lease_release

        await self.db.run(slot_lease_release, token=token, scopes=scopes)


def limiter_for(db: Any) -> Limiter:
    """`GATEWAY_LIMITS`: redis (the default with `REDIS_URL`), database (the default without), process."""
    kind = settings.GATEWAY_LIMITS or ("redis" if settings.REDIS_URL else "database")
    if kind == "redis":
        return RedisLimiter(settings.REDIS_URL)
    if kind == "database":
        return DatabaseLimiter(db)
    if kind == "process":
        return ProcessLimiter()
    raise ValueError(f"GATEWAY_LIMITS must be redis, database or process, not {kind!r}")
