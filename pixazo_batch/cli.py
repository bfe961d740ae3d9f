"""The ``pixazo-batch`` command: argv -> Settings -> engine; errors -> exit codes.

No business logic lives here. Standard output carries only results (the run summary, reports);
everything else is a log line on standard error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sqlite3
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from pydantic import SecretStr, ValidationError

from pixazo_batch.config import (
    DEFAULT_BASE_URL,
    ENV_PREFIX,
    SANDBOX_JOURNAL,
    STATE_FILE_NAME,
    Settings,
    load_settings,
)
from pixazo_batch.engine import RunSummary, one_off_client, run_batch
from pixazo_batch.errors import EXIT_OK, EXIT_USAGE, PixazoBatchError, UsageError
from pixazo_batch.lifecycle import OperatorAbandoned, OperatorFoundRequest, OperatorNotSent
from pixazo_batch.logs import configure_logging
from pixazo_batch.manifest import ManifestIssue, read_manifest
from pixazo_batch.models import JobSpec
from pixazo_batch.planning import plan_run
from pixazo_batch.progress import TerminalProgress
from pixazo_batch.resolve import Choice, resolve_job
from pixazo_batch.results import iter_results, status_summary, write_csv
from pixazo_batch.state import StateStore

KEY_ENV = f"{ENV_PREFIX}API_KEY"

#: run flags that map one to one onto Settings fields (defaults live in Settings)
_RUN_OPTIONS: dict[str, tuple[type, str]] = {
    "concurrency": (int, "HTTP requests to the gateway at once"),
    "max_in_flight": (int, "jobs submitted and not yet finished"),
    "rps": (float, "ceiling of gateway requests per second, submits and polls together"),
    "max_attempts": (int, "submissions per job (remote ERROR and refusals count; 429 never)"),
    "poll_interval": (float, "seconds between two polls of one job"),
    "job_deadline": (float, "seconds before an unfinished job is reported stalled"),
    "max_spend": (str, "USD cap on the committed spend recorded in the state file"),
    "downloads": (int, "downloads at once"),
    "download_tries": (int, "tries per download in one run"),
    "max_video_mb": (int, "largest video accepted, in MiB"),
    "download_stall": (float, "seconds a media body may bring (almost) nothing before a restart"),
    "stop_deadline": (float, "seconds POSTs on the wire get to return after SIGINT/SIGTERM"),
    "outage_deadline": (float, "seconds the gateway may stay unreachable before the run stops"),
    "retry_after_cap": (float, "longest Retry-After honoured, in seconds"),
    "webhook_url": (str, "public https URL reaching --webhook-listen: turns callbacks on"),
    "webhook_listen": (str, "HOST:PORT the callback listener binds"),
    "webhook_mode": (str, "terminal: one callback at the end; sync: one per gateway tick too"),
    "uncertain_wait": (float, "with webhooks, seconds a lost-answer job waits for its callback"),
    "webhook_secret_days": (float, "days an earlier run's callback URLs stay valid"),
}
_RUN_SWITCHES: dict[str, str] = {
    "resubmit_uncertain": "submit uncertain jobs again (each may then be paid twice)",
    "abandon_uncertain": "give up uncertain jobs (mark them failed)",
    "retry_failed": "submit jobs that ended FAILED again",
    "strict": "stop at the first bad manifest line",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pixazo-batch",
        description="Batch-generate videos with Luma Ray 2 Flash (image-to-video) through the "
        "Pixazo gateway: resumable, budget-safe, never paying twice for a job.",
        epilog=f"The API key is read from {KEY_ENV} (or a --config file), never from the "
        "command line. Exit codes: 0 done, 1 jobs failed, 2 usage or manifest error, "
        "3 incomplete (the next run resumes by itself), 4 key refused, 5 uncertain jobs wait for "
        "a decision (see 'resolve'), 75 state file locked.",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format", default="auto", choices=["auto", "json", "console"],
        help="auto: readable on a terminal, JSON lines otherwise (as under cron)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="only warnings and the summary")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a manifest to verified MP4 files (resumable)")
    run.add_argument("manifest", type=Path, help="JSONL manifest, one job a line")
    run.add_argument(
        "--out", type=Path, dest="out_dir", metavar="DIR", help="output folder (required)"
    )
    run.add_argument(
        "--state",
        type=Path,
        dest="state_path",
        metavar="FILE",
        help=f"default DIR/{STATE_FILE_NAME}",
    )
    run.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML file of settings (flags and env win)"
    )
    run.add_argument(
        "--base-url",
        metavar="URL",
        help=f"gateway base URL (env {ENV_PREFIX}BASE_URL; default {DEFAULT_BASE_URL})",
    )
    for name, (kind, text) in _RUN_OPTIONS.items():
        default = Settings.model_fields[name].default
        shown = "no cap" if default is None else default
        flag = f"--{name.replace('_', '-')}"
        run.add_argument(flag, type=kind, metavar=name.upper(), help=f"{text} ({shown})")
    for name, text in _RUN_SWITCHES.items():
        run.add_argument(
            f"--{name.replace('_', '-')}", action="store_true", default=None, help=text
        )
    run.add_argument(
        "--dry-run", action="store_true", help="print what would be submitted; send nothing"
    )
    run.add_argument(
        "--sandbox", action="store_true", help="run against an embedded local simulator"
    )
    run.add_argument("--sandbox-scenario", default="demo", help="simulator scenario for --sandbox")

    validate = commands.add_parser("validate", help="check a manifest and price it (no network)")
    validate.add_argument("manifest", type=Path)
    validate.add_argument(
        "--check-urls", action="store_true", help="also ask each image URL with HEAD (network)"
    )

    for name, text in (("status", "counts, spend and problems from a state file"),
                       ("report", "one row per job from a state file")):  # fmt: skip
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--out", type=Path, required=True, help="output folder")
        sub.add_argument("--state", type=Path, help=f"default OUT/{STATE_FILE_NAME}")
        if name == "report":
            sub.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")

    resolve = commands.add_parser(
        "resolve", help="settle one uncertain job: its request id, 'not sent', or abandon it"
    )
    resolve.add_argument("job", metavar="JOB", help="the id of an uncertain job")
    resolve.add_argument("--out", type=Path, required=True, dest="out_dir", metavar="DIR")
    resolve.add_argument("--state", type=Path, dest="state_path", metavar="FILE")
    resolve.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    resolve.add_argument("--base-url", metavar="URL", help="gateway base URL")
    choice = resolve.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--request-id", metavar="ID", help="the request found in the Pixazo dashboard (checked)"
    )
    choice.add_argument("--not-sent", action="store_true", help="the POST never arrived: resend")
    choice.add_argument("--abandon", action="store_true", help="give the job up (failed)")

    simulate = commands.add_parser("simulate", help="serve the local gateway simulator")
    simulate.add_argument("--port", type=int, default=8080, help="gateway port (0: any free one)")
    simulate.add_argument(
        "--scenario", default="demo", help="demo, fast, realistic, hostile, broke"
    )
    simulate.add_argument("--key", default="sandbox", help="the API key it accepts (sandbox)")
    simulate.add_argument("--time-scale", type=float, help="multiply every duration by this")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``docs/design.md``, "Exit codes")."""
    args = build_parser().parse_args(argv)
    args.sandbox_key = secrets.token_urlsafe(16)
    _configure_logs(args)
    handlers = {"run": _run, "validate": _validate, "status": _status, "report": _report,
                "resolve": _resolve, "simulate": _simulate}  # fmt: skip
    try:
        return handlers[args.command](args)
    except PixazoBatchError as exc:
        print(f"pixazo-batch: {exc}", file=sys.stderr)
        return exc.exit_code
    except sqlite3.DatabaseError as exc:  # a state file damaged under a read
        print(f"pixazo-batch: the state file is damaged or unreadable: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _configure_logs(args: argparse.Namespace, *more_secrets: str) -> None:
    level = "warning" if args.quiet else args.log_level
    json_lines = {"auto": None, "json": True, "console": False}[args.log_format]
    known = [os.environ.get(KEY_ENV, ""), args.sandbox_key, *more_secrets]
    configure_logging(secrets=[s for s in known if s], level=level, json_lines=json_lines)


def _settings(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None, **forced: Any
) -> Settings:
    names = (*_RUN_OPTIONS, *_RUN_SWITCHES, "manifest", "out_dir", "state_path", "base_url")
    flags = {name: getattr(args, name, None) for name in names}
    flags.update(forced)
    try:
        settings = load_settings(flags, config_file=args.config, defaults=defaults)
    except ValidationError as exc:
        problems = "; ".join(_field_problem(error) for error in exc.errors())
        raise UsageError(problems) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"--config {args.config}: {exc}") from None
    _configure_logs(args, settings.api_key.get_secret_value())  # the key may come from --config
    return settings


def _field_problem(error: Any) -> str:
    field = ".".join(map(str, error["loc"])) or "settings"
    if field == "api_key" and error["type"] == "missing":
        return f"set the API key in the environment variable {KEY_ENV}"
    if field == "out_dir" and error["type"] == "missing":
        return "--out DIR is required"
    return f"{field}: {error['msg']}"


def _print_issue(issue: ManifestIssue) -> None:
    print(str(issue), file=sys.stderr)


def _print_summary(summary: RunSummary) -> None:
    print(json.dumps({"event": "summary", **dataclasses.asdict(summary)}), flush=True)


def _run(args: argparse.Namespace) -> int:
    if args.sandbox:
        return anyio.run(_run_in_sandbox, args)
    settings = _settings(args)
    if args.dry_run:
        return _dry_run(settings)
    summary = anyio.run(_run_settings, settings, args.quiet)
    _print_summary(summary)
    return summary.exit_code


async def _run_settings(settings: Settings, quiet: bool) -> RunSummary:
    progress = None if quiet or not sys.stderr.isatty() else TerminalProgress()
    return await run_batch(settings, handle_signals=True, on_issue=_print_issue, observer=progress)


def _dry_run(settings: Settings) -> int:
    def show(job: dict[str, object]) -> None:
        print(json.dumps(job))

    totals = plan_run(settings, on_issue=_print_issue, on_job=show)
    print(json.dumps({"event": "dry_run", **totals.as_json()}))
    return EXIT_USAGE if totals.issues else EXIT_OK


async def _run_in_sandbox(args: argparse.Namespace) -> int:
    from pixazo_batch.sim import Simulator, scenario_named  # noqa: PLC0415  (only for --sandbox)

    try:
        scenario = scenario_named(args.sandbox_scenario)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    scenario = dataclasses.replace(scenario, keys=frozenset({args.sandbox_key}))
    if args.out_dir is None:
        raise UsageError("--out DIR is required")
    journal = args.out_dir / SANDBOX_JOURNAL  # the simulator's memory, so the sandbox resumes
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {args.out_dir}: {exc.strerror or exc}") from None
    async with Simulator(scenario, journal=journal) as sim:
        settings = _settings(
            args,
            defaults={"poll_interval": scenario.poll_interval},
            base_url=sim.base_url,
            api_key=SecretStr(args.sandbox_key),
        )
        if args.dry_run:
            return _dry_run(settings)
        summary = await _run_settings(settings, args.quiet)
    _print_summary(summary)
    return summary.exit_code


def _validate(args: argparse.Namespace) -> int:
    jobs: list[JobSpec] = []
    cents = 0
    by_kind: dict[str, int] = {}
    bad = 0
    try:
        for item in read_manifest(args.manifest):
            if isinstance(item, ManifestIssue):
                bad += 1
                _print_issue(item)
                continue
            cents += item.request.price_cents
            kind = f"{item.request.resolution.value}/{item.request.duration.value}"
            by_kind[kind] = by_kind.get(kind, 0) + 1
            if args.check_urls:  # otherwise nothing is kept: any manifest fits in memory
                jobs.append(item)
    except OSError as exc:
        raise UsageError(f"{args.manifest}: {exc.strerror or exc}") from exc
    count = sum(by_kind.values())
    unreachable = 0
    if args.check_urls:
        from pixazo_batch.urlcheck import check_image_urls  # noqa: PLC0415  (network, opt-in)

        for issue in anyio.run(check_image_urls, jobs, str(args.manifest)):
            unreachable += 1
            _print_issue(issue)
    result: dict[str, Any] = {
        "jobs": count,
        "bad_lines": bad,
        "image_problems": unreachable,
        "by_resolution_duration": by_kind,
        "estimated_cost_usd": f"{cents / 100:.2f}",
    }
    print(json.dumps(result))
    return EXIT_USAGE if bad or unreachable else EXIT_OK


def _state_file(args: argparse.Namespace) -> Path:
    path: Path = args.state or args.out / STATE_FILE_NAME
    if not path.is_file():
        raise UsageError(f"no state file at {path}")
    return path


def _status(args: argparse.Namespace) -> int:
    with StateStore.open(_state_file(args), lock=False) as store:
        print(json.dumps(status_summary(store, out=args.out, state=args.state)))
    return EXIT_OK


def _resolve(args: argparse.Namespace) -> int:
    state_file: Path = args.state_path or args.out_dir / STATE_FILE_NAME
    if not state_file.is_file():
        raise UsageError(f"no state file at {state_file}")
    choice: Choice
    if args.request_id is not None:
        choice = OperatorFoundRequest(args.request_id)
    else:
        choice = OperatorNotSent() if args.not_sent else OperatorAbandoned()

    async def settle() -> str:
        if not isinstance(choice, OperatorFoundRequest):
            return await resolve_job(state_file, args.job, choice)
        settings = _settings(args, manifest=Path(os.devnull))
        async with one_off_client(settings) as gateway:
            return await resolve_job(state_file, args.job, choice, gateway)

    print(anyio.run(settle))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    with StateStore.open(_state_file(args), lock=False) as store:
        if args.format == "csv":
            write_csv(store, sys.stdout)
        else:
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
