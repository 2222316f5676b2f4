"""Check 14: the user's requests in flight and requests per minute (docs/gateway.md#checks).

Counted in this process, in memory: cheap and exact for one worker. With several workers each
keeps its own count, so a user can have up to `workers ×` their limits in flight; issue 13
replaces this with slots and RPM windows shared by every process (docs/gateway.md#holds-and-settle).

- concurrency: `user.concurrency` requests in flight (0 = no limit);
- RPM: `user.rpm_limit` requests in any 60 seconds for the user, and the group's `rpm_limit` for
  all of the group's requests together (0 = no limit). Retry-After is when the oldest request
  counted leaves the window.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from gateway.errors import GatewayError

WINDOW_SECONDS = 60.0


@dataclass(slots=True)
class Slot:
    """A request admitted by the limiter; release it exactly once when the request ends."""

    limiter: LocalLimiter | None
    user_id: int

    def release(self) -> None:
        if self.limiter is not None:
            self.limiter._release(self.user_id)
            self.limiter = None


@dataclass(slots=True)
class LocalLimiter:
    in_flight: dict[int, int] = field(default_factory=dict)
    user_requests: dict[int, deque[float]] = field(default_factory=dict)
    group_requests: dict[int, deque[float]] = field(default_factory=dict)

    def admit(
        self, *, user_id: int, concurrency: int, user_rpm: int, group_id: int, group_rpm: int
    ) -> Slot | GatewayError:
        now = time.monotonic()
        in_flight = self.in_flight.get(user_id, 0)
        if concurrency and in_flight >= concurrency:
            return GatewayError(
                "USER_CONCURRENCY_EXCEEDED",
                f"Too many requests in flight: this account allows {concurrency} at once.",
                retry_after=1,
            )
        for requests, limit, who in (
            (self.user_requests, user_rpm, user_id),
            (self.group_requests, group_rpm, group_id),
        ):
            if limit and (wait := _rpm_wait(requests.get(who), limit, now)) is not None:
                scope = "account" if requests is self.user_requests else "group"
                return GatewayError(
                    "USER_RPM_EXCEEDED",
                    f"Too many requests: this {scope} allows {limit} per minute.",
                    retry_after=wait,
                )
        for requests, limit, who in (
            (self.user_requests, user_rpm, user_id),
            (self.group_requests, group_rpm, group_id),
        ):
            if limit:
                requests.setdefault(who, deque()).append(now)
        self.in_flight[user_id] = in_flight + 1
        return Slot(self, user_id)

    def _release(self, user_id: int) -> None:
        count = self.in_flight.get(user_id, 0)
        if count <= 1:
            self.in_flight.pop(user_id, None)
        else:
            self.in_flight[user_id] = count - 1


def _rpm_wait(requests: deque[float] | None, limit: int, now: float) -> float | None:
    """Seconds until one more request fits in the last minute, or None when it fits now."""
    if not requests:
        return None
    while requests and requests[0] <= now - WINDOW_SECONDS:
        requests.popleft()
    if len(requests) < limit:
        return None
    return requests[len(requests) - limit] + WINDOW_SECONDS - now
