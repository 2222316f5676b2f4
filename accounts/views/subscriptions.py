"""Subscriptions: list, assign (single and bulk), detail, and the extend / reset / suspend / revoke dialogs."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods
from django_tables2 import RequestConfig

from accounts.forms.subscriptions import (
    SubscriptionAssignForm,
    SubscriptionExtendForm,
    SubscriptionFilterForm,
    SubscriptionResetWindowsForm,
)
from accounts.models import Subscription
from accounts.roles import requires
from accounts.selectors.subscriptions import subscription_list as select_subscriptions
from accounts.services import subscriptions as services
from accounts.tables.subscriptions import SubscriptionTable
from common.forms import INVALID_FILTERS, add_service_error, filter_criteria
from common.htmx import dialog_done, render_page

CHANGED = "subscriptions:changed"


@requires("viewer")
def subscription_list(request: HttpRequest) -> HttpResponse:
    filters = SubscriptionFilterForm(request.GET or None)
    criteria = filter_criteria(filters)
    if criteria is None:
        subscriptions = Subscription.objects.none()
    else:
        subscriptions = select_subscriptions(
            search=criteria.get("q", ""),
            group=criteria.get("group"),
            status=criteria.get("status", ""),
            expiring_within_days=criteria.get("expiring"),
        )
    table = SubscriptionTable(subscriptions, empty_text=INVALID_FILTERS if criteria is None else None)
    RequestConfig(request, paginate={"per_page": 50}).configure(table)
    return render_page(request, "accounts/subscription_list.html", {"table": table, "filter_form": filters})


@requires("operator")
@require_http_methods(["GET", "POST"])
def subscription_assign_view(request: HttpRequest) -> HttpResponse:
    initial = {"users": request.GET.getlist("user"), "group": request.GET.get("group")}
    form = SubscriptionAssignForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            assignments = services.subscription_assign_bulk(
                users=data["users"],
                group=data["group"],
                days=data["days"],
                notes=data["notes"],
                assigned_by=request.user,
            )
        except ValidationError as error:
            add_service_error(form, error)
        else:
            created = sum(a.created for a in assignments)
            messages.success(
                request,
                f"{data['group'].name}: {created} new subscription{'s' if created != 1 else ''}, "
                f"{len(assignments) - created} extended.",
            )
            if len(assignments) == 1:
                return redirect("accounts:subscription-detail", assignments[0].subscription.pk)
            return redirect(
                f"{reverse('accounts:subscription-list')}?{urlencode({'group': data['group'].pk})}"
            )
    return render(request, "accounts/subscription_assign.html", {"form": form})


def _subscription(pk: int) -> Subscription:
    return get_object_or_404(Subscription.objects.select_related("user", "group", "assigned_by"), pk=pk)


@requires("viewer")
@require_GET
def subscription_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "accounts/subscription_detail.html", {"subject": _subscription(pk)})


@requires("viewer")
@require_GET
def subscription_summary(request: HttpRequest, pk: int) -> HttpResponse:
    """The facts and windows alone, re-rendered after a dialog changes them."""
    return render(request, "accounts/subscription_detail.html#summary", {"subject": _subscription(pk)})


def _dialog(request: HttpRequest, template: str, context: dict) -> HttpResponse:
    return render(request, f"accounts/{template}", {"dialog_action": request.path, **context})


@requires("operator")
@require_http_methods(["GET", "POST"])
def subscription_extend_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    subscription = _subscription(pk)
    form = SubscriptionExtendForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            subscription = services.subscription_extend(subscription_id=pk, days=form.cleaned_data["days"])
        except ValidationError as error:
            add_service_error(form, error)
        else:
            return dialog_done(
                changed=CHANGED, message=f"Now expires {subscription.expires_at:%Y-%m-%d %H:%M %Z}."
            )
    return _dialog(request, "subscription_extend_dialog.html", {"subject": subscription, "form": form})


@requires("operator")
@require_http_methods(["GET", "POST"])
def subscription_reset_windows_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    subscription = _subscription(pk)
    form = SubscriptionResetWindowsForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        kinds = form.cleaned_data["windows"]
        services.subscription_windows_reset(subscription_id=pk, kinds=kinds)
        return dialog_done(changed=CHANGED, message=f"Reset the {', '.join(kinds)} window usage to $0.")
    return _dialog(request, "subscription_reset_windows_dialog.html", {"subject": subscription, "form": form})


@requires("operator")
@require_http_methods(["GET", "POST"])
def subscription_status_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    """Suspend an active subscription, or resume a suspended one."""
    subscription = _subscription(pk)
    resuming = subscription.status == Subscription.Status.SUSPENDED
    if request.method == "POST":
        action = services.subscription_resume if resuming else services.subscription_suspend
        try:
            action(subscription_id=pk)
        except ValidationError as error:
            return dialog_done(changed=CHANGED, message=" ".join(error.messages), level="danger")
        return dialog_done(changed=CHANGED, message="Resumed." if resuming else "Suspended.")
    return _dialog(
        request, "subscription_status_dialog.html", {"subject": subscription, "resuming": resuming}
    )


@requires("operator")
@require_http_methods(["GET", "POST"])
def subscription_revoke_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    subscription = _subscription(pk)
    if request.method == "POST":
        try:
            services.subscription_revoke(subscription_id=pk)
        except ValidationError as error:
            return dialog_done(changed=CHANGED, message=" ".join(error.messages), level="danger")
        return dialog_done(changed=CHANGED, message=f"Revoked the subscription of {subscription.user.email}.")
    return _dialog(request, "subscription_revoke_dialog.html", {"subject": subscription})
