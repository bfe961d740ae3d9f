"""The command handlers: settings in, engine or state file, results out through ``views``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import SecretStr
from rich.console import Console

from pixazo_batch.bucketpath import BucketPath
from pixazo_batch.config import (
    ENV_PREFIX,
    SANDBOX_JOURNAL,
    STATE_FILE_NAME,
    Settings,
    local_folder,
)
from pixazo_batch.config import load_settings as load
from pixazo_batch.errors import EXIT_OK, EXIT_USAGE, UsageError
from pixazo_batch.lifecycle import OperatorAbandoned, OperatorFoundRequest, OperatorNotSent
from pixazo_batch.logs import configure_logging
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import Duration, JobSpec
from pixazo_batch.pgconn import is_database_url
from pixazo_batch.planning import plan_run
from pixazo_batch.results import iter_results, status_summary, write_csv
from pixazo_batch.reviewpage import render_page
from pixazo_batch.runoptions import RUN_OPTIONS, RUN_SWITCHES
from pixazo_batch.stores import open_store
from pixazo_batch.summary import RunSummary
from pixazo_batch.views import Output

if TYPE_CHECKING:
    from pixazo_batch.resolve import Choice

_SANDBOX_KEY = secrets.token_urlsafe(16)


def _output(args: argparse.Namespace) -> Output:
    return Output(human=not args.json and sys.stdout.isatty())


def _logs(args: argparse.Namespace, *known: str, console: Console | None = None) -> None:
    """Logs on standard error: readable through ``console`` when given (a terminal), else as
    ``--log-format`` says; the key and every other secret redacted."""
    level = "warning" if args.quiet else args.log_level
    keys = [os.environ.get(f"{ENV_PREFIX}API_KEY", ""), _SANDBOX_KEY, *known]
    json_lines = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(
        secrets=[k for k in keys if k], level=level, json_lines=json_lines, console=console
    )


def _settings(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None, **forced: Any
) -> Settings:
    names = (*RUN_OPTIONS, *RUN_SWITCHES, "manifest", "state_path", "base_url", "inputs")
    flags = {name: getattr(args, name, None) for name in names}
    if is_database_url(args.state_path):
        flags["state_url"], flags["state_path"] = args.state_path, None
    elif args.state_path is not None:
        flags["state_path"] = Path(args.state_path)
    flags["out_dir"] = local_folder(args.out_dir)
    if args.out_dir.startswith("s3://"):
        flags["out_bucket"] = args.out_dir
    flags.update(forced)
    settings = load(flags, config_file=getattr(args, "config", None), defaults=defaults)
    _logs(args, settings.api_key.get_secret_value())  # the key may come from --config
    return settings


def run(args: argparse.Namespace) -> int:
    """``run``: the manifest to verified files (or, with ``--dry-run``, what would be sent)."""
    out = _output(args)
    _logs(args)
    if args.sandbox:
        return anyio.run(_run_in_sandbox, args, out)
    settings = _settings(args)
    if args.dry_run:
        return _dry_run(settings, out)
    summary = anyio.run(_run_settings, args, settings)
    out.run_summary(summary, settings.out_dir)
    return summary.exit_code


async def _run_settings(args: argparse.Namespace, settings: Settings) -> RunSummary:
    # The engine (and aiohttp) is imported by the commands that talk to the gateway only.
    from pixazo_batch.engine import run_batch  # noqa: PLC0415
    from pixazo_batch.progress import TerminalProgress  # noqa: PLC0415

    progress = None
    if args.log_format == "auto" and not args.quiet and sys.stderr.isatty():
        console = Console(stderr=True)
        _logs(args, settings.api_key.get_secret_value(), console=console)
        progress = TerminalProgress(console)
    # Bad manifest lines reach the user as the producer's ``manifest_issue`` log lines.
    return await run_batch(settings, handle_signals=True, observer=progress)


def _dry_run(settings: Settings, out: Output) -> int:
    totals = plan_run(settings, on_issue=out.issue, on_job=out.dry_run_job)
    out.dry_run_totals(totals.as_json())
    return EXIT_USAGE if totals.issues else EXIT_OK


async def _run_in_sandbox(args: argparse.Namespace, out: Output) -> int:
    from pixazo_batch.sim import Simulator, scenario_named  # noqa: PLC0415  (only for --sandbox)

    scenario = scenario_named(args.sandbox_scenario)
    scenario = dataclasses.replace(scenario, keys=frozenset({_SANDBOX_KEY}))
    folder = local_folder(args.out_dir)
    journal = folder / SANDBOX_JOURNAL  # the simulator's memory, so the sandbox resumes
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {args.out_dir}: {exc.strerror or exc}") from None
    async with Simulator(scenario, journal=journal) as sim:
        settings = _settings(
            args,
            defaults={"poll_interval": scenario.poll_interval},
            base_url=sim.base_url,
            api_key=SecretStr(_SANDBOX_KEY),
        )
        if args.dry_run:
            return _dry_run(settings, out)
        summary = await _run_settings(args, settings)
    out.run_summary(summary, settings.out_dir)
    return summary.exit_code


def validate(args: argparse.Namespace) -> int:
    """``validate``: every problem of the manifest, its job count and price; no network."""
    from pixazo_batch.manifestpool import judge_lines  # noqa: PLC0415  (pools: 10 ms to import)

    out = _output(args)
    _logs(args)
    jobs: list[JobSpec] = []
    problems = 0
    bad_lines: set[int] = set()
    # Counted by kind, priced once a kind.
    kinds: Counter[tuple[str, str]] = Counter()
    try:
        for item in judge_lines(args.manifest, keep=jobs if args.check_urls else None):
            if isinstance(item, ManifestIssue):
                problems += 1
                bad_lines.add(item.line)
                out.issue(item)
            else:
                kinds[item] += 1
    except OSError as exc:
        raise UsageError(f"{args.manifest}: {exc.strerror or exc}") from None
    if args.check_urls:
        from pixazo_batch.urlcheck import check_image_urls  # noqa: PLC0415  (network, opt-in)

        for issue in anyio.run(check_image_urls, jobs, str(args.manifest)):
            problems += 1
            bad_lines.add(issue.line)
            out.issue(issue)
    cents = sum(count * Duration(duration).price_cents for (_, duration), count in kinds.items())
    by_kind = {f"{res}/{duration}": count for (res, duration), count in kinds.items()}
    out.validation(
        {
            "jobs": sum(by_kind.values()),
            "problems": problems,
            "bad_lines": len(bad_lines),
            "by_resolution_duration": by_kind,
            "price_usd": f"{cents / 100:.2f}",
        }
    )
    return EXIT_USAGE if problems else EXIT_OK


def _state_file(args: argparse.Namespace) -> Path | str:
    """The state named by ``--state`` (a file or a database URL), else the output's file."""
    if is_database_url(args.state_path):
        url: str = args.state_path
        return url
    path = (
        Path(args.state_path) if args.state_path else local_folder(args.out_dir) / STATE_FILE_NAME
    )
    if not path.is_file():
        raise UsageError(f"no state file at {path}")
    return path


def status(args: argparse.Namespace) -> int:
    """``status``: counts, money and every job that needs attention, from the state file."""
    out = _output(args)
    _logs(args)
    with open_store(_state_file(args), lock=False) as store:
        summary = status_summary(
            store, out=args.out_dir, state=args.state_path, where=_bucket_of(args)
        )
        out.status(summary)
    return EXIT_OK


def _bucket_of(args: argparse.Namespace) -> BucketPath | None:
    out: str = args.out_dir
    return BucketPath.parse(out, "--out") if out.startswith("s3://") else None


def report(args: argparse.Namespace) -> int:
    """``report``: one record per job (JSON lines, CSV, the review page, or a table)."""
    out = _output(args)
    _logs(args)
    where = _bucket_of(args)
    with open_store(_state_file(args), lock=False) as store:
        if args.format == "csv":
            write_csv(store, sys.stdout, where)
        elif args.format == "html":
            sys.stdout.writelines(render_page(store))
        elif args.format == "jsonl":
            Output(human=False).records(iter_results(store, where))
        else:
            out.records(iter_results(store, where))
    return EXIT_OK


def resolve(args: argparse.Namespace) -> int:
    """``resolve``: settle one uncertain job durably."""
    out = _output(args)
    _logs(args)
    state_file = _state_file(args)
    choice: Choice
    if args.request_id is not None:
        choice = OperatorFoundRequest(args.request_id)
    else:
        choice = OperatorNotSent() if args.not_sent else OperatorAbandoned()

    async def settle() -> str:
        from pixazo_batch.engine import one_off_client  # noqa: PLC0415  (see _run_settings)
        from pixazo_batch.resolve import resolve_job  # noqa: PLC0415

        if not isinstance(choice, OperatorFoundRequest):
            return await resolve_job(state_file, args.job, choice)
        settings = _settings(args, manifest=Path(os.devnull))
        async with one_off_client(settings) as gateway:
            return await resolve_job(state_file, args.job, choice, gateway)

    out.text(anyio.run(settle))
    return EXIT_OK


def simulate(args: argparse.Namespace) -> int:
    """``simulate``: serve the local gateway simulator until interrupted."""
    from pixazo_batch.sim import Simulator, scenario_named  # noqa: PLC0415  (only for simulate)

    _logs(args)
    scenario = scenario_named(args.scenario, time_scale=args.time_scale)
    scenario = dataclasses.replace(scenario, keys=frozenset({args.key}))

    async def serve() -> None:
        try:
            simulator = await Simulator(scenario, port=args.port).__aenter__()
        except OSError as exc:
            raise UsageError(f"--port {args.port}: {exc.strerror or exc}") from None
        try:
            print(f"gateway {simulator.base_url}", flush=True)
            print(f"media {simulator.media_url}", flush=True)
            await anyio.sleep_forever()
        finally:
            await simulator.__aexit__(None, None, None)

    anyio.run(serve)
    return EXIT_OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run,
    "validate": validate,
    "status": status,
    "report": report,
    "resolve": resolve,
    "simulate": simulate,
}
