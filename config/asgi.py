"""One ASGI application for the console and the gateway (docs/gateway.md, README "The gateway").

Paths under /v1/ and /metrics go to the gateway's own raw ASGI app (gateway/app.py), so an API
request (or a scrape) pays for none of Django's request handling or the console's middleware;
everything else goes to Django. The gateway also takes the ASGI lifespan: it starts and stops what a process shares (the
upstream connection pool, the database threads, the snapshot cache and its Redis listener).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

console = get_asgi_application()
if settings.DEBUG:
    # `make run`: static files from the apps' folders, as runserver serves them.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    console = ASGIStaticFilesHandler(console)

from django.urls import get_resolver  # noqa: E402

from gateway.app import application as gateway  # noqa: E402

# The console's URLconf imports every view module. Left to the first console request, that import
# ran on the event loop and held up this worker's gateway requests for about 0.4 s (the loop
# watchdog showed it: docs/gateway.md#event-loop-lag-and-stalls); at start-up it costs nothing.
get_resolver().url_patterns  # noqa: B018 - the import is the point


async def application(scope, receive, send):
    if (
        scope["type"] == "lifespan"
        or scope["type"] == "http"
        and (scope["path"].startswith("/v1/") or scope["path"] in ("/v1", "/metrics"))
    ):
        await gateway(scope, receive, send)
    else:
        await console(scope, receive, send)
