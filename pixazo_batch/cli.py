"""The ``pixazo-batch`` command: argv -> Settings -> engine; errors -> exit codes.

No business logic lives here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import anyio
from pydantic import SecretStr, ValidationError

from pixazo_batch.config import DEFAULT_BASE_URL, STATE_FILE_NAME, Settings
from pixazo_batch.engine import RunSummary, run_batch
from pixazo_batch.errors import EXIT_OK, EXIT_USAGE, PixazoBatchError, UsageError
from pixazo_batch.logs import configure_logging
from pixazo_batch.manifest import ManifestIssue, read_manifest
from pixazo_batch.models import JobSpec
from pixazo_batch.results import iter_results
from pixazo_batch.state import StateStore

KEY_ENV = "PIXAZO_API_KEY"
BASE_URL_ENV = "PIXAZO_BASE_URL"


def _money(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {value!r}") from None
    if amount < 0 or not amount.is_finite():
        raise argparse.ArgumentTypeError("must be zero or more")
    return amount


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pixazo-batch",
        description="Batch-generate videos with Luma Ray 2 Flash (image-to-video) through the "
        "Pixazo gateway: resumable, budget-safe, never paying twice for a job.",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a manifest to verified MP4 files (resumable)")
    run.add_argument("manifest", type=Path, help="JSONL manifest, one job a line")
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument("--state", type=Path, help=f"state file (default OUT/{STATE_FILE_NAME})")
    run.add_argument(
        "--base-url", help=f"gateway base URL (env {BASE_URL_ENV}, default {DEFAULT_BASE_URL})"
    )
    run.add_argument("--concurrency", type=int, default=8, help="HTTP requests at once (8)")
    run.add_argument(
        "--max-in-flight", type=int, default=20, help="jobs submitted, not finished (20)"
    )
    run.add_argument(
        "--rps", type=float, default=5.0, help="ceiling of gateway requests per second (5)"
    )
    run.add_argument("--max-attempts", type=int, default=3, help="submissions per job (3)")
    run.add_argument(
        "--poll-interval", type=float, default=5.0, help="seconds between polls of a job (5)"
    )
    run.add_argument(
        "--job-deadline",
        type=float,
        default=1800.0,
        help="seconds before a job is reported stalled",
    )
    run.add_argument(
        "--max-spend", type=_money, help="USD cap on committed spend in this state file"
    )
    run.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit uncertain jobs again (may pay twice)",
    )
    run.add_argument("--abandon-uncertain", action="store_true", help="give up uncertain jobs")
    run.add_argument("--retry-failed", action="store_true", help="submit failed jobs again")
    run.add_argument("--downloads", type=int, default=4, help="downloads at once (4)")
    run.add_argument(
        "--download-tries", type=int, default=5, help="tries per download in one run (5)"
    )
    run.add_argument(
        "--stop-deadline",
        type=float,
        default=30.0,
        help="seconds in-flight POSTs get after a signal",
    )
    run.add_argument("--strict", action="store_true", help="stop at the first bad manifest line")
    run.add_argument(
        "--sandbox", action="store_true", help="run against an embedded local simulator"
    )
    run.add_argument(
        "--sandbox-scenario", default="demo", help="simulator scenario for --sandbox (demo)"
    )

    validate = commands.add_parser("validate", help="check a manifest and price it; no network")
    validate.add_argument("manifest", type=Path)

    status = commands.add_parser("status", help="counts, spend and failures from a state file")
    status.add_argument("--out", type=Path, required=True)
    status.add_argument("--state", type=Path)

    report = commands.add_parser("report", help="one line per job, from the state file")
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--state", type=Path)

    simulate = commands.add_parser("simulate", help="serve the local gateway simulator")
    simulate.add_argument("--port", type=int, default=8080)
    simulate.add_argument("--scenario", default="demo")
    simulate.add_argument("--key", default="sandbox", help="the API key it accepts (sandbox)")
    simulate.add_argument("--time-scale", type=float, help="multiply every duration by this")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (DESIGN section 6)."""
    args = build_parser().parse_args(argv)
    json_lines = {"auto": None, "json": True, "console": False}[args.log_format]
    key = os.environ.get(KEY_ENV, "")
    configure_logging(secrets=[key], level=args.log_level, json_lines=json_lines)
    try:
        handler = {
            "run": _run,
            "validate": _validate,
            "status": _status,
            "report": _report,
            "simulate": _simulate,
        }[args.command]
        return handler(args)
    except PixazoBatchError as exc:
        print(f"pixazo-batch: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace, base_url: str, key: str) -> Settings:
    try:
        return Settings(
            manifest=args.manifest,
            out_dir=args.out,
            api_key=SecretStr(key),
            state_path=args.state,
            base_url=base_url,
            concurrency=args.concurrency,
            max_in_flight=args.max_in_flight,
            rps=args.rps,
            max_attempts=args.max_attempts,
            poll_interval=args.poll_interval,
            job_deadline=args.job_deadline,
            max_spend=args.max_spend,
            resubmit_uncertain=args.resubmit_uncertain,
            abandon_uncertain=args.abandon_uncertain,
            retry_failed=args.retry_failed,
            strict=args.strict,
            downloads=args.downloads,
            download_tries=args.download_tries,
            stop_deadline=args.stop_deadline,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(problems) from None


def _print_issue(issue: ManifestIssue) -> None:
    print(str(issue), file=sys.stderr)


def _print_summary(summary: RunSummary) -> None:
    print(json.dumps({"event": "summary", **dataclasses.asdict(summary)}))


def _run(args: argparse.Namespace) -> int:
    if args.sandbox:
        return anyio.run(_run_in_sandbox, args)
    key = os.environ.get(KEY_ENV, "")
    if not key:
        raise UsageError(f"set the API key in the environment variable {KEY_ENV}")
    base_url = args.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    settings = _settings(args, base_url, key)
    summary = anyio.run(_run_settings, settings)
    _print_summary(summary)
    return summary.exit_code


async def _run_settings(settings: Settings) -> RunSummary:
    return await run_batch(settings, handle_signals=True, on_issue=_print_issue)


async def _run_in_sandbox(args: argparse.Namespace) -> int:
    from pixazo_batch.sim import Simulator, scenario_named  # noqa: PLC0415  (only for --sandbox)

    key = secrets.token_urlsafe(16)
    configure_logging(
        secrets=[key],
        level=args.log_level,
        json_lines={"auto": None, "json": True, "console": False}[args.log_format],
    )
    try:
        scenario = scenario_named(args.sandbox_scenario)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    scenario = dataclasses.replace(scenario, keys=frozenset({key}))
    async with Simulator(scenario) as sim:
        settings = _settings(args, sim.base_url, key)
        summary = await run_batch(settings, handle_signals=True, on_issue=_print_issue)
    _print_summary(summary)
    return summary.exit_code


def _validate(args: argparse.Namespace) -> int:
    jobs = 0
    cents = 0
    by_kind: dict[str, int] = {}
    bad = 0
    try:
        for item in read_manifest(args.manifest):
            if isinstance(item, ManifestIssue):
                bad += 1
                _print_issue(item)
                continue
            assert isinstance(item, JobSpec)
            jobs += 1
            cents += item.request.price_cents
            kind = f"{item.request.resolution.value}/{item.request.duration.value}"
            by_kind[kind] = by_kind.get(kind, 0) + 1
    except OSError as exc:
        raise UsageError(f"{args.manifest}: {exc.strerror or exc}") from exc
    result: dict[str, Any] = {
        "jobs": jobs,
        "bad_lines": bad,
        "by_resolution_duration": by_kind,
        "estimated_cost_usd": f"{cents / 100:.2f}",
    }
    print(json.dumps(result))
    return EXIT_USAGE if bad else EXIT_OK


def _state_file(args: argparse.Namespace) -> Path:
    path: Path = args.state or args.out / STATE_FILE_NAME
    if not path.is_file():
        raise UsageError(f"no state file at {path}")
    return path


def _status(args: argparse.Namespace) -> int:
    with StateStore.open(_state_file(args), lock=False) as store:
        counts = {state.value: n for state, n in store.counts().items()}
        failures = [
            {"id": r.id, "state": r.state.value, "error": r.error}
            for r in store.iter_jobs()
            if r.error and r.state.value in ("failed", "uncertain", "errored")
        ]
        print(
            json.dumps(
                {
                    "counts": counts,
                    "committed_usd": f"{store.committed_cents() / 100:.2f}",
                    "spent_usd": f"{store.spent_cents() / 100:.2f}",
                    "problems": failures,
                }
            )
        )
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    with StateStore.open(_state_file(args), lock=False) as store:
        for record in iter_results(store):
            print(json.dumps(record))
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from pixazo_batch.sim import Simulator, scenario_named  # noqa: PLC0415  (only for simulate)

    try:
        scenario = scenario_named(args.scenario, time_scale=args.time_scale)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    scenario = dataclasses.replace(scenario, keys=frozenset({args.key}))

    async def serve() -> None:
        async with Simulator(scenario, port=args.port) as sim:
            print(f"gateway {sim.base_url}", flush=True)
            print(f"media {sim.media_url}", flush=True)
            await anyio.sleep_forever()

    anyio.run(serve)
    return EXIT_OK
