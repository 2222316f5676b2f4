"""The console's URLs plus a stand-in for a gateway API route (public, under /v1/)."""

from django.http import JsonResponse
from django.urls import path

from config.urls import urlpatterns as console_urlpatterns
from console.access import public


@public
def models(request):
    response = JsonResponse({"object": "list", "data": []})
    response["Cache-Control"] = "max-age=60"
    return response


urlpatterns = [path("v1/models", models), *console_urlpatterns]
