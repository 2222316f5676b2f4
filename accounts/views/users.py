"""Users: list, create, edit, enable/disable, balance adjustments.

Operators manage customers; a staff member's record (balance, rates and status included) is for
an admin to change, and so is console access (docs/console.md#roles).
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_GET, require_http_methods
from django_tables2 import RequestConfig

from accounts.forms.users import (
    BalanceAdjustForm,
    UserCreateForm,
    UserFilterForm,
    UserForm,
    UserGroupRateForm,
)
from accounts.models import BalanceHistory, User
from accounts.roles import is_staff_account, may, requires, user_change_allowed
from accounts.selectors.users import user_balance_history, user_group_rates, user_picker_matches
from accounts.selectors.users import user_list as select_users
from accounts.services.users import (
    user_balance_adjust,
    user_create,
    user_group_rate_remove,
    user_group_rate_set,
    user_set_status,
    user_update,
)
from accounts.tables.users import UserTable
from common.forms import INVALID_FILTERS, add_service_error, filter_criteria
from common.htmx import dialog_done, render_page
from common.money import format_usd


@requires("viewer")
def user_list(request: HttpRequest) -> HttpResponse:
    filters = UserFilterForm(request.GET or None)
    criteria = filter_criteria(filters)
    if criteria is None:
        users = User.objects.none()
    else:
        users = select_users(
            search=criteria.get("q", ""),
            status=criteria.get("status", ""),
            access=criteria.get("access", ""),
        )
    table = UserTable(users, empty_text=INVALID_FILTERS if criteria is None else None)
    RequestConfig(request, paginate={"per_page": 50}).configure(table)
    return render_page(request, "accounts/user_list.html", {"table": table, "filter_form": filters})


def _may_change(request: HttpRequest, user: User) -> bool:
    """May the signed-in staff member change this user's record (the view's own role aside)?"""
    return user_change_allowed(request.user, target_is_staff=is_staff_account(user))


def _changeable_user(request: HttpRequest, pk: int) -> User:
    """The user to change, or 403 when they are staff and the signed-in member is not an admin."""
    user = get_object_or_404(User, pk=pk)
    if not _may_change(request, user):
        raise PermissionDenied("Only an admin can change a staff member.")
    return user


@requires("operator")
@require_http_methods(["GET", "POST"])
def user_create_view(request: HttpRequest) -> HttpResponse:
    form = UserCreateForm(request.POST or None, actor=request.user)
    if request.method == "POST" and form.is_valid():
        fields = {
            k: v for k, v in form.cleaned_data.items() if k not in ("email", "password", "initial_balance")
        }
        try:
            user = user_create(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                fields=fields,
                actor=request.user,
            )
        except ValidationError as error:
            add_service_error(form, error)
        else:
            if form.cleaned_data.get("initial_balance"):
                user_balance_adjust(
                    user_id=user.pk,
                    operation=BalanceHistory.Operation.ADD,
                    amount=form.cleaned_data["initial_balance"],
                    note="Initial balance",
                    changed_by=request.user,
                )
            messages.success(request, f"User {user.email} created.")
            return redirect("accounts:user-detail", user.pk)
    response = render(request, "accounts/user_form.html", {"form": form, "creating": True})
    add_never_cache_headers(response)  # a refused form carries the password typed into it
    return response


@requires("viewer", write="operator")
@require_http_methods(["GET", "POST"])
def user_detail(request: HttpRequest, pk: int) -> HttpResponse:
    user = _changeable_user(request, pk) if request.method == "POST" else get_object_or_404(User, pk=pk)
    form = UserForm(request.POST or None, instance=user, actor=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            user_update(user=user, fields=dict(form.cleaned_data), actor=request.user)
        except ValidationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"Saved {user.email}.")
            if user.is_staff and not user.has_usable_password():
                messages.warning(
                    request, f"{user.email} has no password yet, so cannot sign in: set one in Django admin."
                )
            return redirect("accounts:user-detail", user.pk)
    context = {
        "form": form,
        "history": user_balance_history(user=user),
        **_rates_context(request, user, UserGroupRateForm()),
    }
    return render(request, "accounts/user_form.html", context)


@requires("viewer")
def user_summary(request: HttpRequest, pk: int) -> HttpResponse:
    """The balance card and history alone, re-rendered after a dialog changes them."""
    user = get_object_or_404(User, pk=pk)
    return render(
        request,
        "accounts/user_form.html#balance",
        {
            "subject": user,
            "history": user_balance_history(user=user),
            "can_change": _can_change(request, user),
        },
    )


@requires("operator")
@require_http_methods(["GET", "POST"])
def user_balance_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    user = _changeable_user(request, pk)
    form = BalanceAdjustForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            entry = user_balance_adjust(user_id=user.pk, changed_by=request.user, **form.cleaned_data)
        except ValidationError as error:
            add_service_error(form, error)
        else:
            return dialog_done(
                changed="balance:changed",
                message=f"Balance of {user.email} is now {format_usd(entry.balance_after)}.",
            )
    action = reverse("accounts:user-balance", args=[user.pk])
    return render(
        request, "accounts/user_balance_dialog.html", {"form": form, "subject": user, "dialog_action": action}
    )


@requires("operator")
@require_http_methods(["GET", "POST"])
def user_status_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    user = _changeable_user(request, pk)
    target = User.Status.ACTIVE if user.is_disabled else User.Status.DISABLED
    if request.method == "POST":
        if user.pk == request.user.pk and target == User.Status.DISABLED:
            messages.error(request, "You cannot disable your own account.")
            return dialog_done(
                changed="user:changed", message="You cannot disable your own account.", level="danger"
            )
        user_set_status(user=user, status=target, actor=request.user)
        verb = "enabled" if target == User.Status.ACTIVE else "disabled"
        messages.success(request, f"{user.email} {verb}.")
        response = dialog_done(changed="user:changed")
        response["HX-Refresh"] = "true"
        return response
    action = reverse("accounts:user-status", args=[user.pk])
    return render(
        request,
        "accounts/user_status_dialog.html",
        {"subject": user, "target": target, "dialog_action": action},
    )


@requires("viewer", write="operator")
@require_http_methods(["GET", "POST"])
def user_rates(request: HttpRequest, pk: int) -> HttpResponse:
    """The per-group multiplier overrides card: list, add or replace one."""
    user = _changeable_user(request, pk) if request.method == "POST" else get_object_or_404(User, pk=pk)
    form = UserGroupRateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user_group_rate_set(
                user=user,
                group_id=form.cleaned_data["group"].pk,
                rate_multiplier=form.cleaned_data["rate_multiplier"],
                actor=request.user,
            )
        except ValidationError as error:
            add_service_error(form, error)
        else:
            form = UserGroupRateForm()
    return render(request, "accounts/user_form.html#rates", _rates_context(request, user, form))


@requires("operator")
@require_http_methods(["POST"])
def user_rate_remove(request: HttpRequest, pk: int, rate_id: int) -> HttpResponse:
    user = _changeable_user(request, pk)
    user_group_rate_remove(user=user, rate_id=rate_id, actor=request.user)
    return render(
        request, "accounts/user_form.html#rates", _rates_context(request, user, UserGroupRateForm())
    )


def _rates_context(request: HttpRequest, user: User, form: UserGroupRateForm) -> dict:
    return {
        "subject": user,
        "rate_form": form,
        "rates": user_group_rates(user=user),
        "can_change": _can_change(request, user),
    }


def _can_change(request: HttpRequest, user: User) -> bool:
    """Are the page's actions and forms offered? (The views refuse them anyway.)"""
    return may(request.user, "accounts:user-detail") and _may_change(request, user)


@requires("viewer")
@require_GET
def user_picker(request: HttpRequest) -> HttpResponse:
    """The user picker's matches for what was typed, leaving out the users already chosen."""
    query = request.GET.get("users_search", "")[:100]
    exclude = [int(pk) for pk in request.GET.getlist("users") if pk.isdigit()]
    users, more = user_picker_matches(query=query, exclude=exclude)
    context = {"users": users, "more": more, "query": query.strip()}
    return render(request, "accounts/user_picker.html#results", context)
