from django.urls import path

from accounts.views import groups, keys, subscriptions, upstream, users

app_name = "accounts"

urlpatterns = [
    path("users/", users.user_list, name="user-list"),
    path("users/new", users.user_create_view, name="user-create"),
    path("users/picker", users.user_picker, name="user-picker"),
    path("users/<int:pk>/", users.user_detail, name="user-detail"),
    path("users/<int:pk>/summary", users.user_summary, name="user-summary"),
    path("users/<int:pk>/balance", users.user_balance_dialog, name="user-balance"),
    path("users/<int:pk>/status", users.user_status_dialog, name="user-status"),
    path("users/<int:pk>/rates", users.user_rates, name="user-rates"),
    path("users/<int:pk>/rates/<int:rate_id>/remove", users.user_rate_remove, name="user-rate-remove"),
    path("keys/", keys.key_list, name="key-list"),
    path("keys/new", keys.key_create_view, name="key-create"),
    path("keys/group-options", keys.key_group_options, name="key-group-options"),
    path("keys/<int:pk>/", keys.key_detail, name="key-detail"),
    path("keys/<int:pk>/cells", keys.key_cells, name="key-cells"),
    path("keys/<int:pk>/reset-quota", keys.key_reset_quota_dialog, name="key-reset-quota"),
    path("keys/<int:pk>/clear-expiration", keys.key_clear_expiration_dialog, name="key-clear-expiration"),
    path("keys/<int:pk>/reset-windows", keys.key_reset_windows_dialog, name="key-reset-windows"),
    path("keys/<int:pk>/status", keys.key_status_dialog, name="key-status"),
    path("keys/<int:pk>/delete", keys.key_delete_dialog, name="key-delete"),
    path("subscriptions/", subscriptions.subscription_list, name="subscription-list"),
    path("subscriptions/assign", subscriptions.subscription_assign_view, name="subscription-assign"),
    path("subscriptions/<int:pk>/", subscriptions.subscription_detail, name="subscription-detail"),
    path("subscriptions/<int:pk>/summary", subscriptions.subscription_summary, name="subscription-summary"),
    path(
        "subscriptions/<int:pk>/extend", subscriptions.subscription_extend_dialog, name="subscription-extend"
    ),
    path(
        "subscriptions/<int:pk>/reset-windows",
        subscriptions.subscription_reset_windows_dialog,
        name="subscription-reset-windows",
    ),
    path(
        "subscriptions/<int:pk>/status", subscriptions.subscription_status_dialog, name="subscription-status"
    ),
    path(
        "subscriptions/<int:pk>/revoke", subscriptions.subscription_revoke_dialog, name="subscription-revoke"
    ),
    path("groups/", groups.group_list, name="group-list"),
    path("groups/new", groups.group_create_view, name="group-create"),
    path("groups/sort-order", groups.group_sort_order, name="group-sort-order"),
    path("groups/<int:pk>/", groups.group_detail, name="group-detail"),
    path("groups/<int:pk>/edit", groups.group_edit, name="group-edit"),
    path("groups/<int:pk>/delete", groups.group_delete_dialog, name="group-delete"),
    path(
        "groups/<int:pk>/accounts/<int:account_pk>/priority",
        groups.group_account_priority,
        name="group-account-priority",
    ),
    path("accounts/", upstream.account_list, name="account-list"),
    path("accounts/new", upstream.account_create, name="account-create"),
    path("accounts/<int:pk>/", upstream.account_edit, name="account-edit"),
    path("accounts/<int:pk>/quota-badge", upstream.account_quota_badge, name="account-quota-badge"),
    path("accounts/<int:pk>/reset-quota", upstream.account_quota_reset, name="account-quota-reset"),
    path("accounts/<int:pk>/schedulable", upstream.account_schedulable, name="account-schedulable"),
    path("accounts/<int:pk>/clear-error", upstream.account_clear_error, name="account-clear-error"),
    path("accounts/<int:pk>/delete", upstream.account_delete, name="account-delete"),
]
