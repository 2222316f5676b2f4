from django.apps import AppConfig


class CommonConfig(AppConfig):
    """Helpers every app's pages use (an installed app only so its template tags load)."""

    name = "common"
    verbose_name = "Shared helpers"
