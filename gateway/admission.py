"""The seam between the relay and the limits: `admit` a request, `settle` it when it is over.

Issue 12: `admit` runs the checks in docs/gateway.md order over the cached snapshots (checks 3 to
13), takes the user's and the key's slots and the RPM marks (check 14, shared by every process:
gateway.limits) and applies restrict_models (check 15); it answers a `Hold` or the refusal.
`Hold.release` gives the slots back; recording happens after the response (gateway.recorder). Issue 13 swaps this module for holds that are exact across
processes (reserve an estimate against every limit, settle it to the real cost in the recording
transaction) without touching the relay: the relay only ever calls `admit` and `Hold.release`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.checks import key_refusal, model_refusal
from gateway.errors import GatewayError
from gateway.limits import Limiter, Slot


@dataclass(slots=True)
class Hold:
    """An admitted request: what it was admitted on, and what it holds until it ends."""

    key: Any  # KeySnapshot
    channel: Any  # ChannelSnapshot | None
    model: str  # as requested
    mapped_model: str  # after the channel's mapping
    slot: Slot
    released: bool = field(default=False)
    # Issue 13: the estimate held for the request and its pending record (gateway.holds.HoldQueue,
    # docs/gateway.md#holds-and-settle), None until held; `recorded` once a recording will settle it.
    pending: Any = field(default=None)
    recorded: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slot.release()


async def admit(
    *,
    key: Any,
    channel: Any,
    now: datetime,
    client_ip: str,
    protocol: str,
    model: str,
    mapped_model: str,
    limiter: Limiter,
    request_id: str,
) -> Hold | GatewayError:
    refusal = key_refusal(key, now=now, client_ip=client_ip, protocol=protocol)
    if refusal is not None:
        return refusal
    slot = await limiter.admit(key=key, token=request_id)
    if isinstance(slot, GatewayError):
        return slot
    refusal = model_refusal(channel, platform=key.group.platform, model=model, mapped_model=mapped_model)
    if refusal is not None:
        slot.release()
        return refusal
    return Hold(key=key, channel=channel, model=model, mapped_model=mapped_model, slot=slot)
