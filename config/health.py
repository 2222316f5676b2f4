from django.db import connection
from django.http import HttpRequest, JsonResponse

from accounts.access import public


@public
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers: answers 200 while the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
