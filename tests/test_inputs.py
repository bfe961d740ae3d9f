"""Local images as inputs: checked when the manifest is read, uploaded once (content-addressed),
handed to the gateway as presigned URLs that the simulated model really fetches."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from pixazo_batch.config import Settings
from pixazo_batch.engine import run_batch
from pixazo_batch.manifest import read_manifest
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import JobSpec
from tests.conftest import (
    TEST_KEY,
    CuttableBucket,
    LogTap,
    fast,
    simulator,
    state_sql,
    write_manifest,
)
from tests.test_cli import cli_env, run_args, run_cli

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


def line(index: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"job-{index:03d}", "prompt": f"A lighthouse, take {index}", **fields}


def images(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(PNG)
    (tmp_path / "img" / "b.jpg").write_bytes(JPEG)
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    with open(tmp_path / "img" / "huge.png", "wb") as huge:
        huge.write(PNG)
        huge.truncate(51 * 1024 * 1024)  # sparse: the size is checked before a byte is read
    return tmp_path / "img"


def test_validate_checks_each_local_image_by_its_bytes_and_size(tmp_path: Path) -> None:
    images(tmp_path)
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            line(0, image_file="img/a.png", end_image_file="img/b.jpg"),
            line(1, image_file="img/missing.png"),
            line(2, image_file="img/notes.txt"),
            line(3, image_file="img/huge.png"),
            line(4, image_file=str(tmp_path / "img" / "a.png")),
            line(5, image_file="img/a.png", image_url="https://x.example/a.jpg"),
            line(6),
        ],
    )
    items = list(read_manifest(manifest))
    assert isinstance(items[0], JobSpec)
    assert items[0].request.image_url.startswith("pixazo-input:")
    assert items[0].request.image_url.endswith(".png")
    assert items[0].request.end_image_url.endswith(".jpg")
    problems = [(i.line, i.field, i.message) for i in items if isinstance(i, ManifestIssue)]
    assert [(n, f) for n, f, _ in problems] == [
        (2, "image_file"), (3, "image_file"), (4, "image_file"), (5, "image_file"),
        (6, "(line)"), (7, "(line)"),
    ]  # fmt: skip
    assert "No such file" in problems[0][2]
    assert "not a JPEG, PNG or WebP" in problems[1][2]
    assert "over the 50 MB" in problems[2][2]
    assert "relative to the manifest" in problems[3][2]
    assert "exactly one of image_url and image_file" in problems[4][2]
    result = run_cli("validate", str(manifest))
    assert result.returncode == 2
    assert json.loads(result.stdout)["jobs"] == 1


async def test_local_images_are_uploaded_once_and_reached_by_the_model_through_signed_urls(
    tmp_path: Path, make_settings: MakeSettings, bucket: Any, log_tap: LogTap
) -> None:
    images(tmp_path)
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            line(0, image_file="img/a.png"),
            line(1, image_file="img/a.png", end_image_file="img/b.jpg"),
        ],
    )
    url = f"s3://{bucket.bucket_name}/night"
    async with simulator(fast(fetch_images=True)) as sim:
        settings = make_settings(sim, manifest, out_dir=tmp_path / "local", out_bucket=url)
        first = await run_batch(settings)
        again = await run_batch(settings)
        stats = sim.stats()
    inputs = bucket.list_objects_v2(Bucket=bucket.bucket_name, Prefix="night/inputs/")
    uploaded = sorted(item["Key"].rsplit("/", 1)[1] for item in inputs["Contents"])
    assert first.exit_code == again.exit_code == 0
    assert first.counts["downloaded"] == 2
    assert sorted(name.rsplit(".", 1)[1] for name in uploaded) == ["jpg", "png"], "each once"
    assert len(log_tap.named("input_uploaded")) == 2
    assert stats["image_fetches"] == 3 and stats["image_fetch_failures"] == 0
    assert stats["accepted"] == 2, "the rerun resubmitted nothing: the hash holds the bytes"
    # The signed URLs went to the gateway only: never stored, never logged.
    with state_sql(settings) as db:
        stored = "\n".join(row[0] for row in db.execute("SELECT request_json FROM jobs"))
    assert "pixazo-input:" in stored and "Signature" not in stored
    assert not [e for e in log_tap.events if "Signature" in json.dumps(e, default=str)]
    sent = [job.request.image_url for job in sim.state.book.jobs.values()]
    assert all("Signature=" in u and u.startswith("http://127.0.0.1") for u in sent)


async def test_an_inputs_bucket_out_of_reach_for_a_while_is_waited_for_before_sending(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap, cuttable_bucket: CuttableBucket
) -> None:
    """The bucket stops taking connections between two jobs, the second with a local image to
    upload: its submit waits for the bucket (it was left unsent for the night) and sends once
    the bucket is back."""
    images(tmp_path)
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [line(0, image_url="https://x.example/0.jpg"), line(1, image_file="img/a.png")],
    )
    bucket = cuttable_bucket
    log_tap.on("submitting", 1, bucket.cut)  # job-000's POST; job-001 waits for the submitter
    log_tap.on("bucket_unreachable", 1, bucket.back)
    async with simulator() as sim:
        url = f"s3://{bucket.name}/night"
        settings = make_settings(
            sim, manifest, out_dir=tmp_path / "local", out_bucket=url, concurrency=1
        )
        summary = await run_batch(settings)
        stats = sim.stats()
    assert len(bucket.servers) == 2, "the outage was met and waited out"
    assert summary.exit_code == 0 and summary.counts["downloaded"] == 2
    assert stats["accepted"] == 2
    assert log_tap.named("input_unavailable") == []


async def test_a_local_image_without_an_inputs_bucket_is_a_manifest_problem(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    images(tmp_path)
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [line(0, image_file="img/a.png"), line(1, image_url="https://x.example/1.jpg")],
    )
    async with simulator() as sim:
        summary = await run_batch(make_settings(sim, manifest))
        stats = sim.stats()
    assert summary.exit_code == 2
    assert "needs --inputs s3://bucket/prefix" in summary.manifest_issues[0]
    assert summary.counts["downloaded"] == 1 and stats["accepted"] == 1


async def test_the_model_fails_a_job_whose_image_it_cannot_read(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = write_manifest(
        tmp_path / "m.jsonl", [line(0, image_url="http://127.0.0.1:9/gone.jpg")]
    )
    async with simulator(fast(fetch_images=True, processing_median={"540p": 0.5})) as sim:
        summary = await run_batch(make_settings(sim, manifest))
        stats = sim.stats()
    assert summary.exit_code == 1
    assert summary.failed == [{"id": "job-000", "error": "Failed to read user input frames"}]
    assert stats["image_fetch_failures"] == 1


async def test_each_resubmission_after_a_remote_error_carries_a_url_the_model_can_read(
    tmp_path: Path, make_settings: MakeSettings, bucket: Any, log_tap: LogTap
) -> None:
    images(tmp_path)
    manifest = write_manifest(tmp_path / "m.jsonl", [line(0, image_file="img/a.png")])
    url = f"s3://{bucket.bucket_name}/err"
    async with simulator(fast(fetch_images=True, error_rate=1.0)) as sim:
        settings = make_settings(sim, manifest, out_dir=tmp_path / "local", out_bucket=url)
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 1, "every attempt ended in ERROR"
    assert stats["accepted"] == settings.max_attempts == 3
    assert stats["image_fetches"] == 3 and stats["image_fetch_failures"] == 0
    assert len(log_tap.named("input_uploaded")) == 1, "signed again, never uploaded again"


async def test_inputs_flag_takes_images_to_a_bucket_while_videos_stay_on_disk(
    tmp_path: Path, bucket: Any
) -> None:
    images(tmp_path)
    manifest = write_manifest(tmp_path / "m.jsonl", [line(0, image_file="img/b.jpg")])
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast(fetch_images=True)) as sim:
        inputs = f"s3://{bucket.bucket_name}/uploads"
        command = run_args(sim, manifest, tmp_path / "out", "--inputs", inputs)
        finished = await anyio.run_process(command, env=env, check=False)
        stats = sim.stats()
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert (tmp_path / "out" / "job-000.mp4").stat().st_size > 0
    listed = bucket.list_objects_v2(Bucket=bucket.bucket_name, Prefix="uploads/")
    assert [item["Key"].rsplit(".", 1)[1] for item in listed["Contents"]] == ["jpg"]
    assert stats["image_fetches"] == 1 and stats["image_fetch_failures"] == 0
