from django.contrib import admin

from accounts.admin import AnnouncesSnapshotChanges
from channels.models import Channel, ChannelAuditLog, ChannelGroup, ModelPricing, PricingInterval


class ChannelGroupInline(admin.TabularInline):
    model = ChannelGroup
    extra = 0
    autocomplete_fields = ["group"]


class ModelPricingInline(admin.StackedInline):
    model = ModelPricing
    extra = 0
    show_change_link = True


class PricingIntervalInline(admin.TabularInline):
    model = PricingInterval
    extra = 0


@admin.register(Channel)
class ChannelAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"channel_ids": [obj.pk], "group_ids": obj.group_links.values_list("group_id", flat=True)}

    list_display = ["name", "status", "billing_model_source", "restrict_models", "updated_at"]
    list_filter = ["status", "billing_model_source", "restrict_models"]
    search_fields = ["name", "description"]
    inlines = [ChannelGroupInline, ModelPricingInline]


@admin.register(ModelPricing)
class ModelPricingAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"channel_ids": [obj.channel_id]}

    list_display = ["__str__", "channel", "platform", "billing_mode", "sort_order"]
    list_filter = ["platform", "billing_mode"]
    list_select_related = ["channel"]
    inlines = [PricingIntervalInline]


@admin.register(PricingInterval)
class PricingIntervalAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"channel_ids": [obj.card.channel_id]}

    list_display = ["__str__", "card", "tier_label", "sort_order"]
    list_select_related = ["card"]


@admin.register(ChannelGroup)
class ChannelGroupAdmin(AnnouncesSnapshotChanges, admin.ModelAdmin):
    def changed(self, obj):
        return {"channel_ids": [obj.channel_id], "group_ids": [obj.group_id]}

    list_display = ["group", "channel"]
    list_select_related = ["group", "channel"]
    autocomplete_fields = ["group", "channel"]


@admin.register(ChannelAuditLog)
class ChannelAuditLogAdmin(admin.ModelAdmin):
    list_display = ["channel_name", "action", "actor", "created_at"]
    list_filter = ["action"]
    list_select_related = ["actor"]
    search_fields = ["channel_name"]
    readonly_fields = ["channel", "channel_name", "action", "actor", "changes", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False  # entries are written by the channel services, with the diff they computed
