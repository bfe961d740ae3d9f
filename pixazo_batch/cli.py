"""The ``pixazo-batch`` command: argv -> the command's handler; errors -> one line and an exit code.

No business logic lives here (``commands.py`` holds the handlers). Options shared by every
command (``--json``, ``--quiet``, ``--log-level``, ``--log-format``) may come before or after
the command's name. A problem reaches the user as one line naming what to fix, never as a
traceback: a usage or settings error, a damaged state file, a closed or full standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sqlite3
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pixazo_batch.commands import HANDLERS
from pixazo_batch.config import DEFAULT_BASE_URL, ENV_PREFIX, STATE_FILE_NAME, Settings
from pixazo_batch.errors import EXIT_OK, EXIT_USAGE, PixazoBatchError
from pixazo_batch.runoptions import RUN_OPTIONS, RUN_SWITCHES, SANDBOX_SCENARIOS

KEY_ENV = f"{ENV_PREFIX}API_KEY"
_EPILOG = (
    f"The API key is read from {KEY_ENV} (or a --config file), never from the command line. "
    "Exit codes: 0 done, 1 jobs failed, 2 usage, settings or manifest error, 3 incomplete (the "
    "next run resumes by itself), 4 key refused, 5 uncertain jobs wait for a decision (see "
    "'resolve'), 75 state file locked."
)


def _package_version() -> str:
    try:
        return version("pixazo-batch")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _shared_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options every command takes; below a command their defaults stay those of the top."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--json", action="store_true", default=default(False),
        help="JSON on standard output even on a terminal (it is always JSON off a terminal)",
    )  # fmt: skip
    parser.add_argument(
        "--quiet", action="store_true", default=default(False),
        help="only warnings, errors and the result",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default=default("info"),
        metavar="LEVEL", help="debug, info, warning or error (info)",
    )  # fmt: skip
    parser.add_argument(
        "--log-format", choices=["auto", "json", "console"], default=default("auto"),
        metavar="FORMAT", help="auto (readable on a terminal, JSON lines otherwise), json, console",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="pixazo-batch",
        description="Batch-generate videos with Luma Ray 2 Flash (image-to-video) through the "
        "Pixazo gateway: resumable, budget-safe, never paying twice for a job.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    _shared_options(parser, top=True)
    shared = argparse.ArgumentParser(add_help=False)
    _shared_options(shared, top=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, parents=[shared])

    run = command("run", "run a manifest to verified MP4 files (resumable)")
    run.add_argument(
        "manifest", type=Path, metavar="MANIFEST", help="JSONL manifest, one job a line"
    )
    _out_and_state(run)
    run.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings (flags and env win)"
    )
    run.add_argument(
        "--inputs", metavar="URL",
        help="s3://bucket/prefix for local images (default: the --out bucket's inputs/)",
    )  # fmt: skip
    run.add_argument(
        "--base-url", metavar="URL",
        help=f"gateway base URL (env {ENV_PREFIX}BASE_URL; default {DEFAULT_BASE_URL})",
    )  # fmt: skip
    for name, (kind, metavar, text, choices) in RUN_OPTIONS.items():
        default = Settings.model_fields[name].default
        shown = " (no cap)" if name == "max_spend" else f" ({default})" if default else ""
        run.add_argument(
            f"--{name.replace('_', '-')}", type=kind, metavar=metavar, choices=choices,
            help=text + shown,
        )  # fmt: skip
    for name, text in RUN_SWITCHES.items():
        run.add_argument(
            f"--{name.replace('_', '-')}", action="store_true", default=None, help=text
        )
    run.add_argument(
        "--dry-run", action="store_true", help="print what would be submitted; send nothing"
    )
    run.add_argument(
        "--sandbox", action="store_true", help="run against an embedded local simulator"
    )
    run.add_argument(
        "--sandbox-scenario", default="demo", choices=SANDBOX_SCENARIOS, metavar="SCENARIO",
        help=f"simulator scenario for --sandbox: {', '.join(SANDBOX_SCENARIOS)} (demo)",
    )  # fmt: skip

    validate = command("validate", "check a manifest and price it (no network)")
    validate.add_argument("manifest", type=Path, metavar="MANIFEST")
    validate.add_argument(
        "--check-urls", action="store_true", help="also ask each image URL with HEAD (network)"
    )

    status = command("status", "counts, spend and problems from a state file")
    _out_and_state(status)
    report = command("report", "one row per job from a state file")
    _out_and_state(report)
    report.add_argument(
        "--format", choices=["jsonl", "csv", "html"], default=None, metavar="FORMAT",
        help="jsonl, csv or html (a table on a terminal, jsonl otherwise)",
    )  # fmt: skip

    resolve = command("resolve", "settle one uncertain job: its request id, not sent, or abandon")
    resolve.add_argument("job", metavar="JOB", help="the id of an uncertain job")
    _out_and_state(resolve)
    resolve.add_argument("--config", type=Path, metavar="FILE", help="TOML settings")
    resolve.add_argument("--base-url", metavar="URL", help="gateway base URL")
    choice = resolve.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--request-id", metavar="ID", help="the request found in the Pixazo dashboard (checked)"
    )
    choice.add_argument("--not-sent", action="store_true", help="the POST never arrived: resend")
    choice.add_argument("--abandon", action="store_true", help="give the job up (failed)")

    simulate = command("simulate", "serve the local gateway simulator")
    simulate.add_argument(
        "--port", type=int, default=8080, metavar="N", help="gateway port (0: any free one; 8080)"
    )
    simulate.add_argument(
        "--scenario", default="demo", choices=SANDBOX_SCENARIOS, metavar="SCENARIO",
        help=f"{', '.join(SANDBOX_SCENARIOS)} (demo)",
    )  # fmt: skip
    simulate.add_argument(
        "--key", default="sandbox", metavar="KEY", help="the API key it accepts (sandbox)"
    )
    simulate.add_argument(
        "--time-scale", type=float, metavar="F", help="multiply every duration by F"
    )
    return parser


def _out_and_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", dest="out_dir", metavar="DIR", required=True,
        help="output folder, or s3://bucket/prefix (the state then stays on this machine)",
    )  # fmt: skip
    parser.add_argument(
        "--state", dest="state_path", metavar="FILE|URL",
        help=f"state file (DIR/{STATE_FILE_NAME}), or postgresql://... shared by a fleet",
    )  # fmt: skip


def _database_errors() -> tuple[type[Exception], ...]:
    """What PostgreSQL's driver raises, when it is installed."""
    try:
        import psycopg  # noqa: PLC0415  (only with the pg extra)
    except ImportError:
        return ()
    return (psycopg.Error,)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``docs/design.md``, "Exit codes")."""
    args = build_parser().parse_args(argv)
    try:
        code = HANDLERS[args.command](args)
        sys.stdout.flush()
    except PixazoBatchError as exc:
        return _fail(str(exc), exc.exit_code)
    except sqlite3.DatabaseError as exc:  # a state file damaged under a read
        return _fail(f"the state file is damaged or unreadable: {exc}", EXIT_USAGE)
    except _database_errors() as exc:  # a state database gone under a read
        return _fail(f"the state database failed: {str(exc).strip().splitlines()[0]}", EXIT_USAGE)
    except BrokenPipeError:
        # The reader stopped reading (``report | head``): nothing is wrong.
        _drop_stdout()
        return EXIT_OK
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
            raise
        _drop_stdout()
        return _fail(f"cannot write the output: {exc.strerror}", EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    return code


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's own flush at exit does not
    fail a second time on what could not be written."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fail(message: str, code: int) -> int:
    with contextlib.suppress(OSError):
        print(f"pixazo-batch: {message}", file=sys.stderr, flush=True)
    return code
