"""The console's own pages. The names stay un-namespaced ("login", "dashboard"): Django's auth
views and settings.LOGIN_URL expect them so."""

from django.urls import path

from console.views import auth, home, reconcile_api

urlpatterns = [
    path("", home.dashboard, name="dashboard"),
    path("users/<int:pk>/usage/", home.user_usage, name="user-usage"),
    path("login/", auth.login, name="login"),
    path("logout/", auth.logout, name="logout"),
    path("password/", auth.password_change, name="password_change"),
    path("password/done/", auth.password_change_done, name="password_change_done"),
    path("sign-in-locks/", auth.sign_in_lock_list, name="sign-in-locks"),
    path("sign-in-locks/<int:pk>/unlock", auth.sign_in_unlock, name="sign-in-unlock"),
    # JSON for scripts: staff session or the admin token (console/views/reconcile_api.py).
    path("reconcile/api/runs", reconcile_api.runs, name="reconcile-api-runs"),
    path("reconcile/api/batches/<str:batch_id>", reconcile_api.batch, name="reconcile-api-batch"),
]
