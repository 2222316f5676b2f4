"""Sign-in, sign-out, password change and sign-in locks: Django's auth views, throttled and styled."""

from __future__ import annotations

import logging

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts.client_address import client_ip
from accounts.models import SignInCounter
from accounts.roles import requires
from common.forms import ConsoleFormMixin
from common.htmx import hx_trigger_response, render_page
from console import throttle
from console.access import public

logger = logging.getLogger(__name__)


def lockout_message(minutes: int) -> str:
    return (
        f"Too many failed sign-in attempts: sign-in is locked for {minutes} more "
        f"minute{'s' if minutes != 1 else ''}. An administrator can lift the lock now under "
        "Sign-in locks in the console (or with manage.py unlock_sign_in)."
    )


class ThrottledAuthenticationForm(ConsoleFormMixin, AuthenticationForm):
    """Counts the attempt first (console.throttle), then checks the password only if allowed."""

    username = forms.EmailField(
        label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"})
    )

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That email and password do not match a staff account.",
    }

    def clean(self):
        username = self.cleaned_data.get("username")
        if not (username and self.cleaned_data.get("password")):
            return super().clean()  # the field errors say what is missing; nothing is checked
        attempt = throttle.attempt_begin(username=username, ip=client_ip(self.request))
        if attempt.refused:
            raise forms.ValidationError(lockout_message(attempt.minutes_left), code="locked_out")
        cleaned = super().clean()
        throttle.attempt_succeeded(attempt)
        return cleaned

    def confirm_login_allowed(self, user) -> None:
        # The same words as a wrong password, so the form never confirms a right password
        # for an account that may not use the console.
        if not (user.is_active and user.is_staff):
            raise self.get_invalid_login_error()


class ConsoleLoginView(auth_views.LoginView):
    authentication_form = ThrottledAuthenticationForm
    template_name = "registration/login.html"

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        # Only a staff session skips the form: anyone else may sign in as staff here, and is
        # not bounced back to a page (Django admin) that would send them here again.
        self.redirect_authenticated_user = request.user.is_active and request.user.is_staff
        return super().dispatch(request, *args, **kwargs)


login = public(never_cache(ConsoleLoginView.as_view()))


@public
def admin_login(request: HttpRequest) -> HttpResponseRedirect:
    """Django admin signs in through the console's throttled form: there is one sign-in path."""
    return redirect_to_login(request.GET.get("next") or reverse("admin:index"))


logout = public(auth_views.LogoutView.as_view())


class ConsolePasswordChangeForm(ConsoleFormMixin, auth_views.PasswordChangeForm):
    pass


# Every staff member, a viewer too, changes their own password.
password_change = requires("viewer")(
    auth_views.PasswordChangeView.as_view(
        form_class=ConsolePasswordChangeForm, template_name="registration/password_change_form.html"
    )
)
password_change_done = requires("viewer")(
    auth_views.PasswordChangeDoneView.as_view(template_name="registration/password_change_done.html")
)


# -- sign-in locks: list them, lift one ------------------------------------------------------------------


@requires("viewer")
def sign_in_lock_list(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    locks = list(throttle.lockout_list(now=now))
    for lock in locks:
        lock.minutes_left = throttle.minutes_until(lock.window_ends_at, now=now)
    context = {
        "locks": locks,
        "email_limit": settings.LOGIN_FAILURE_LIMIT,
        "address_limit": settings.LOGIN_IP_FAILURE_LIMIT,
        "window_minutes": settings.LOGIN_FAILURE_WINDOW_SECONDS // 60,
    }
    return render_page(request, "console/sign_in_lock_list.html", context)


@requires("admin")
@require_POST
def sign_in_unlock(request: HttpRequest, pk: int) -> HttpResponse:
    counter = SignInCounter.objects.filter(pk=pk).first()
    if counter is None:
        message = "That lock had already ended."
    else:
        throttle.lockout_lift(kind=counter.kind, value=counter.value, actor=request.user)
        logger.info("Sign-in lock lifted by %s: %s %s", request.user.email, counter.kind, counter.value)
        message = f"Unlocked {counter.value}."
    if request.htmx:
        return hx_trigger_response({"sign-in-locks:changed": True, "toast": {"message": message}})
    messages.success(request, message)
    return redirect("sign-in-locks")
