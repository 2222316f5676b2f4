"""Templates ask the declared policy before offering an action: `{% load roles %}`, then
`{% if user|may:"accounts:key-delete" %}` (accounts/roles.py). The view refuses it anyway."""

from __future__ import annotations

from django import template

from accounts import roles

register = template.Library()


@register.filter
def may(user, url_name: str) -> bool:
    """May `user` use the action at `url_name` (its POST, or the dialog that confirms it)?"""
    return roles.may(user, url_name)


@register.filter
def may_open(user, url_name: str) -> bool:
    """May `user` open the page at `url_name` (its GET)?"""
    return roles.may(user, url_name, method="GET")


@register.filter
def console_role_label(user) -> str:
    role = roles.console_role_of(user)
    return role.label if role else ""
