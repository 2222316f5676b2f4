from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Gateway"

    def ready(self) -> None:
        # accounts never imports the gateway: the gateway hears its changes by registering here.
        from accounts.snapshots import snapshot_listeners
        from gateway.invalidation import on_snapshots_changed

        snapshot_listeners.add(on_snapshots_changed)
