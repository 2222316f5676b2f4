"""Channels: list, create and edit (cards, intervals, mapping, groups), delete, default prices."""

from __future__ import annotations

import re

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods
from django_tables2 import RequestConfig

from accounts.roles import may, requires
from channels.catalog import default_prices_json, lookup_default_prices
from channels.forms import (
    MAX_CARDS,
    MAX_INTERVALS,
    MAX_MAPPING_ROWS,
    ChannelEditor,
    ChannelFilterForm,
    catalog_interval_initials,
    new_card_form,
    new_interval_form,
    new_mapping_form,
)
from channels.models import Channel
from channels.rules import split_models
from channels.selectors import channel_audit_log, channel_for_edit
from channels.selectors import channel_list as select_channels
from channels.services import channel_create, channel_delete, channel_update
from channels.tables import ChannelTable
from common.forms import INVALID_FILTERS, add_service_error, filter_criteria
from common.htmx import dialog_done, render_page

FORM = "channels/channel_form.html"
CARD_PREFIX = re.compile(r"^card-\d{1,3}$")


@requires("viewer")
def channel_list(request: HttpRequest) -> HttpResponse:
    filters = ChannelFilterForm(request.GET or None)
    criteria = filter_criteria(filters)
    if criteria is None:
        channels = Channel.objects.none()
    else:
        channels = select_channels(
            search=criteria.get("q", ""),
            status=criteria.get("status", ""),
            billing_model_source=criteria.get("billing_model_source", ""),
        )
    table = ChannelTable(channels, empty_text=INVALID_FILTERS if criteria is None else None)
    RequestConfig(request, paginate={"per_page": 50}).configure(table)
    return render_page(request, "channels/channel_list.html", {"table": table, "filter_form": filters})


@requires("admin")
@require_http_methods(["GET", "POST"])
def channel_create_view(request: HttpRequest) -> HttpResponse:
    editor = ChannelEditor(request.POST if request.method == "POST" else None)
    if request.method == "POST" and (channel := _save(request, editor, None)):
        messages.success(request, f"Channel {channel.name} created.")
        return redirect("channels:channel-detail", channel.pk)
    return render(request, FORM, {"editor": editor, "creating": True}, status=_status(editor))


@requires("viewer", write="admin")
@require_http_methods(["GET", "POST"])
def channel_detail(request: HttpRequest, pk: int) -> HttpResponse:
    channel = _get_channel(pk)
    editor = ChannelEditor(request.POST if request.method == "POST" else None, channel=channel)
    if request.method == "POST" and _save(request, editor, channel):
        messages.success(request, f"Saved {channel.name}.")
        return redirect("channels:channel-detail", channel.pk)
    context = {
        "editor": editor,
        "read_only": not may(request.user, "channels:channel-detail"),
        "subject": channel,
        "audit_log": channel_audit_log(channel=channel),
        "mapping_problems": channel.mapping_problems,
    }
    return render(request, FORM, context, status=_status(editor))


def _save(request: HttpRequest, editor: ChannelEditor, channel: Channel | None) -> Channel | None:
    """Validate everything, then save it in one transaction; None (with errors on the forms) if not."""
    if not editor.is_valid():
        return None
    data = {
        "fields": editor.form.channel_fields(),
        "group_ids": [group.pk for group in editor.form.cleaned_data["groups"]],
        "cards": editor.card_specs(),
        "mapping": editor.mapping_rules(),
        "actor": request.user,
    }
    try:
        return channel_update(channel=channel, **data) if channel else channel_create(**data)
    except ValidationError as error:
        add_service_error(editor.form, error)
        return None


def _status(editor: ChannelEditor) -> int:
    # A group held by another channel is a conflict, answered 409 (docs/entities.md#channels); the
    # page still renders.
    return 409 if editor.is_bound and "groups" in editor.form.errors else 200


def _get_channel(pk: int) -> Channel:
    try:
        return channel_for_edit(pk=pk)
    except Channel.DoesNotExist as error:
        raise Http404("No such channel.") from error


@requires("admin")
@require_http_methods(["GET", "POST"])
def channel_delete_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    channel = _get_channel(pk)
    if request.method == "POST":
        channel_delete(channel=channel, actor=request.user)
        messages.success(request, f"Channel {channel.name} deleted.")
        response = dialog_done(changed="channel:changed")
        response["HX-Redirect"] = reverse("channels:channel-list")
        return response
    action = reverse("channels:channel-delete", args=[channel.pk])
    return render(
        request, "channels/channel_delete_dialog.html", {"subject": channel, "dialog_action": action}
    )


# -- fragments the form inserts in place ------------------------------------------------------------


def _count(request: HttpRequest, name: str, limit: int) -> int:
    try:
        count = int(request.GET.get(name, ""))
    except ValueError as error:
        raise Http404("Bad form count.") from error
    if not 0 <= count < limit:
        raise Http404("Too many rows.")
    return count


def _card_prefix(request: HttpRequest) -> str:
    prefix = request.GET.get("card", "")
    if not CARD_PREFIX.match(prefix):
        raise Http404("Bad card.")
    return prefix


@requires("admin")
@require_GET
def card_form(request: HttpRequest) -> HttpResponse:
    """A new, empty pricing card at the next index, plus the formset's new total (out of band)."""
    index = _count(request, "card-TOTAL_FORMS", MAX_CARDS)
    context = {
        "card": new_card_form(index),
        "total_id": "id_card-TOTAL_FORMS",
        "total_name": "card-TOTAL_FORMS",
    }
    return render(request, f"{FORM}#card_added", {**context, "total": index + 1})


@requires("admin")
@require_GET
def interval_row(request: HttpRequest) -> HttpResponse:
    prefix = _card_prefix(request)
    index = _count(request, f"{prefix}-iv-TOTAL_FORMS", MAX_INTERVALS)
    return _interval_rows(request, prefix, index, [None])


@requires("admin")
@require_GET
def catalog_intervals(request: HttpRequest) -> HttpResponse:
    """The catalog's long-context tiers for the card's first model, as new interval rows."""
    prefix = _card_prefix(request)
    index = _count(request, f"{prefix}-iv-TOTAL_FORMS", MAX_INTERVALS)
    names = split_models(request.GET.get(f"{prefix}-models", ""))
    initials = catalog_interval_initials(lookup_default_prices(names[0]) if names else None)
    if index + len(initials) > MAX_INTERVALS:
        raise Http404("Too many rows.")
    return _interval_rows(request, prefix, index, initials)


def _interval_rows(request: HttpRequest, prefix: str, index: int, initials: list) -> HttpResponse:
    forms = [new_interval_form(prefix, index + n, initial) for n, initial in enumerate(initials)]
    context = {
        "intervals": forms,
        "total": index + len(forms),
        "total_id": f"id_{prefix}-iv-TOTAL_FORMS",
        "total_name": f"{prefix}-iv-TOTAL_FORMS",
    }
    return render(request, f"{FORM}#intervals_added", context)


@requires("admin")
@require_GET
def mapping_row(request: HttpRequest) -> HttpResponse:
    index = _count(request, "map-TOTAL_FORMS", MAX_MAPPING_ROWS)
    context = {"row": new_mapping_form(index), "total": index + 1}
    return render(
        request,
        f"{FORM}#mapping_added",
        {**context, "total_id": "id_map-TOTAL_FORMS", "total_name": "map-TOTAL_FORMS"},
    )


@requires("admin")
@require_GET
def pricing_defaults(request: HttpRequest) -> JsonResponse:
    """The catalog's default prices for ?model=NAME, in USD per token, as decimal strings."""
    return JsonResponse(default_prices_json(request.GET.get("model", "").strip()[:200]))
