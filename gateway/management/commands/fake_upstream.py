"""Serve the fake upstream LLM server (gateway/fake_upstream.py) with uvicorn, for tests and the demo."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from gateway import fake_upstream


class Command(BaseCommand):
    requires_system_checks = []  # a test tool: it reads no setting and touches no database
    help = (
        "Serve a fake OpenAI and Anthropic upstream on loopback (JSON and SSE, realistic usage, scenario "
        "switches, a served-requests log at /_fake/requests). Point upstream accounts' base URL at it."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
        parser.add_argument(
            "--scenario",
            default="",
            help="switches applied to every request, e.g. latency=200,slow=30 (see the module docstring)",
        )
        parser.add_argument(
            "--max-requests",
            type=int,
            default=fake_upstream.DEFAULT_MAX_REQUESTS,
            help="how many served requests the log keeps",
        )
        parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs CPU)")

    def handle(
        self, *args, host: str, port: int, scenario: str, max_requests: int, access_log: bool, **options
    ):
        try:
            fake_upstream.parse_scenario(scenario)
        except fake_upstream.ScenarioError as error:
            raise CommandError(str(error)) from None

        def announce(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        fake_upstream.serve(
            host=host,
            port=port,
            scenario=scenario,
            max_requests=max_requests,
            access_log=access_log,
            announce=announce,
        )
