"""Upstream accounts: list, create, edit, quota badge, reset quota, schedulable, clear error, delete."""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST
from django_tables2 import RequestConfig

from accounts.forms.upstream import UpstreamAccountFilterForm, UpstreamAccountForm
from accounts.models import UpstreamAccount
from accounts.roles import requires
from accounts.rules import timezone_names
from accounts.selectors.upstream import (
    upstream_account_credentials,
    upstream_account_list,
    upstream_account_quota_badge,
    upstream_account_quota_usage,
)
from accounts.services.upstream import (
    upstream_account_clear_error,
    upstream_account_create,
    upstream_account_delete,
    upstream_account_quota_reset,
    upstream_account_set_schedulable,
    upstream_account_update,
)
from accounts.tables.upstream import UpstreamAccountTable
from common.forms import INVALID_FILTERS, add_service_error, filter_criteria
from common.htmx import dialog_done, render_page


def changed(account: UpstreamAccount) -> str:
    """The event a row action fires; that row's quota badge listens for it and re-renders."""
    return f"account-{account.pk}-changed"


@requires("viewer")
def account_list(request: HttpRequest) -> HttpResponse:
    filters = UpstreamAccountFilterForm(request.GET or None)
    criteria = filter_criteria(filters)
    if criteria is None:
        accounts = UpstreamAccount.objects.none()
    else:
        accounts = upstream_account_list(
            search=criteria.get("q", ""),
            platform=criteria.get("platform", ""),
            type=criteria.get("type", ""),
            status=criteria.get("status", ""),
            group=criteria.get("group"),
            schedulable=criteria.get("schedulable", ""),
        )
    table = UpstreamAccountTable(accounts, empty_text=INVALID_FILTERS if criteria is None else None)
    RequestConfig(request, paginate={"per_page": 50}).configure(table)
    return render_page(request, "accounts/account_list.html", {"table": table, "filter_form": filters})


@requires("admin")
@require_http_methods(["GET", "POST"])
def account_create(request: HttpRequest) -> HttpResponse:
    form = UpstreamAccountForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            account = upstream_account_create(
                fields=form.model_fields(),
                credentials=form.credentials(),
                groups=form.cleaned_data["groups"],
                actor=request.user,
            )
        except ValidationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"Account {account.name} created.")
            return redirect("accounts:account-list")
    context = {"form": form, "creating": True, "timezones": timezone_names()}
    return _form_response(request, context)


def _form_response(request: HttpRequest, context: dict) -> HttpResponse:
    response = render(request, "accounts/account_form.html", context)
    add_never_cache_headers(response)  # a refused form carries the secrets typed into it
    return response


@requires("viewer", write="admin")
@require_http_methods(["GET", "POST"])
def account_edit(request: HttpRequest, pk: int) -> HttpResponse:
    account = get_object_or_404(UpstreamAccount, pk=pk)
    stored = upstream_account_credentials(account)
    form = UpstreamAccountForm(request.POST or None, instance=account, stored_credentials=stored)
    if request.method == "POST" and form.is_valid():
        try:
            upstream_account_update(
                account=account,
                fields=form.model_fields(),
                credentials=form.credentials(),
                groups=form.cleaned_data["groups"],
                clear_credentials=form.cleared_credentials(),
                actor=request.user,
            )
        except ValidationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"Saved {account.name}.")
            return redirect("accounts:account-edit", account.pk)
    account.refresh_from_db()  # a failed save must not show half-applied values in the side card
    badge = upstream_account_quota_badge(account, now=timezone.now())
    context = {"form": form, "subject": account, "badge": badge, "timezones": timezone_names()}
    return _form_response(request, context)


@requires("viewer")
def account_quota_badge(request: HttpRequest, pk: int) -> HttpResponse:
    account = get_object_or_404(UpstreamAccount, pk=pk)
    badge = upstream_account_quota_badge(account, now=timezone.now())
    return render(request, "accounts/account_quota_badge.html", {"account": account, "badge": badge})


@requires("operator")
@require_http_methods(["GET", "POST"])
def account_quota_reset(request: HttpRequest, pk: int) -> HttpResponse:
    account = get_object_or_404(UpstreamAccount, pk=pk)
    if request.method == "POST":
        upstream_account_quota_reset(account_id=account.pk)
        return dialog_done(changed=changed(account), message=f"Quota of {account.name} reset to $0.")
    context = {
        "subject": account,
        # Only the quotas the account has: a daily figure without a daily quota means nothing.
        "meters": upstream_account_quota_badge(account, now=timezone.now()).meters,
        "used": upstream_account_quota_usage(account, now=timezone.now()),
        "dialog_action": reverse("accounts:account-quota-reset", args=[account.pk]),
    }
    return render(request, "accounts/account_quota_reset_dialog.html", context)


def _row_response(request: HttpRequest, template: str, account: UpstreamAccount) -> HttpResponse:
    if not request.htmx:
        return redirect("accounts:account-list")
    response = render(request, template, {"account": account})
    response["HX-Trigger"] = json.dumps({changed(account): True})
    return response


@requires("operator")
@require_POST
def account_schedulable(request: HttpRequest, pk: int) -> HttpResponse:
    account = get_object_or_404(UpstreamAccount, pk=pk)
    upstream_account_set_schedulable(
        account_id=account.pk, schedulable=request.POST.get("schedulable") == "on"
    )
    account.refresh_from_db()
    return _row_response(request, "accounts/account_schedulable.html", account)


@requires("operator")
@require_POST
def account_clear_error(request: HttpRequest, pk: int) -> HttpResponse:
    account = get_object_or_404(UpstreamAccount, pk=pk)
    upstream_account_clear_error(account_id=account.pk)
    account.refresh_from_db()
    return _row_response(request, "accounts/account_status.html", account)


@requires("admin")
@require_http_methods(["GET", "POST"])
def account_delete(request: HttpRequest, pk: int) -> HttpResponse:
    account = get_object_or_404(UpstreamAccount, pk=pk)
    if request.method == "POST":
        upstream_account_delete(account=account, actor=request.user)
        messages.success(request, f"Account {account.name} deleted.")
        response = dialog_done(changed="accounts:changed")
        response["HX-Redirect"] = reverse("accounts:account-list")
        return response
    action = reverse("accounts:account-delete", args=[account.pk])
    return render(
        request, "accounts/account_delete_dialog.html", {"subject": account, "dialog_action": action}
    )
