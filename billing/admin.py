from django.contrib import admin

from billing.models import UsageLog, UsageRollup


@admin.register(UsageLog)
class UsageLogAdmin(admin.ModelAdmin):
    """Read-only: the ledger is written by billing.services.usage_record and never edited."""

    list_display = (
        "created_at",
        "request_id",
        "user",
        "api_key",
        "requested_model",
        "pricing_source",
        "total_cost",
        "actual_cost",
        "status_code",
    )
    list_filter = ("pricing_source", "billing_mode", "stream")
    search_fields = ("=request_id", "requested_model", "user__email")
    list_select_related = ("user", "api_key")
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(UsageRollup)
class UsageRollupAdmin(admin.ModelAdmin):
    list_display = ("hour", "user_id", "api_key_id", "requested_model", "requests", "actual_cost")
    date_hierarchy = "hour"
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
