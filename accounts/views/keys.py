"""API keys: list, create (the secret shown once), edit, and the row actions."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_GET, require_http_methods
from django_tables2 import RequestConfig

from accounts.forms.keys import EXPIRY_QUICK_PICKS, APIKeyForm, KeyFilterForm
from accounts.models import APIKey
from accounts.roles import requires
from accounts.rules import api_key_resolved_status
from accounts.selectors.keys import key_list as select_keys
from accounts.selectors.keys import key_name_warning
from accounts.services import keys as services
from accounts.tables.keys import APIKeyTable
from common.forms import INVALID_FILTERS, add_service_error, filter_criteria
from common.htmx import dialog_done, render_page
from common.money import format_usd


@requires("viewer")
def key_list(request: HttpRequest) -> HttpResponse:
    filters = KeyFilterForm(request.GET or None)
    criteria = filter_criteria(filters)
    if criteria is None:
        keys = APIKey.objects.none()
    else:
        keys = select_keys(
            search=criteria.get("q", ""),
            user=criteria.get("user"),
            group=criteria.get("group"),
            status=criteria.get("status", ""),
            expiring_within_days=criteria.get("expiring"),
            exhausted=criteria.get("exhausted", ""),
        )
    table = APIKeyTable(keys, empty_text=INVALID_FILTERS if criteria is None else None)
    RequestConfig(request, paginate={"per_page": 50}).configure(table)
    return render_page(request, "accounts/key_list.html", {"table": table, "filter_form": filters})


def _form_page(request: HttpRequest, form: APIKeyForm, subject: APIKey | None = None) -> HttpResponse:
    context = {
        "form": form,
        "subject": subject,
        "creating": subject is None,
        "quick_picks": EXPIRY_QUICK_PICKS,
    }
    if request.htmx and request.method == "POST":
        return render(request, "accounts/key_form.html#form", context)
    return render(request, "accounts/key_form.html", context)


@requires("operator")
@require_http_methods(["GET", "POST"])
def key_create_view(request: HttpRequest) -> HttpResponse:
    form = APIKeyForm(request.POST or None, initial={"user": request.GET.get("user")})
    if request.method == "POST" and form.is_valid():
        try:
            key, secret = services.api_key_create(**form.cleaned_data)
        except ValidationError as error:
            add_service_error(form, error)
        else:
            context = {"key": key, "secret": secret, "name_warning": key_name_warning(key=key)}
            if request.htmx:
                response = render(request, "accounts/key_created.html#dialog", context)
                response["HX-Retarget"] = "#dialog-host"
                response["HX-Reswap"] = "innerHTML"
            else:
                response = render(request, "accounts/key_created.html", context)
            add_never_cache_headers(response)  # the secret must not linger in any cache
            return response
    return _form_page(request, form)


@requires("viewer", write="operator")
@require_http_methods(["GET", "POST"])
def key_detail(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(APIKey.objects.select_related("user", "group"), pk=pk)
    form = APIKeyForm(request.POST or None, instance=key)
    if request.method == "POST" and form.is_valid():
        try:
            services.api_key_update(key=key, fields=dict(form.cleaned_data))
        except ValidationError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"Saved {form.cleaned_data['name']}.")
            key.refresh_from_db()
            if warning := key_name_warning(key=key):
                messages.warning(request, warning)
            return redirect("accounts:key-list")
    return _form_page(request, form, subject=key)


@requires("viewer")
@require_GET
def key_group_options(request: HttpRequest) -> HttpResponse:
    """The group field again, for the user just chosen: which groups they may use, and why not."""
    form = APIKeyForm(initial={"user": request.GET.get("user"), "group": request.GET.get("group")})
    return render(request, "accounts/key_form.html#group_field", {"form": form})


@requires("viewer")
@require_GET
def key_cells(request: HttpRequest, pk: int) -> HttpResponse:
    """The status, quota badge, windows and expiry of one row, swapped in out-of-band."""
    key = get_object_or_404(APIKey, pk=pk)
    return render(request, "accounts/key_cells.html#oob", {"record": key, "oob": True})


def _dialog(request: HttpRequest, key: APIKey, template: str, **context) -> HttpResponse:
    action = request.path
    return render(request, f"accounts/{template}", {"subject": key, "dialog_action": action, **context})


def _from_key_page(request: HttpRequest, key: APIKey) -> bool:
    """Was the dialog opened on the key's own page (rather than from a row of the list)?"""
    current = urlsplit(request.htmx.current_url_abs_path or "").path if request.htmx else ""
    return current == reverse("accounts:key-detail", args=[key.pk])


def _changed(request: HttpRequest, key: APIKey, message: str) -> HttpResponse:
    response = dialog_done(changed=f"key-{key.pk}-changed", message=message)
    if _from_key_page(request, key):
        # The key's page holds an edit form: reload it, or saving it would undo the action.
        messages.success(request, message)
        response["HX-Refresh"] = "true"
    return response


@requires("operator")
@require_http_methods(["GET", "POST"])
def key_reset_quota_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(APIKey, pk=pk)
    if request.method == "POST":
        key = services.api_key_quota_reset(key_id=key.pk)
        return _changed(
            request,
            key,
            f"Quota of {key.name} reset to {format_usd(key.quota_used_usd)}; it is {key.status}.",
        )
    return _dialog(request, key, "key_reset_quota_dialog.html")


@requires("operator")
@require_http_methods(["GET", "POST"])
def key_clear_expiration_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(APIKey, pk=pk)
    if request.method == "POST":
        key = services.api_key_expiration_clear(key_id=key.pk)
        return _changed(request, key, f"{key.name} no longer expires; it is {key.status}.")
    return _dialog(request, key, "key_clear_expiration_dialog.html")


@requires("operator")
@require_http_methods(["GET", "POST"])
def key_reset_windows_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(APIKey, pk=pk)
    if request.method == "POST":
        key = services.api_key_windows_reset(key_id=key.pk)
        return _changed(request, key, f"The 5h / 1d / 7d windows of {key.name} are back to $0.")
    return _dialog(request, key, "key_reset_windows_dialog.html")


@requires("operator")
@require_http_methods(["GET", "POST"])
def key_status_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(APIKey.objects.select_related("user"), pk=pk)
    enabling = key.status == APIKey.Status.DISABLED
    if request.method == "POST":
        key = services.api_key_set_enabled(key_id=key.pk, enabled=enabling)
        return _changed(request, key, f"{key.name} is {key.get_status_display().lower()}.")
    target = api_key_resolved_status(key, enabled=True) if enabling else APIKey.Status.DISABLED
    return _dialog(
        request,
        key,
        "key_status_dialog.html",
        enabling=enabling,
        target_label=APIKey.Status(target).label.lower(),
    )


@requires("operator")
@require_http_methods(["GET", "POST"])
def key_delete_dialog(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(APIKey.objects.select_related("user"), pk=pk)
    if request.method == "POST":
        services.api_key_delete(key_id=key.pk)
        message = f"Deleted {key.name} ({key.masked})."
        response = dialog_done(changed="keys:changed", message=message)
        if _from_key_page(request, key):
            messages.success(request, message)
            response["HX-Redirect"] = reverse("accounts:key-list")
        return response
    return _dialog(request, key, "key_delete_dialog.html")
