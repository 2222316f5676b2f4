"""manage.py reconcile: one reconcile batch from a shell or cron (docs/jobs.md#reconcile-runs).

Exit codes: 0 nothing drifted (or a fix corrected every drift); 1 drift found by a dry run, or a
fix that could not correct everything; 2 refused (a fix of the same scope is running) or failed.
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from billing.models import ReconcileMode, ReconcilePeriod, ReconcileRun, ReconcileScope
from billing.reconcile import ReconcileRefused, new_batch_id, reconcile_run_create, reconcile_run_execute

BAR_WIDTH = 30


class Command(BaseCommand):
    help = "Recompute counters from the usage ledger and report (or fix) drift."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--scope",
            action="append",
            choices=[*ReconcileScope.values, "all"],
            help="keys, accounts, subscriptions, users or all (repeatable; default all).",
        )
        parser.add_argument("--period", choices=ReconcilePeriod.values, default=ReconcilePeriod.ALL)
        parser.add_argument("--mode", choices=ReconcileMode.values, default=ReconcileMode.DRY_RUN)
        parser.add_argument(
            "--batch", default="", help="Batch id to file the runs under (default: a new one)."
        )

    def handle(
        self, *args, scope=None, period: str = "all", mode: str = "dry_run", batch: str = "", **options
    ):
        scopes = ReconcileScope.values if not scope or "all" in scope else list(dict.fromkeys(scope))
        batch = batch or new_batch_id()
        tty = self.stdout.isatty()
        unfixed = 0
        for name in scopes:
            try:
                run = reconcile_run_create(
                    scope=name, period=period, mode=mode, started_by_label="command", batch_id=batch
                )
            except ReconcileRefused as refusal:
                raise CommandError(str(refusal), returncode=2) from None
            try:
                run = reconcile_run_execute(run_id=run.pk, progress=lambda r: self._progress(r, tty))
            except Exception as error:
                raise CommandError(f"Run {run.pk} failed: {error}", returncode=2) from error
            if tty:
                self.stdout.write("")
            self.stdout.write(
                f"{run.scope}: {run.checked} checked, {run.drifted} drifted, {run.fixed} fixed "
                f"(run {run.pk}, batch {run.batch_id}, host {run.host_id})"
            )
            unfixed += run.drifted - run.fixed
        if unfixed:
            self.stderr.write(f"{unfixed} counter(s) off the ledger and not fixed (batch {batch}).")
            sys.exit(1)

    def _progress(self, run: ReconcileRun, tty: bool) -> None:
        if tty:
            filled = run.checked * BAR_WIDTH // run.total if run.total else BAR_WIDTH
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stdout.write(f"\r{run.scope:<14} [{bar}] {run.checked}/{run.total}", ending="")
            self.stdout.flush()
        else:
            self.stdout.write(f"{run.scope}: {run.checked}/{run.total} checked, {run.drifted} drifted")
