from django.urls import path

from accounts.views import users

app_name = "accounts"

urlpatterns = [
    path("users/", users.user_list, name="user-list"),
    path("users/new", users.user_create_view, name="user-create"),
    path("users/<int:pk>/", users.user_detail, name="user-detail"),
    path("users/<int:pk>/summary", users.user_summary, name="user-summary"),
    path("users/<int:pk>/balance", users.user_balance_dialog, name="user-balance"),
    path("users/<int:pk>/status", users.user_status_dialog, name="user-status"),
    path("users/<int:pk>/rates", users.user_rates, name="user-rates"),
    path("users/<int:pk>/rates/<int:rate_id>/remove", users.user_rate_remove, name="user-rate-remove"),
]
