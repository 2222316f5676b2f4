from django.contrib import admin
from django.urls import include, path

from config import health
from console.views import auth

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("favicon.ico", health.favicon, name="favicon"),
    # Before admin.site.urls: the admin's own login would be a second, unthrottled way in.
    path("django-admin/login/", auth.admin_login, name="admin-login"),
    path("django-admin/", admin.site.urls),
    path("", include("console.urls")),
    path("", include("accounts.urls")),
    path("channels/", include("channels.urls")),
    path("usage/", include("billing.urls")),
    path("reconcile/", include("billing.reconcile_urls")),
]

handler400 = "console.views.errors.bad_request"
handler403 = "console.views.errors.permission_denied"
handler404 = "console.views.errors.page_not_found"
handler500 = "console.views.errors.server_error"
