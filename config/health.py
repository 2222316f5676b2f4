from django.db import connection
from django.http import HttpRequest, HttpResponsePermanentRedirect, JsonResponse
from django.templatetags.static import static

from accounts.access import public


@public
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers: answers 200 while the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@public
def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    # Browsers ask for /favicon.ico on pages (Django admin) that do not link ours.
    return HttpResponsePermanentRedirect(static("img/favicon.svg"))
