"""Snapshot invalidation across processes (docs/gateway.md#auth-snapshot).

`on_snapshots_changed` is registered with accounts.snapshots (GatewayConfig.ready) and hears every
committed change to a key, user, group, subscription, account or channel, in whatever process
and thread committed it (a console view, the gateway's recorder, a Celery task). It

1. drops the affected entries of this process's cache at once (on the cache's event loop);
2. with Redis: deletes the affected key snapshots from Redis (found through their tag sets) and
   publishes the change on `GATEWAY_INVALIDATION_CHANNEL`.

Every gateway process runs `listen`, which applies what the others publish to its own cache.
When the subscription drops, the process forgets its whole cache once reconnected: a change it
missed must not keep a stale snapshot alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings

if TYPE_CHECKING:
    from accounts.snapshots import SnapshotChange

logger = logging.getLogger("gateway")

ORIGIN = f"{os.getpid()}-{secrets.token_hex(4)}"
_caches: set[Any] = set()
_client = None
_client_lock = threading.Lock()


def attach(cache: Any) -> None:
    _caches.add(cache)


def detach(cache: Any) -> None:
    _caches.discard(cache)


def on_snapshots_changed(change: SnapshotChange) -> None:
    for cache in list(_caches):
        loop = cache.loop
        if loop is None or loop.is_closed():
            continue
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            cache.apply(change)
        else:
            loop.call_soon_threadsafe(cache.apply, change)
    if settings.REDIS_URL:
        try:
            publish(change)
        except Exception:
            # The change has committed; other processes fall back on their snapshot TTL.
            logger.exception("could not publish a snapshot invalidation")


def _redis():
    global _client
    with _client_lock:
        if _client is None:
            import redis

            _client = redis.Redis.from_url(settings.REDIS_URL)
        return _client


def publish(change: SnapshotChange) -> None:
    from gateway.auth import REDIS_KEY, change_tags

    client = _redis()
    tags = change_tags(change)
    if tags:
        hashes = set().union(*(client.smembers(tag) for tag in tags))
        client.delete(*tags, *(REDIS_KEY.encode() + key_hash for key_hash in hashes))
    client.publish(
        settings.GATEWAY_INVALIDATION_CHANNEL,
        orjson.dumps({"origin": ORIGIN, "change": change.as_dict()}),
    )


async def listen(cache: Any) -> None:
    from accounts.snapshots import SnapshotChange
    from gateway.auth import REDIS_KEY

    while True:
        pubsub = cache.redis.pubsub()
        try:
            await pubsub.subscribe(settings.GATEWAY_INVALIDATION_CHANNEL)
            cache.clear()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                payload = orjson.loads(message["data"])
                if payload.get("origin") == ORIGIN:
                    continue  # applied when it was published
                hashes = cache.apply(SnapshotChange.from_dict(payload["change"]))
                if hashes:
                    await cache.redis.delete(*(REDIS_KEY + key_hash for key_hash in hashes))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("snapshot invalidation listener lost Redis; reconnecting", exc_info=True)
            await asyncio.sleep(1)
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await pubsub.aclose()
