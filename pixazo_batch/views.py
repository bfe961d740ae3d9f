"""What a person reads: short tables on a terminal, JSON for machines.

Every command prints its result through one ``Output``: human text when standard output is a
terminal, one JSON document per line otherwise (or with ``--json``), so under cron standard
output holds only JSON and standard error only JSON-line logs. Keys follow one vocabulary
across commands (``docs/design.md``, "Output"): ``jobs`` counts jobs, ``problems`` counts what
needs attention, money is ``*_usd`` as a string of dollars and cents.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.results import resolve_commands
from pixazo_batch.summary import RunSummary

log = structlog.get_logger(__name__)


class Output:
    """Where a command's results go, and in which form.

    Usage: ``Output(human=sys.stdout.isatty()).run_summary(summary, out_dir)``.
    """

    def __init__(self, *, human: bool, stdout: Console | None = None) -> None:
        self.human = human
        self.console = stdout or Console(highlight=False, soft_wrap=True)
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True)

    def json(self, document: Mapping[str, Any]) -> None:
        """One JSON line on standard output."""
        self.console.file.write(json.dumps(document) + "\n")
        self.console.file.flush()

    def text(self, line: str) -> None:
        """A line for a person (JSON ``{"message": ...}`` for machines)."""
        if self.human:
            self.console.print(escape(line))
        else:
            self.json({"message": line})

    def issue(self, issue: ManifestIssue) -> None:
        """A bad manifest line: plain on a terminal, a JSON log line otherwise."""
        if self.human:
            self.errors.print(f"[red]{escape(str(issue))}[/red]")
        else:
            log.warning("manifest_issue", **issue.log_fields())

    def run_summary(self, summary: RunSummary, out_dir: Path) -> None:
        """The end of a run: counts, money and every job that needs attention."""
        if not self.human:
            self.json({"event": "summary", **dataclasses.asdict(summary)})
            return
        counts = ", ".join(f"{n} {state}" for state, n in summary.counts.items() if n)
        self.console.print(
            f"[bold]{summary.jobs} jobs[/bold]: {counts or 'none'}. "
            f"${summary.committed_usd} committed, ${summary.spent_usd} spent."
        )
        self._attention(summary, out_dir)
        if summary.stop_reason:
            self.console.print(f"Stopped early: {escape(summary.stop_reason)}")
        self.console.print(f"Exit code {summary.exit_code}. Review page: {out_dir / 'report.html'}")

    def _attention(self, summary: RunSummary, out_dir: Path) -> None:
        rows: list[tuple[str, str, str]] = []
        rows += [("failed", job["id"], job["error"] or "") for job in summary.failed]
        for job_id in summary.uncertain:
            commands = resolve_commands(job_id, out_dir)
            rows.append(("uncertain", job_id, "may be paid; settle with: " + commands[0]))
        rows += [
            ("stalled", job_id, "still rendering; the next run polls it")
            for job_id in summary.stalled
        ]
        rows += [("mismatch", job["id"], job["mismatch"]) for job in summary.mismatched]
        rows += [("manifest", "", issue) for issue in summary.manifest_issues]
        if not rows:
            return
        table = Table(title="Needs attention", title_justify="left", show_header=False, box=None)
        for kind, job_id, why in rows:
            table.add_row(f"[yellow]{kind}[/yellow]", escape(job_id), escape(why))
        self.console.print(table)

    def validation(self, result: Mapping[str, Any]) -> None:
        """What ``validate`` found."""
        if not self.human:
            self.json({"event": "validate", **result})
            return
        kinds = "  ".join(f"{kind}: {n}" for kind, n in result["by_resolution_duration"].items())
        self.console.print(
            f"[bold]{result['jobs']} jobs[/bold], price ${result['price_usd']} ({kinds or 'none'})."
        )
        if result["problems"]:
            self.console.print(
                f"[red]{result['problems']} problems[/red] on {result['bad_lines']} lines "
                "(listed above); those lines would not run."
            )

    def status(self, summary: Mapping[str, Any]) -> None:
        """What ``status`` found in the state file."""
        if not self.human:
            self.json({"event": "status", **summary})
            return
        counts = Table(show_header=True, box=None)
        for state in summary["counts"]:
            counts.add_column(state, justify="right")
        counts.add_row(*(str(n) for n in summary["counts"].values()))
        self.console.print(f"[bold]{summary['jobs']} jobs[/bold] in {escape(summary['location'])}")
        self.console.print(counts)
        self.console.print(f"${summary['committed_usd']} committed, ${summary['spent_usd']} spent.")
        for worker in summary.get("workers", []):
            self.console.print(
                f"worker {escape(worker['worker'])} on {escape(worker['host'])}: "
                f"{worker['in_flight']} jobs, last heartbeat {worker['silent_s']} s ago"
            )
        if summary["oldest_pending"]:
            oldest = summary["oldest_pending"]
            self.console.print(f"Oldest pending: {oldest['id']} since {oldest['since']}")
        for job in summary["uncertain"]:
            self.console.print(
                f"[yellow]uncertain[/yellow] {escape(job['id'])}: POST sent {job['post_sent']}, "
                f"{escape(job['lost'] or 'answer lost')}. Settle it with one of:"
            )
            for command in job["resolve"]:
                self.console.print(f"    {escape(command)}")
        for job in summary["attention"]:
            if job["state"] != "uncertain":
                self.console.print(
                    f"[yellow]{job['state']}[/yellow] {escape(job['id'])}: "
                    f"{escape(job['error'] or job.get('mismatch') or '')}"
                )
        last = summary["last_run"]
        if last:
            ended = last["ended"] or "did not end (killed or still running)"
            self.console.print(
                f"Last run: started {last['started']}, ended {ended}, exit {last['exit_code']}"
            )

    def records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """``report`` as JSON lines, or a table on a terminal."""
        if not self.human:
            for record in records:
                self.json(record)
            return
        table = Table(show_header=True, box=None)
        for column in ("id", "state", "output", "cost_usd", "note"):
            table.add_column(column)
        for record in records:
            note = record["error"] or record["mismatch"] or ""
            table.add_row(
                escape(record["id"]),
                record["state"],
                escape(record["output"]),
                record["cost_usd"],
                escape(note),
            )
        self.console.print(table)

    def dry_run_job(self, job: Mapping[str, object]) -> None:
        """One job ``run --dry-run`` would submit."""
        if not self.human:
            self.json(job)
            return
        self.console.print(f"would submit {job['id']} ({job['state']}), ${job['price_usd']}")

    def dry_run_totals(self, totals: Mapping[str, Any]) -> None:
        """What ``run --dry-run`` would submit in all."""
        if not self.human:
            self.json({"event": "dry_run", **totals})
            return
        self.console.print(
            f"[bold]{totals['jobs']} jobs[/bold] would be submitted, ${totals['price_usd']}."
        )
