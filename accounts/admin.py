"""Django admin, the fallback for anything the console does not cover yet."""

from collections.abc import Iterable

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from accounts.models import (
    APIKey,
    BalanceHistory,
    Group,
    GroupAccount,
    SignInCounter,
    Subscription,
    UpstreamAccount,
    User,
    UserGroupRate,
)
from accounts.snapshots import snapshots_changed


class AnnouncesSnapshotChanges:
    """The admin writes rows without the services, so it says what changed itself.

    `changed` maps an object to snapshots_changed's keyword arguments; it is read before a
    delete, while the row (and what points at it) still exists.
    """

    def changed(self, obj) -> dict[str, Iterable[int]]:
        raise NotImplementedError

    def save_related(self, request, form, formsets, change) -> None:
        # After the object, its many-to-many fields and inlines are saved.
        super().save_related(request, form, formsets, change)
        snapshots_changed(**self.changed(form.instance))

    def delete_model(self, request, obj) -> None:
        snapshots_changed(**self.changed(obj))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        for obj in queryset:
            snapshots_changed(**self.changed(obj))
        super().delete_queryset(request, queryset)


class BalanceHistoryInline(admin.TabularInline):
    model = BalanceHistory
    fk_name = "user"
    extra = 0
    can_delete = False
    readonly_fields = (
        "operation",
        "amount",
        "balance_before",
        "balance_after",
        "note",
        "changed_by",
        "created_at",
    )

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(User)
class UserAdmin(AnnouncesSnapshotChanges, DjangoUserAdmin):
    def changed(self, obj):
        return {"user_ids": [obj.pk]}

    ordering = ("-id",)
    list_display = (
        "email",
        "username",
        "role",
        "status",
        "balance",
        "is_staff",
        "console_role",
        "last_active_at",
        "created_at",
    )
    list_filter = ("status", "is_staff", "console_role", "is_superuser", "role")
    search_fields = ("email", "username", "notes")
    # Balance moves only through the console's adjust dialog (which keeps history) or billing.
    readonly_fields = ("balance", "total_recharged", "last_active_at", "last_login", "date_joined")
    filter_horizontal = ("allowed_groups", "groups", "user_permissions")
    inlines = [BalanceHistoryInline]
    fieldsets = (
        (None, {"fields": ("email", "username", "password")}),
        (
            "Customer",
            {
                "fields": (
                    "role",
                    "status",
                    "balance",
                    "total_recharged",
                    "concurrency",
                    "rpm_limit",
                    "allowed_groups",
                    "notes",
                    "last_active_at",
                )
            },
        ),
        (
            "Console access",
            {
                "fields": (
                    "is_active",
                    "is_staff",
                    "console_role",
                    "is_superuser",
                    "groups",
                    "user_permissions",
                ),
                "description": "Staff may sign in to the console; the console role says what they may do there "
                "(a superuser is always an admin). Django groups and permissions are not used by the console.",
            },
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(BalanceHistory)
class BalanceHistoryAdmin(admin.ModelAdmin):
    list_display = (
        "user",
        "operation",
        "amount",
        "balance_before",
        "balance_after",
        "changed_by",
        "created_at",
    )
    list_filter = ("operation",)
    search_fields = ("user__email", "note")
    list_select_related = ("user", "changed_by")
    readonly_fields = [f.name for f in BalanceHistory._meta.fields]


class GroupAccountInline(admin.TabularInline):
    model = GroupAccount
    extra = 0
    autocomplete_fields = ("account",)


@admin.register(Group)
class GroupAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"group_ids": [obj.pk]}

    list_display = (
        "name",
        "platform",
        "subscription_type",
        "rate_multiplier",
        "status",
        "is_exclusive",
        "sort_order",
    )
    list_filter = ("platform", "subscription_type", "status", "is_exclusive")
    search_fields = ("name", "description")
    inlines = [GroupAccountInline]


@admin.register(UserGroupRate)
class UserGroupRateAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"user_ids": [obj.user_id]}

    list_display = ("user", "group", "rate_multiplier")
    search_fields = ("user__email", "group__name")
    list_select_related = ("user", "group")


@admin.register(UpstreamAccount)
class UpstreamAccountAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"account_ids": [obj.pk], "group_ids": obj.memberships.values_list("group_id", flat=True)}

    list_display = (
        "name",
        "platform",
        "type",
        "status",
        "schedulable",
        "priority",
        "quota_used_usd",
        "quota_limit_usd",
        "last_used_at",
    )
    list_filter = ("platform", "type", "status", "schedulable")
    search_fields = ("name", "notes")
    # Counters move only through the atomic quota services.
    readonly_fields = (
        "quota_used_usd",
        "quota_daily_used_usd",
        "quota_daily_start",
        "quota_weekly_used_usd",
        "quota_weekly_start",
        "last_used_at",
    )


@admin.register(APIKey)
class APIKeyAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"key_ids": [obj.pk]}

    list_display = (
        "name",
        "masked",
        "user",
        "group",
        "status",
        "quota_used_usd",
        "quota_usd",
        "expires_at",
        "last_used_at",
    )
    list_filter = ("status", "group")
    search_fields = ("name", "key_prefix", "user__email")
    list_select_related = ("user", "group")
    readonly_fields = (
        "key_prefix",
        "key_last4",
        "quota_used_usd",
        "usage_5h_usd",
        "usage_1d_usd",
        "usage_7d_usd",
        "window_5h_start",
        "window_1d_start",
        "window_7d_start",
        "last_used_at",
    )


@admin.register(Subscription)
class SubscriptionAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"subscription_ids": [obj.pk], "user_ids": [obj.user_id]}

    list_display = (
        "user",
        "group",
        "status",
        "starts_at",
        "expires_at",
        "daily_usage_usd",
        "weekly_usage_usd",
        "monthly_usage_usd",
    )
    list_filter = ("status", "group")
    search_fields = ("user__email", "group__name", "notes")
    list_select_related = ("user", "group")
    readonly_fields = (
        "daily_usage_usd",
        "weekly_usage_usd",
        "monthly_usage_usd",
        "daily_window_start",
        "weekly_window_start",
        "monthly_window_start",
    )


@admin.register(SignInCounter)
class SignInCounterAdmin(admin.ModelAdmin):
    """Read-only; deleting a counter lifts its lock (the console's Sign-in locks page does the same)."""

    list_display = ["kind", "value", "attempts", "window_ends_at", "last_attempt_at"]
    list_filter = ["kind"]
    search_fields = ["value"]
    readonly_fields = list_display

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
