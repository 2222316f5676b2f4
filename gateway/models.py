"""The gateway's own rows: slot leases, when no Redis is configured (docs/gateway.md#shared-limits)."""

from __future__ import annotations

from django.db import models


class SlotLease(models.Model):
    """One taken slot of a shared limit: `scope` names the limit (`user:7`, `key:3`, `account:2`,
    `rpm:user:7`, `rpm:group:1`), `slot` is its number below the limit. The unique pair is what
    makes a limit exact across processes: two requests cannot both take slot 4 of `user:7`.
    A concurrency slot is deleted when its request ends; a minute slot (RPM) is left to expire.
    Either is free again past `expires_at`, so a process that died leaves nothing taken for long."""

    scope = models.CharField(max_length=64)
    slot = models.PositiveIntegerField()
    token = models.CharField(max_length=64)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "slot"], name="slotlease_scope_slot_unique")]
        indexes = [models.Index(fields=["token"], name="slotlease_token_idx")]

    def __str__(self) -> str:
        return f"{self.scope}#{self.slot}"
