from django.contrib import admin
from django.urls import include, path

from accounts.views import auth
from billing.views import dashboard
from config import health

urlpatterns = [
    path("", dashboard, name="dashboard"),
    path("login/", auth.login, name="login"),
    path("logout/", auth.logout, name="logout"),
    path("password/", auth.password_change, name="password_change"),
    path("password/done/", auth.password_change_done, name="password_change_done"),
    path("sign-in-locks/", auth.sign_in_lock_list, name="sign-in-locks"),
    path("sign-in-locks/<int:pk>/unlock", auth.sign_in_unlock, name="sign-in-unlock"),
    path("healthz", health.healthz, name="healthz"),
    path("favicon.ico", health.favicon, name="favicon"),
    # Before admin.site.urls: the admin's own login would be a second, unthrottled way in.
    path("django-admin/login/", auth.admin_login, name="admin-login"),
    path("django-admin/", admin.site.urls),
    path("", include("accounts.urls")),
    path("channels/", include("channels.urls")),
    path("usage/", include("billing.urls")),
]

handler400 = "accounts.views.errors.bad_request"
handler403 = "accounts.views.errors.permission_denied"
handler404 = "accounts.views.errors.page_not_found"
handler500 = "accounts.views.errors.server_error"
