"""Groups: list with drag-sort, create, edit, detail with members, delete."""

from __future__ import annotations

import copy
import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from accounts.forms.groups import (
    GroupForm,
    MembershipPriorityForm,
    RebindKeysForm,
    RoutingFormSet,
    routing_initial,
)
from accounts.models import Group, UpstreamAccount
from accounts.roles import may, requires
from accounts.rules import group_order_move, timezone_names
from accounts.selectors.groups import group_detail as select_group
from accounts.selectors.groups import group_list as select_groups
from accounts.selectors.groups import group_memberships
from accounts.services.groups import (
    GroupInUseError,
    group_create,
    group_delete,
    group_delete_rebinding_keys,
    group_reorder,
    group_set_account_priority,
    group_update,
)
from accounts.tables.groups import GroupTable
from common.forms import add_service_error
from common.htmx import dialog_done, render_page


def _list_page(request: HttpRequest, *, error: str = "", status: int = 200) -> HttpResponse:
    # The drag handles and arrows only for those who may reorder.
    hidden = () if may(request.user, "accounts:group-sort-order") else ("handle",)
    table = GroupTable(list(select_groups()), exclude=hidden)
    context = {"table": table, "order_error": error}
    return render_page(request, "accounts/group_list.html", context, status=status)


@requires("viewer")
def group_list(request: HttpRequest) -> HttpResponse:
    return _list_page(request)


@requires("operator")
@require_POST
def group_sort_order(request: HttpRequest) -> HttpResponse:
    """The full new order (every id once), from a drop or a move up/down button."""
    try:
        ids = [int(value) for value in request.POST.getlist("ids")]
        direction, _, moved = request.POST.get("move", "").partition(":")
        if direction in ("up", "down"):
            ids = group_order_move(ids, int(moved), -1 if direction == "up" else 1)
        group_reorder(ordered_ids=ids)
    except ValueError:
        error = "The new order was not saved: the request had an id that is not a number."
    except ValidationError as failure:
        error = failure.messages[0]
    else:
        error = ""
    if not request.htmx:
        (messages.error if error else messages.success)(request, error or "Group order saved.")
        return redirect("accounts:group-list")
    response = _list_page(request, error=error, status=400 if error else 200)
    if not error:
        response["HX-Trigger"] = json.dumps({"toast": {"message": "Group order saved.", "level": "success"}})
    return response


def _group_form_page(request: HttpRequest, group: Group | None) -> HttpResponse:
    creating = group is None
    group = group or Group()
    stored = copy.copy(group)  # the form writes typed values into `group`; the page names the saved one
    accounts = (
        UpstreamAccount.objects.filter(memberships__group=group).order_by("memberships__priority", "id")
        if group.pk
        else UpstreamAccount.objects.none()
    )
    data = request.POST if request.method == "POST" else None
    form = GroupForm(data, instance=group)
    # A new group has no accounts yet, so its page offers no routing rows and posts none.
    routing = RoutingFormSet(
        None if creating else data, initial=routing_initial(group), accounts=accounts, prefix="routing"
    )
    if data is not None and form.is_valid() and (creating or routing.is_valid()):
        fields = {**form.cleaned_data, "model_routing": {} if creating else routing.routing()}
        try:
            with transaction.atomic():
                saved = (
                    group_create(fields=fields, actor=request.user)
                    if creating
                    else group_update(group=group, fields=fields, actor=request.user)
                )
        except ValidationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"Group {saved.name} {'created' if creating else 'saved'}.")
            for warning in form.limit_warnings.values():
                messages.warning(request, warning)
            return redirect("accounts:group-detail", saved.pk)
    context = {
        "form": form,
        "routing": routing,
        "creating": creating,
        "subject": None if creating else stored,
        "timezones": timezone_names(),
    }
    return render(request, "accounts/group_form.html", context)


@requires("admin")
@require_http_methods(["GET", "POST"])
def group_create_view(request: HttpRequest) -> HttpResponse:
    return _group_form_page(request, None)


@requires("admin")
@require_http_methods(["GET", "POST"])
def group_edit(request: HttpRequest, pk: int) -> HttpResponse:
    return _group_form_page(request, get_object_or_404(Group, pk=pk))


def _group_or_404(pk: int) -> Group:
    try:
        return select_group(pk=pk)
    except Group.DoesNotExist as missing:
        raise Http404("No such group.") from missing


@requires("viewer")
def group_detail(request: HttpRequest, pk: int) -> HttpResponse:
    group = _group_or_404(pk)
    context = {"subject": group, "memberships": group_memberships(group=group)}
    return render_page(request, "accounts/group_detail.html", context, partial="members")


@requires("operator")
@require_POST
def group_account_priority(request: HttpRequest, pk: int, account_pk: int) -> HttpResponse:
    group = get_object_or_404(Group, pk=pk)
    form = MembershipPriorityForm(request.POST)
    error = ""
    if form.is_valid():
        try:
            group_set_account_priority(
                group=group, account_id=account_pk, priority=form.cleaned_data["priority"]
            )
        except ValidationError as failure:
            error = failure.messages[0]
    else:
        error = form.errors["priority"][0]
    if not request.htmx:
        if error:
            messages.error(request, error)
        return redirect("accounts:group-detail", group.pk)
    group = _group_or_404(pk)
    context = {"subject": group, "memberships": group_memberships(group=group), "priority_error": error}
    return render(request, "accounts/group_detail.html#members", context)


@requires("admin")
@require_http_methods(["GET", "POST"])
def group_delete_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete; when keys are bound, the refusal offers to move them to another group and delete."""
    group = _group_or_404(pk)
    refusal = None
    rebinding = request.method == "POST" and "rebind" in request.POST
    form = RebindKeysForm(request.POST if rebinding else None, group=group)
    done = ""
    try:
        if rebinding and form.is_valid():
            target = form.cleaned_data["target_group"]
            moved = group_delete_rebinding_keys(group=group, target_group_id=target.pk, actor=request.user)
            done = f"Moved {moved} key{pluralize(moved)} to {target.name} and deleted group {group.name}."
        elif request.method == "POST" and not rebinding:
            group_delete(group=group, actor=request.user)
            done = f"Group {group.name} deleted."
    except GroupInUseError as error:
        refusal = error
    except ValidationError as error:
        add_service_error(form, error)
    if done:
        messages.success(request, done)
        response = dialog_done(changed="groups:changed")
        response["HX-Redirect"] = reverse("accounts:group-list")
        return response
    context = {
        "subject": group,
        "refusal": refusal,
        "rebind_form": form,
        "keys_url": f"/keys/?group={group.pk}",
        "dialog_action": reverse("accounts:group-delete", args=[group.pk]),
    }
    return render(request, "accounts/group_delete_dialog.html", context)
