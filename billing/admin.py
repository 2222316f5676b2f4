from django.contrib import admin

from billing.models import ReconcileDiscrepancy, ReconcileRun, UsageCarryForward, UsageLog, UsageRollup


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


@admin.register(ReconcileRun)
class ReconcileRunAdmin(admin.ModelAdmin):
    """Status is editable so a run whose worker died can be marked failed, freeing its scope."""

    list_display = (
        "created_at",
        "batch_id",
        "host_id",
        "scope",
        "mode",
        "status",
        "checked",
        "drifted",
        "fixed",
    )
    list_filter = ("scope", "mode", "status", "host_id")
    search_fields = ("=batch_id",)
    fields = (
        "status",
        "batch_id",
        "host_id",
        "scope",
        "period",
        "mode",
        "started_by_label",
        "created_at",
        "started_at",
        "finished_at",
        "total",
        "checked",
        "drifted",
        "fixed",
        "error",
    )
    readonly_fields = tuple(name for name in fields if name != "status")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(ReconcileDiscrepancy)
class ReconcileDiscrepancyAdmin(admin.ModelAdmin):
    list_display = ("run", "entity_kind", "entity_id", "field", "stored", "recomputed", "delta", "fixed")
    list_filter = ("entity_kind", "fixed")
    search_fields = ("=batch_id",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(UsageCarryForward)
class UsageCarryForwardAdmin(admin.ModelAdmin):
    list_display = (
        "entity_kind",
        "entity_id",
        "counter",
        "used",
        "window_start",
        "rows_folded",
        "folded_through",
    )
    list_filter = ("entity_kind", "counter")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
