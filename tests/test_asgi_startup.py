"""Loading the ASGI application imports what the first console request would otherwise import on
the event loop (config/asgi.py; docs/gateway.md#event-loop-lag-and-stalls)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_loading_the_asgi_application_imports_the_consoles_views_before_any_request():
    probe = (
        "import sys, config.asgi; "
        "print(all(name in sys.modules for name in ('billing.views', 'console.views.home')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "True"
