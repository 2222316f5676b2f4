"""A started gateway process freezes what it loaded out of the garbage collector's full
collections (docs/gateway.md#serving)."""

from __future__ import annotations

import gc
import time

import pytest

from tests.gateway.conftest import gateway_app

pytestmark = pytest.mark.django_db(transaction=True)


def test_once_the_catalog_is_loaded_the_startup_objects_are_frozen(gateway_url):
    deadline = time.monotonic() + 30
    # The freeze runs as the catalog warm-up's done-callback, on the gateway's event loop.
    while not (gateway_app()._warming.done() and gc.get_freeze_count() > 50_000):
        assert time.monotonic() < deadline, f"only {gc.get_freeze_count()} objects frozen"
        time.sleep(0.05)
