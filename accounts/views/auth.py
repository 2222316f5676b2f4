"""Sign-in, sign-out and password change: Django's auth views, throttled and styled."""

from __future__ import annotations

from django import forms
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest
from django.views.decorators.cache import never_cache

from accounts import throttle
from accounts.access import public
from accounts.forms.base import ConsoleFormMixin


def client_ip(request: HttpRequest) -> str:
    # REMOTE_ADDR only: a forwarded header is trivially forged unless a
    # trusted proxy rewrites it, and the proxy's address is still a fine key.
    return request.META.get("REMOTE_ADDR", "")


class ThrottledAuthenticationForm(ConsoleFormMixin, AuthenticationForm):
    """Refuses to even check the password once an IP or username is locked out."""

    username = forms.EmailField(
        label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"})
    )

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That email and password do not match a staff account.",
        "locked_out": (
            "Too many failed sign-in attempts. Sign-in is locked for %(minutes)s minutes; "
            "try again later or ask another administrator to reset your password."
        ),
        "not_staff": "This account is not allowed to use the console.",
    }

    def clean(self):
        ip = client_ip(self.request)
        username = (self.data.get("username") or "").strip().lower()
        if throttle.is_locked_out(ip=ip, username=username):
            raise forms.ValidationError(
                self.error_messages["locked_out"],
                code="locked_out",
                params={"minutes": throttle.lockout_minutes()},
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            throttle.record_failure(ip=ip, username=username)
            raise
        throttle.clear_username(username)
        return cleaned

    def confirm_login_allowed(self, user) -> None:
        super().confirm_login_allowed(user)
        if not user.is_staff:
            raise forms.ValidationError(self.error_messages["not_staff"], code="not_staff")


login = public(
    never_cache(
        auth_views.LoginView.as_view(
            authentication_form=ThrottledAuthenticationForm,
            template_name="registration/login.html",
            redirect_authenticated_user=True,
        )
    )
)
logout = public(auth_views.LogoutView.as_view())


class ConsolePasswordChangeForm(ConsoleFormMixin, auth_views.PasswordChangeForm):
    pass


password_change = auth_views.PasswordChangeView.as_view(
    form_class=ConsolePasswordChangeForm, template_name="registration/password_change_form.html"
)
password_change_done = auth_views.PasswordChangeDoneView.as_view(
    template_name="registration/password_change_done.html"
)
