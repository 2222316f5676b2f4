"""Helpers for the hold tests of several folders (billing's statements, the gateway's holds)."""

from __future__ import annotations


def held(model, pk, field="held_usd"):
    """What a counted row holds now (docs/gateway.md#holds-and-settle)."""
    return model.objects.values_list(field, flat=True).get(pk=pk)
