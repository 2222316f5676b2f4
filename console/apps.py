from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The shell around every app: navigation, sign-in, errors, the dashboard, demo seeding."""

    name = "console"
    verbose_name = "Console"
