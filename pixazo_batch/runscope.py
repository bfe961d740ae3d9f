"""What a run holds around its pipeline: the bucket client, the callback listener, and the files
it leaves behind (``results.jsonl``, ``report.html``) in the output folder and bucket."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from io import BufferedReader
from pathlib import Path

import anyio
import structlog

from pixazo_batch.bucketpath import BucketPath
from pixazo_batch.config import RESULTS_FILE_NAME, Settings
from pixazo_batch.errors import StateError
from pixazo_batch.results import result_line, result_record, results_current
from pixazo_batch.reviewpage import PAGE_NAME, PageCards, write_page
from pixazo_batch.safefs import open_nofollow, replaced_text
from pixazo_batch.state import StateStore
from pixazo_batch.storage import Storage, storage_errors
from pixazo_batch.webhooks import WebhookReceiver

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage | None]:
    """The bucket client, when ``--out`` or ``--inputs`` names a bucket; both buckets checked
    before any request goes to the gateway.

    Raises:
        UsageError: no such bucket, or the endpoint cannot be reached.
        StorageRefusedError: the credentials are refused.
    """
    if settings.bucket is None and settings.inputs_bucket is None:
        yield None
        return
    async with Storage() as storage:
        if settings.bucket is not None:
            await storage.check(settings.bucket, "--out")
        if settings.inputs_bucket is not None:
            await storage.check(settings.inputs_bucket, "--inputs")
        yield storage


@contextlib.asynccontextmanager
async def open_callbacks(
    settings: Settings, store: StateStore
) -> AsyncIterator[WebhookReceiver | None]:
    """The webhook listener for this run, when ``webhook_url`` turns callbacks on."""
    if settings.webhook_url is None:
        yield None
        return
    receiver = WebhookReceiver(
        store,
        settings.webhook_url,
        settings.webhook_listen,
        settings.webhook_mode,
        secret_ttl=settings.webhook_secret_days * 86400,
    )
    async with receiver:
        yield receiver


async def write_outputs(settings: Settings, store: StateStore, storage: Storage | None) -> None:
    """``results.jsonl`` and ``report.html`` in the output folder (and the bucket), when a job
    changed or they are missing. A failure is logged (the state file holds the truth), and the
    results left behind are removed: the next run writes them, even if it changes nothing."""
    folder, where = settings.out_dir, settings.bucket
    try:
        if not results_current(store, folder / RESULTS_FILE_NAME):
            _write_results_and_page(store, folder, where)
        elif not (folder / PAGE_NAME).is_file():
            write_page(store, folder)
        else:
            return
    except (OSError, StateError) as exc:  # the disk that stopped the run, most likely
        log.error("results_not_written", error=str(exc))
        with contextlib.suppress(OSError):
            (folder / RESULTS_FILE_NAME).unlink(missing_ok=True)
        return
    if storage is None or where is None:
        return
    refused = storage_errors()
    try:
        # Streamed a part at a time: at 100,000 jobs the two files are over 100 MB. Opened once
        # for the checksum and the upload: a worker of a fleet sharing the folder may put its
        # own copy in place meanwhile.
        for name, kind in ((RESULTS_FILE_NAME, "application/jsonl"), (PAGE_NAME, "text/html")):
            source, sha256 = await anyio.to_thread.run_sync(_opened_with_sha256, folder / name)
            with source:
                await storage.upload_from(where, name, source, {"sha256": sha256}, kind)
    except OSError as exc:
        log.error("results_not_uploaded", error=str(exc))
    except refused as exc:
        log.error("results_not_uploaded", error=str(exc))


def _opened_with_sha256(path: Path) -> tuple[BufferedReader, str]:
    source = os.fdopen(open_nofollow(path, os.O_RDONLY), "rb")
    try:
        return source, hashlib.file_digest(source, "sha256").hexdigest()
    except BaseException:
        source.close()
        raise


def _write_results_and_page(store: StateStore, folder: Path, where: BucketPath | None) -> None:
    """``results.jsonl`` and ``report.html``, each replaced atomically, from one pass over the
    jobs (each pass reads every job's row and attempts: a million jobs take seconds)."""
    worker = store.worker
    with (
        replaced_text(folder / RESULTS_FILE_NAME, worker) as results,
        replaced_text(folder / PAGE_NAME, worker) as page,
    ):
        cards = PageCards()
        for row, request_ids, cents in store.iter_ledger():
            results.write(result_line(result_record(row, request_ids, cents, where)))
            cards.add(row, cents)
        page.writelines(cards.page(store))
