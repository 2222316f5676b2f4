"""The auth snapshot cache (docs/gateway.md#auth-snapshot): keys, channels and accounts, per process.

Key snapshots (accounts.snapshots.KeySnapshot), by the SHA-256 of the presented secret:
- layer 1, this process: `GATEWAY_SNAPSHOT_TTL` seconds, at most `GATEWAY_SNAPSHOT_CACHE_SIZE`
  (least recently used first out);
- layer 2, Redis when `REDIS_URL` is set: `GATEWAY_SNAPSHOT_REDIS_TTL` seconds, the snapshot's
  JSON form (`as_dict`), with tag sets (`snap:tag:user:<id>` → hashes…) so an invalidation can
  find every entry it affects;
- unknown hashes: a negative entry in this process only, `GATEWAY_NEGATIVE_TTL` seconds, at most
  `GATEWAY_NEGATIVE_CACHE_SIZE`, so a flood of random keys costs one query per distinct key;
- concurrent misses for one hash load once (single-flight); loads run on the database threads.

Channel snapshots (by group) and account snapshots (by id) are cached in this process for the
same TTL, loaded single-flight too (an expiry under load costs one query, not one per request). Credentials are decrypted in this process, on first use, and never leave it.

Invalidation (gateway.invalidation) drops entries by the ids that changed, in this process at once
and in every other one through Redis pub/sub. A load that was running when an invalidation
arrived is returned to its caller but not cached (the generation moved).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from django.conf import settings

from accounts.crypto import decrypt_credentials
from accounts.snapshots import (
    KeySnapshot,
    SnapshotChange,
    SnapshotSchemaError,
    key_snapshot_load,
    upstream_account_snapshots_load,
)
from channels.snapshots import channel_snapshot_for_group
from gateway import invalidation

logger = logging.getLogger("gateway")

REDIS_KEY = "snap:key:"
REDIS_TAG = "snap:tag:"


def redis_tags(snapshot: KeySnapshot) -> list[str]:
    tags = [f"{REDIS_TAG}key:{snapshot.id}", f"{REDIS_TAG}user:{snapshot.user_id}"]
    if snapshot.group_id is not None:
        tags.append(f"{REDIS_TAG}group:{snapshot.group_id}")
    if snapshot.subscription is not None:
        tags.append(f"{REDIS_TAG}subscription:{snapshot.subscription.id}")
    return tags


def change_tags(change: SnapshotChange) -> list[str]:
    return [
        *(f"{REDIS_TAG}key:{i}" for i in change.key_ids),
        *(f"{REDIS_TAG}user:{i}" for i in change.user_ids),
        *(f"{REDIS_TAG}group:{i}" for i in change.group_ids),
        *(f"{REDIS_TAG}subscription:{i}" for i in change.subscription_ids),
    ]


class SnapshotCache:
    def __init__(self, *, db: Any) -> None:
        self.db = db
        self.ttl = settings.GATEWAY_SNAPSHOT_TTL
        self.size = settings.GATEWAY_SNAPSHOT_CACHE_SIZE
        self.negative_ttl = settings.GATEWAY_NEGATIVE_TTL
        self.negative_size = settings.GATEWAY_NEGATIVE_CACHE_SIZE
        self._keys: OrderedDict[str, tuple[float, KeySnapshot]] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}
        self._index: dict[tuple[str, int], set[str]] = {}
        self._channels: dict[int, tuple[float, Any]] = {}
        self._accounts: dict[int, tuple[float, Any]] = {}
        self._channel_loads: dict[int, asyncio.Future] = {}
        self._account_loads: dict[int, asyncio.Future] = {}
        self._credentials: dict[str, dict] = {}
        self.generation = 0
        self.redis = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_accounts_reloaded: Callable[[Iterable[int]], None] | None = None
        self.stats = {"key_hits": 0, "key_misses": 0, "negative_hits": 0, "redis_hits": 0, "db_loads": 0}
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if settings.REDIS_URL:
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(settings.REDIS_URL)
            self._listener = self.loop.create_task(invalidation.listen(self))
        invalidation.attach(self)

    async def stop(self) -> None:
        invalidation.detach(self)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self.redis is not None:
            await self.redis.aclose()

    # --- keys ---------------------------------------------------------------------------------

    async def key(self, key_hash: str) -> KeySnapshot | None:
        now = time.monotonic()
        entry = self._keys.get(key_hash)
        if entry is not None and entry[0] > now:
            self.stats["key_hits"] += 1
            return entry[1]
        negative = self._negative.get(key_hash)
        if negative is not None and negative > now:
            self.stats["negative_hits"] += 1
            return None
        loading = self._loading.get(key_hash)
        if loading is not None:
            return await asyncio.shield(loading)
        self.stats["key_misses"] += 1
        future = self.loop.create_future()
        self._loading[key_hash] = future
        try:
            snapshot = await self._load_key(key_hash)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters re-raise it, nobody else must be told
            raise
        else:
            future.set_result(snapshot)
            return snapshot
        finally:
            del self._loading[key_hash]

    async def _load_key(self, key_hash: str) -> KeySnapshot | None:
        generation = self.generation
        if self.redis is not None:
            snapshot = await self._from_redis(key_hash)
            if snapshot is not None:
                self.stats["redis_hits"] += 1
                if generation == self.generation:
                    self._store(key_hash, snapshot)
                return snapshot
        self.stats["db_loads"] += 1
        snapshot = await self.db.run(key_snapshot_load, key_hash)
        if generation != self.generation:
            return snapshot  # an invalidation came while loading: serve it once, keep nothing
        if snapshot is None:
            self._negative[key_hash] = time.monotonic() + self.negative_ttl
            self._negative.move_to_end(key_hash)
            while len(self._negative) > self.negative_size:
                self._negative.popitem(last=False)
            return None
        self._store(key_hash, snapshot)
        if self.redis is not None:
            await self._to_redis(key_hash, snapshot)
        return snapshot

    async def _from_redis(self, key_hash: str) -> KeySnapshot | None:
        try:
            raw = await self.redis.get(REDIS_KEY + key_hash)
        except Exception:
            logger.warning("Redis is unreachable: reading key snapshots from the database", exc_info=True)
            return None
        if raw is None:
            return None
        try:
            return KeySnapshot.from_dict(orjson.loads(raw))
        except (SnapshotSchemaError, ValueError, KeyError, TypeError):
            return None  # written by another version of the code: reload it

    async def _to_redis(self, key_hash: str, snapshot: KeySnapshot) -> None:
        ttl = settings.GATEWAY_SNAPSHOT_REDIS_TTL
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(REDIS_KEY + key_hash, orjson.dumps(snapshot.as_dict()), ex=ttl)
                for tag in redis_tags(snapshot):
                    pipe.sadd(tag, key_hash)
                    pipe.expire(tag, ttl * 2)
                await pipe.execute()
        except Exception:
            logger.warning("Redis is unreachable: key snapshot kept in this process only", exc_info=True)

    def _store(self, key_hash: str, snapshot: KeySnapshot) -> None:
        if key_hash in self._keys:
            self._unindex(key_hash, self._keys[key_hash][1])
        self._keys[key_hash] = (time.monotonic() + self.ttl, snapshot)
        self._keys.move_to_end(key_hash)
        for tag in self._tags(snapshot):
            self._index.setdefault(tag, set()).add(key_hash)
        while len(self._keys) > self.size:
            old_hash, (_, old) = self._keys.popitem(last=False)
            self._unindex(old_hash, old)

    def refresh(self, admitted: KeySnapshot, fresh: KeySnapshot) -> None:
        """Keep the counters a charge returned in place of the admitted snapshot's (same expiry),
        unless the entry was dropped or reloaded since: a newer load knows better."""
        if fresh is admitted:
            return
        entry = self._keys.get(admitted.key_hash)
        if entry is not None and entry[1] is admitted:
            self._keys[admitted.key_hash] = (entry[0], fresh)

    @staticmethod
    def _tags(snapshot: KeySnapshot) -> list[tuple[str, int]]:
        tags = [("key", snapshot.id), ("user", snapshot.user_id)]
        if snapshot.group_id is not None:
            tags.append(("group", snapshot.group_id))
        if snapshot.subscription is not None:
            tags.append(("subscription", snapshot.subscription.id))
        return tags

    def _unindex(self, key_hash: str, snapshot: KeySnapshot) -> None:
        for tag in self._tags(snapshot):
            hashes = self._index.get(tag)
            if hashes is not None:
                hashes.discard(key_hash)
                if not hashes:
                    del self._index[tag]

    # --- channels and accounts -----------------------------------------------------------------

    async def channel(self, group_id: int) -> Any:
        entry = self._channels.get(group_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        # Single-flight, as for keys: when the entry expires under load, the requests that find
        # it expired wait for one load instead of each running their own.
        loading = self._channel_loads.get(group_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future = self.loop.create_future()
        self._channel_loads[group_id] = future
        try:
            generation = self.generation
            channel = await self.db.run(channel_snapshot_for_group, group_id)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters re-raise it
            raise
        else:
            future.set_result(channel)
        finally:
            del self._channel_loads[group_id]
        if generation == self.generation:
            self._channels[group_id] = (time.monotonic() + self.ttl, channel)
        return channel

    async def accounts(self, ids: list[int]) -> dict[int, Any]:
        now = time.monotonic()
        found: dict[int, Any] = {}
        missing = []
        waiting: dict[int, asyncio.Future] = {}
        for account_id in ids:
            entry = self._accounts.get(account_id)
            if entry is not None and entry[0] > now:
                found[account_id] = entry[1]
            elif (loading := self._account_loads.get(account_id)) is not None:
                waiting[account_id] = loading  # another request is loading it (single-flight)
            else:
                missing.append(account_id)
        if missing:
            future = self.loop.create_future()
            for account_id in missing:
                self._account_loads[account_id] = future
            try:
                generation = self.generation
                loaded = await self.db.run(upstream_account_snapshots_load, missing)
            except BaseException as error:
                future.set_exception(error)
                future.exception()
                raise
            else:
                future.set_result(loaded)
            finally:
                for account_id in missing:
                    if self._account_loads.get(account_id) is future:
                        del self._account_loads[account_id]
            if generation == self.generation:
                expires = time.monotonic() + self.ttl
                for account_id, snapshot in loaded.items():
                    self._accounts[account_id] = (expires, snapshot)
            found.update(loaded)
        for account_id, loading in waiting.items():
            loaded = await asyncio.shield(loading)
            if account_id in loaded:
                found[account_id] = loaded[account_id]
        return found

    def credentials(self, account: Any) -> dict:
        ciphertext = account.credentials_encrypted
        plain = self._credentials.get(ciphertext)
        if plain is None:
            plain = decrypt_credentials(ciphertext) if ciphertext else {}
            if len(self._credentials) > 10_000:
                self._credentials.clear()
            self._credentials[ciphertext] = plain
        return plain

    # --- invalidation ----------------------------------------------------------------------------

    def apply(self, change: SnapshotChange) -> list[str]:
        """Drop what `change` affects from this process; the key hashes dropped."""
        self.generation += 1
        hashes: set[str] = set()
        for kind, ids in (
            ("key", change.key_ids),
            ("user", change.user_ids),
            ("group", change.group_ids),
            ("subscription", change.subscription_ids),
        ):
            for tag_id in ids:
                hashes |= self._index.get((kind, tag_id), set())
        for group_id, (_, channel) in list(self._channels.items()):
            if group_id in change.group_ids or (channel is not None and channel.id in change.channel_ids):
                del self._channels[group_id]
        if change.channel_ids and not change.group_ids:
            # A channel that gained a group is not yet cached under it: forget every "no channel".
            for group_id, (_, channel) in list(self._channels.items()):
                if channel is None:
                    del self._channels[group_id]
        for account_id in change.account_ids:
            self._accounts.pop(account_id, None)
        if change.account_ids and self.on_accounts_reloaded is not None:
            # The rows now carry what this process had marked (or an operator cleared it).
            self.on_accounts_reloaded(change.account_ids)
        if change.key_ids or change.user_ids:
            self._negative.clear()  # a new key's hash may have been refused a moment ago
        for key_hash in hashes:
            entry = self._keys.pop(key_hash, None)
            if entry is not None:
                self._unindex(key_hash, entry[1])
        return sorted(hashes)

    def clear(self) -> None:
        """Forget everything (the invalidation listener lost its connection: events may be lost)."""
        self.generation += 1
        self._keys.clear()
        self._negative.clear()
        self._index.clear()
        self._channels.clear()
        self._accounts.clear()
