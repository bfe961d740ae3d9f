"""Producer: admits jobs into the run from the state file and the manifest.

Work already paid for comes first (whether or not the manifest still lists it): jobs a dead run
left ``submitting`` are held uncertain, completed jobs go to the downloader, submitted ones to
the poller, and uncertain jobs a callback named a request for to the poller's confirmation.
Then each manifest line is validated, recorded and, when its state and the flags allow, admitted
for submission; a line an earlier run read, found again byte for byte, is only admitted. An
unchanged manifest registered in full earlier is not read again: the jobs table already holds
every line.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path

import anyio
import structlog

from pixazo_batch.context import RunContext
from pixazo_batch.errors import ManifestError
from pixazo_batch.fleet import adopt_orphans, fleet_store, wait_for_silent_workers
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import OFFERABLE, Hinted, Interrupted, Listed, Resumed
from pixazo_batch.manifest import read_manifest
from pixazo_batch.manifestjob import KnownJob
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import JobSpec, JobState
from pixazo_batch.workpool import workers_for

log = structlog.get_logger(__name__)

#: manifest jobs recorded together (one state lookup for those recorded already)
REGISTER_BATCH = 256


async def feed(
    ctx: RunContext, issues: list[str], on_issue: Callable[[ManifestIssue], None] | None
) -> None:
    """Admit the paid-for work the state file holds, then the manifest's jobs.

    Every bad line is appended to ``issues`` (and passed to ``on_issue``); the intake closes
    when this returns, whatever happens.

    Raises:
        ManifestError: the manifest cannot be read, or ``strict`` and a line is bad.
    """
    fleet = fleet_store(ctx)
    try:
        if fleet is not None:
            await adopt_orphans(ctx, fleet)
        await resume_paid_work(ctx)
        digest = await anyio.to_thread.run_sync(_digest, ctx.settings.manifest)
        if ctx.store.knows_manifest(digest):
            # Unchanged since it was registered in full: the state file already holds every
            # line, validated, so resuming costs one pass over the jobs table.
            for row in ctx.store.iter_jobs(*OFFERABLE):
                await _offer(ctx, row)
            if fleet is not None:
                await wait_for_silent_workers(ctx, fleet)
            return
        jobs = await _register_manifest(ctx, issues, on_issue)
        if not issues:
            ctx.store.remember_manifest(digest, jobs)
        if fleet is not None:
            await wait_for_silent_workers(ctx, fleet)
    except OSError as exc:
        raise ManifestError(f"{ctx.settings.manifest}: {exc.strerror or exc}") from exc
    finally:
        ctx.router.close_intake()


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as manifest:
        while piece := manifest.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


async def _register_manifest(
    ctx: RunContext, issues: list[str], on_issue: Callable[[ManifestIssue], None] | None
) -> int:
    """Validate and record every manifest line, offering each job as it goes. Returns the
    number of good lines."""
    settings = ctx.settings
    started = time.monotonic()
    workers = workers_for(settings.manifest, busy_here=True)
    items = read_manifest(settings.manifest, ctx.store.recorded_lines, workers=workers)
    with closing(items):
        jobs, known = await _register_lines(ctx, enumerate(items), issues, on_issue)
    seconds = round(time.monotonic() - started, 2)
    fields = {"jobs": jobs, "known": known, "issues": len(issues), "workers": workers}
    log.info("manifest_read", **fields, seconds=seconds)
    return jobs


async def _register_lines(
    ctx: RunContext,
    items: Iterator[tuple[int, JobSpec | KnownJob | ManifestIssue]],
    issues: list[str],
    on_issue: Callable[[ManifestIssue], None] | None,
) -> tuple[int, int]:
    """Record and offer the jobs of the lines read; returns (good lines, lines known)."""
    settings = ctx.settings
    jobs = known = 0
    waiting: list[JobSpec | KnownJob] = []  # recorded together: one lookup for those known
    for number, item in items:
        if number % 256 == 0:
            await anyio.lowlevel.checkpoint()
        if isinstance(item, ManifestIssue):
            issue = item
        elif isinstance(item, JobSpec) and item.inputs and ctx.uploader is None:
            message = "a local image needs --inputs s3://bucket/prefix (or --out s3://...)"
            issue = ManifestIssue(str(settings.manifest), item.line, "image_file", message)
        else:
            known += isinstance(item, KnownJob)
            waiting.append(item)
            if len(waiting) >= REGISTER_BATCH:
                jobs += await _record(ctx, waiting, issues, on_issue)
                waiting = []
            continue
        # A bad line is reported after the lines before it are recorded (--strict stops there).
        jobs += await _record(ctx, waiting, issues, on_issue)
        waiting = []
        _report(issue, issues, on_issue, strict=settings.strict)
    jobs += await _record(ctx, waiting, issues, on_issue)
    return jobs, known


async def _record(
    ctx: RunContext,
    items: list[JobSpec | KnownJob],
    issues: list[str],
    on_issue: Callable[[ManifestIssue], None] | None,
) -> int:
    """Record the jobs of good lines and offer them, a known line's job only when its state
    may be offered; returns how many good lines there were."""
    specs = [item for item in items if isinstance(item, JobSpec)]
    registered = ctx.store.register_many(specs)
    offerable = [
        item.id for item in items if isinstance(item, KnownJob) and item.state in OFFERABLE
    ]
    known = ctx.store.get_many(offerable)
    recorded = 0
    for item in items:
        if isinstance(item, KnownJob):
            recorded += 1
            if (found := known.get(item.id)) is not None:
                await _offer(ctx, found)
            continue
        spec, row = item, next(registered)
        if isinstance(row, str):
            field = "id" if row.startswith("id ") else "output"
            issue = ManifestIssue(str(ctx.settings.manifest), spec.line, field, row)
            _report(issue, issues, on_issue, strict=ctx.settings.strict)
            continue
        if spec.inputs:
            ctx.store.keep_inputs(spec.inputs)
        recorded += 1
        await _offer(ctx, row)
    return recorded


def _report(
    issue: ManifestIssue,
    issues: list[str],
    on_issue: Callable[[ManifestIssue], None] | None,
    *,
    strict: bool,
) -> None:
    issues.append(str(issue))
    if on_issue is not None:
        on_issue(issue)
    log.warning("manifest_issue", **issue.log_fields())
    if strict:
        raise ManifestError(f"{issue} (--strict stops at the first bad line)")


async def resume_paid_work(ctx: RunContext) -> None:
    """Admit what earlier runs left in flight, manifest or not.

    Downloads are admitted before any poll starts: a poll that finishes a job sends it to the
    downloader itself, and admitting a job already moving is a no-op, but a job must not be
    seen ``completed`` by this scan after a poll of this run moved it there.
    """
    store, router = ctx.store, ctx.router
    interrupted = 0
    for row in store.iter_jobs(JobState.SUBMITTING, held=True):
        await router.admit(row, Interrupted())
        interrupted += 1
    if interrupted:
        log.warning("recovered_uncertain", count=interrupted, state="uncertain")
    # A video in a bucket is not looked for again: a HEAD per job would cost more than the
    # rare object someone deleted by hand (the review page and report name where each is).
    # Nor in a fleet, where several workers would race to fetch the same vanished file.
    look = ctx.bucket is None and ctx.store.worker is None
    downloaded = store.iter_outputs(JobState.DOWNLOADED) if look else ()
    for job_id, output in _vanished(ctx.settings.out_dir, downloaded):
        log.warning("output_missing", job_id=job_id, output=output)
        vanished = store.get(job_id)
        assert vanished is not None
        await router.admit(vanished, Resumed(file_present=False))
    for row in store.iter_jobs(JobState.COMPLETED, held=True):
        await router.admit(row, Resumed())
    for row in store.iter_jobs(JobState.UNCERTAIN):
        if store.callback_hints(row.id):
            await router.admit(row, Hinted())
    for row in store.iter_jobs(JobState.SUBMITTED, held=True):
        await router.admit(row, Resumed())


def _vanished(root: Path, outputs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """The ``(job id, output)`` pairs whose file is no longer under ``root``."""
    # One listing per folder instead of one stat per job: resuming a night of 100,000 videos
    # must not take a second of syscalls (docs/design.md, "Files").
    listed: dict[str, _FileNames] = {}
    for job_id, output in outputs:
        folder, _, name = output.rpartition("/")
        names = listed.get(folder)
        if names is None:
            names = listed[folder] = _FileNames(root / folder)
        if name not in names:
            yield job_id, output


class _FileNames:
    """The names of the files in one folder, in about 8 bytes a name (a set of a million names
    took 93 MB): each is kept as its 64-bit hash, sorted. Two names of one hash would take a
    missing video for present, one chance in about 2**64 / (files in the folder) a name."""

    def __init__(self, folder: Path) -> None:
        try:
            with os.scandir(folder) as entries:
                hashes = sorted(hash(entry.name) for entry in entries if entry.is_file())
        except OSError:
            hashes = []
        self._hashes = array.array("q", hashes)

    def __contains__(self, name: str) -> bool:
        wanted = hash(name)
        at = bisect.bisect_left(self._hashes, wanted)
        return at < len(self._hashes) and self._hashes[at] == wanted


async def _offer(ctx: RunContext, row: JobRow) -> None:
    """Admit a manifest job; its state and the flags decide whether it is submitted."""
    if row.state is JobState.PENDING and ctx.flags.stop_submitting:
        # Nothing more is sent this run (a budget, a wallet, a quota): the job stays pending,
        # as the submitter would leave it, without the trip through router and submitter
        # (at 1,000,000 lines after an early stop, 40 s; bench/README.md).
        return
    listed = Listed(ctx.settings.run_flags, attempts_left=row.attempts < ctx.settings.max_attempts)
    await ctx.router.admit(row, listed)
