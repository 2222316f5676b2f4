"""seed_demo: idempotent demo data for every app, each built by its own demo module (accounts,
then channels, then billing's week of usage through usage_record), and the staff login printed."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import demo
from billing import demo as billing_demo
from channels import demo as channels_demo


class Command(BaseCommand):
    help = "Create (or top up) demo data and print the staff login."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--password", help="Staff password to set (default: one generated into var/).")
        parser.add_argument("--url", default="http://127.0.0.1:8000/", help="Where the console is served.")
        parser.add_argument(
            "--upstream-url",
            default="",
            help="Point the demo's API-key and relay accounts at this upstream (make run: the fake one).",
        )

    def handle(
        self, *args, password: str | None = None, url: str = "", upstream_url: str = "", **options
    ) -> None:
        password = password or demo.demo_admin_password()
        with transaction.atomic():
            admin = demo.seed_admin(password)
            demo.seed_groups_and_accounts()
            demo.seed_customers(admin)
            demo.seed_keys_and_subscriptions(admin)
            channels_demo.seed_channels(admin)
        with transaction.atomic():
            # Last: a week of usage billed to the keys, accounts and subscriptions made above.
            usage_rows = billing_demo.seed_usage()
            demo.finish_demo_states()
        self.stdout.write(f"Recorded {usage_rows} demo usage rows.")
        self.stdout.write(self.style.SUCCESS("Demo data is in place."))
        self.stdout.write(f"Sign in at {url} as {demo.DEMO_ADMIN_EMAIL} / {password}")
        if upstream_url:
            with transaction.atomic():
                demo.point_demo_accounts_at(upstream_url)
                secret = demo.demo_api_key()
            gateway = url.rstrip("/")
            self.stdout.write(f"Demo API key (group openai-standard, relayed to {upstream_url}): {secret}")
            self.stdout.write("Try the gateway; the request shows up in the console under Usage:")
            self.stdout.write(
                f"  curl {gateway}/v1/chat/completions -H 'Authorization: Bearer {secret}' "
                "-H 'content-type: application/json' "
                """-d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello, toll gate"}]}'"""
            )
