from django.apps import AppConfig


class ChannelsConfig(AppConfig):
    # "channels" would clash with the Django Channels package label if it were
    # ever installed; the label stays explicit so migrations never move.
    name = "channels"
    label = "channels"
    verbose_name = "Channels and pricing"
