from __future__ import annotations

import django_tables2 as tables
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from channels.models import Channel
from common.tables import LocalTimeColumn, StatusColumn, clipped

NUM = {"td": {"class": "num"}, "th": {"class": "num"}}


class ChannelTable(tables.Table):
    name = tables.Column(verbose_name="Name")
    status = StatusColumn()
    groups = tables.Column(verbose_name="Groups", empty_values=(), orderable=False)
    priced_models = tables.Column(verbose_name="Priced models", empty_values=(), orderable=False, attrs=NUM)
    billing_model_source = tables.Column(verbose_name="Bill by")
    updated_at = LocalTimeColumn(verbose_name="Updated")

    class Meta:
        model = Channel
        fields = ("name", "status", "groups", "priced_models", "billing_model_source", "updated_at")
        order_by = ("name",)
        empty_text = "No channels match these filters"
        attrs = {"class": "table table-hover align-middle mb-0", "id": "channel-table"}

    def render_name(self, value, record):
        name = clipped(value, url=reverse("channels:channel-detail", args=[record.pk]))
        if record.restrict_models:
            return format_html(
                '{} <span class="badge text-bg-light border" title="Only models priced here may be used">'
                "priced models only</span>",
                name,
            )
        return name

    def render_status(self, record):
        # django-tables2 hands choice columns their label, so the badge class comes from the record.
        return format_html(
            '<span class="badge badge-status-{}">{}</span>', record.status, record.get_status_display()
        )

    def render_groups(self, record):
        groups = list(record.groups.all())
        if not groups:
            return format_html('<span class="text-body-secondary">{}</span>', "none")
        return format_html_join(
            " ",
            '<span class="badge group-chip cell-name" title="{0}">{0}</span>',
            ((g.name,) for g in groups),
        )

    def render_priced_models(self, record):
        # Cards are prefetched with only their model lists (channels.selectors.channel_list).
        return sum(len(card.models) for card in record.pricing_cards.all())

    def render_billing_model_source(self, record):
        return record.get_billing_model_source_display()
