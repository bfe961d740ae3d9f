"""Videos straight into a bucket (a real S3-compatible server: moto's server mode on loopback)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from pixazo_batch.config import Settings
from pixazo_batch.engine import run_batch
from pixazo_batch.errors import UsageError
from pixazo_batch.sim import Simulator
from pixazo_batch.storage import PART_BYTES, StorageRefusedError
from tests.conftest import TEST_KEY, CuttableBucket, fast, job_line, simulator, write_manifest
from tests.test_cli import cli_env, log_events, run_args

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]


def manifest_of(tmp_path: Path, count: int, **fields: Any) -> Path:
    return write_manifest(tmp_path / "jobs.jsonl", [job_line(i, **fields) for i in range(count)])


def served_sha256(sim: Simulator, request_id: str) -> str:
    media = sim.state.media_file(sim.state.book.jobs[request_id])
    return hashlib.sha256(b"".join(media.chunks(0, media.size, 1 << 20))).hexdigest()


def keys(bucket: Any, prefix: str = "") -> list[str]:
    listed = bucket.list_objects_v2(Bucket=bucket.bucket_name, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def unfinished_uploads(bucket: Any) -> list[str]:
    listed = bucket.list_multipart_uploads(Bucket=bucket.bucket_name)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


async def test_videos_go_into_the_bucket_whole_verified_and_named_by_their_location(
    tmp_path: Path, make_settings: MakeSettings, bucket: Any
) -> None:
    url = f"s3://{bucket.bucket_name}/night-1"
    async with simulator(fast(media_bytes=300_000)) as sim:
        settings = make_settings(
            sim, manifest_of(tmp_path, 3), out_dir=tmp_path / "local", out_bucket=url
        )
        summary = await run_batch(settings)
        expected = {
            r["id"]: served_sha256(sim, r["request_id"])
            for r in map(
                json.loads, (tmp_path / "local" / "results.jsonl").read_text().splitlines()
            )
        }
    assert summary.exit_code == 0
    assert keys(bucket) == [
        "night-1/job-000.mp4", "night-1/job-001.mp4", "night-1/job-002.mp4",
        "night-1/report.html", "night-1/results.jsonl",
    ]  # fmt: skip
    assert unfinished_uploads(bucket) == []
    for job_id, sha256 in expected.items():
        head = bucket.head_object(Bucket=bucket.bucket_name, Key=f"night-1/{job_id}.mp4")
        body = bucket.get_object(Bucket=bucket.bucket_name, Key=f"night-1/{job_id}.mp4")
        assert head["Metadata"]["sha256"] == sha256
        assert hashlib.sha256(body["Body"].read()).hexdigest() == sha256
    remote = bucket.get_object(Bucket=bucket.bucket_name, Key="night-1/results.jsonl")
    records = [json.loads(line) for line in remote["Body"].read().decode().splitlines()]
    assert [r["location"] for r in records] == [f"{url}/job-00{i}.mp4" for i in range(3)]
    assert not list((tmp_path / "local").rglob("*.mp4*")), "no video left on the local disk"


async def test_results_larger_than_a_part_go_up_whole_with_their_checksum(
    tmp_path: Path, make_settings: MakeSettings, bucket: Any
) -> None:
    # 1,100 jobs whose prompts are 5,000 characters make a review page over one part (5 MiB),
    # so it goes up as a multipart upload; nothing is sent (a budget of 0).
    url = f"s3://{bucket.bucket_name}/big"
    prompt = "A lighthouse at dusk, waves rolling in. " * 125
    async with simulator(fast()) as sim:
        settings = make_settings(
            sim,
            manifest_of(tmp_path, 1100, prompt=prompt),
            out_dir=tmp_path / "local",
            out_bucket=url,
            max_spend=Decimal(0),
        )
        summary = await run_batch(settings)
        assert sim.stats()["accepted"] == 0
    assert summary.counts["pending"] == 1100
    page = (tmp_path / "local" / "report.html").read_bytes()
    assert len(page) > PART_BYTES
    for name, kind in (("results.jsonl", "application/jsonl"), ("report.html", "text/html")):
        local = (tmp_path / "local" / name).read_bytes()
        remote = bucket.get_object(Bucket=bucket.bucket_name, Key=f"big/{name}")
        assert remote["Body"].read() == local
        assert remote["ContentType"] == kind
        assert remote["Metadata"]["sha256"] == hashlib.sha256(local).hexdigest()
    assert unfinished_uploads(bucket) == []


async def test_a_page_instead_of_a_video_leaves_no_object_and_no_upload(
    tmp_path: Path, make_settings: MakeSettings, bucket: Any
) -> None:
    url = f"s3://{bucket.bucket_name}/bad"
    scenario = fast(media_not_mp4_rate=1.0, media_not_mp4_kind="ftyp-html")
    async with simulator(scenario) as sim:
        settings = make_settings(
            sim, manifest_of(tmp_path, 1), out_dir=tmp_path / "l", out_bucket=url, download_tries=2
        )
        summary = await run_batch(settings)
    assert summary.exit_code == 3 and summary.counts["completed"] == 1
    assert [k for k in keys(bucket) if k.endswith(".mp4")] == []
    assert unfinished_uploads(bucket) == []


async def test_wrong_credentials_are_exit_4_and_nothing_is_paid(
    tmp_path: Path, make_settings: MakeSettings, bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.core.authorization import enable_iam_authentication

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    url = f"s3://{bucket.bucket_name}/x"
    async with simulator() as sim:
        settings = make_settings(
            sim, manifest_of(tmp_path, 1), out_dir=tmp_path / "l", out_bucket=url
        )
        # The server checks keys against its own IAM users only when asked to (by default it
        # takes any): ask it, as a real store always does.
        with enable_iam_authentication(), pytest.raises(StorageRefusedError) as refused:
            await run_batch(settings)
        stats = sim.stats()
    assert refused.value.exit_code == 4
    assert "refused the credentials" in str(refused.value)
    assert stats["submit_requests"] == 0


@pytest.mark.parametrize("problem", ["no such bucket", "endpoint unreachable", "plain http"])
async def test_a_bucket_that_cannot_be_used_is_one_clear_line_before_anything_is_paid(
    tmp_path: Path,
    make_settings: MakeSettings,
    bucket: Any,
    monkeypatch: pytest.MonkeyPatch,
    problem: str,
) -> None:
    url = f"s3://{bucket.bucket_name}/x"
    if problem == "no such bucket":
        url = "s3://no-such-bucket-here/x"
    elif problem == "endpoint unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://storage.example.com:9000")
    async with simulator() as sim:
        settings = make_settings(
            sim, manifest_of(tmp_path, 1), out_dir=tmp_path / "l", out_bucket=url
        )
        with pytest.raises(UsageError) as refused:
            await run_batch(settings)
        stats = sim.stats()
    assert stats["submit_requests"] == 0
    expected = {
        "no such bucket": "no such bucket",
        "endpoint unreachable": "cannot be reached",
        "plain http": "plain http is allowed only on loopback",
    }[problem]
    assert expected in str(refused.value)


def bucket_env(tmp_path: Path, moto_endpoint: str) -> dict[str, str]:
    return cli_env(
        PIXAZO_API_KEY=TEST_KEY,
        AWS_ENDPOINT_URL=moto_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        XDG_STATE_HOME=str(tmp_path / "state"),
    )


async def kill_at_first_part(command: list[str], env: dict[str, str]) -> int | None:
    async with await anyio.open_process(command, env=env) as process:
        async for record in log_events(process):
            if record.get("event") == "upload_part":
                process.kill()
                break
        return await process.wait()


async def test_kill_nine_mid_upload_leaves_no_partial_object_and_the_next_run_finishes(
    tmp_path: Path, bucket: Any, moto_endpoint: str
) -> None:
    manifest = manifest_of(tmp_path, 2)
    url = f"s3://{bucket.bucket_name}/killed"
    env = bucket_env(tmp_path, moto_endpoint)
    scenario = fast(media_bytes=20 << 20, media_size_jitter=0.0, media_throughput=8e6)
    async with simulator(scenario) as sim:
        command = [*run_args(sim, manifest, tmp_path / "unused"), "--out", url]
        killed = await kill_at_first_part(command, env)
        orphans = unfinished_uploads(bucket)
        scenario_fast = fast(media_bytes=20 << 20, media_size_jitter=0.0)
        sim.state.scenario = scenario_fast
        finished = await anyio.run_process(command, env=env, check=False)
        stats = sim.stats()
    assert killed == -signal.SIGKILL
    assert orphans, "the kill landed mid-upload"
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert [k for k in keys(bucket) if k.endswith(".mp4")] == [
        "killed/job-000.mp4", "killed/job-001.mp4",
    ]  # fmt: skip
    assert unfinished_uploads(bucket) == []
    assert not list((tmp_path / "state").rglob("*.mp4*")), "the spool is empty"
    assert stats["accepted"] == 2 and stats["duplicate_charges"] == 0
    status = await anyio.run_process(
        [*command[:3], "status", "--out", url, "--json"], env=env, check=False
    )
    assert json.loads(status.stdout)["location"] == url


@pytest.mark.parametrize("spooled", ["whole", "damaged"])
async def test_a_video_whole_in_the_spool_goes_up_without_being_fetched_again(
    tmp_path: Path, bucket: Any, moto_endpoint: str, spooled: str
) -> None:
    url = f"s3://{bucket.bucket_name}/spooled"
    env = bucket_env(tmp_path, moto_endpoint)
    async with simulator(fast(media_bytes=20 << 20, media_size_jitter=0.0)) as sim:
        command = [*run_args(sim, manifest_of(tmp_path, 1), tmp_path / "unused"), "--out", url]
        killed = await kill_at_first_part(command, env)
        orphans = unfinished_uploads(bucket)
        (video,) = (tmp_path / "state").rglob("job-000.mp4")
        if spooled == "damaged":
            os.truncate(video, video.stat().st_size // 2)
        finished = await anyio.run_process(command, env=env, check=False)
        (request_id,) = sim.state.book.jobs
        expected = served_sha256(sim, request_id)
        stats = sim.stats()
    assert killed == -signal.SIGKILL and orphans, "the kill landed mid-upload"
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert stats["media_requests"] == (1 if spooled == "whole" else 2)
    head = bucket.head_object(Bucket=bucket.bucket_name, Key="spooled/job-000.mp4")
    body = bucket.get_object(Bucket=bucket.bucket_name, Key="spooled/job-000.mp4")["Body"].read()
    assert head["Metadata"]["sha256"] == expected == hashlib.sha256(body).hexdigest()
    assert unfinished_uploads(bucket) == []
    assert not list((tmp_path / "state").rglob("*.mp4*")), "the spool is empty"
    assert stats["accepted"] == 1


async def test_a_bucket_out_of_reach_for_a_while_is_waited_for_without_fetching_again(
    tmp_path: Path, make_settings: MakeSettings, log_tap: Any, cuttable_bucket: CuttableBucket
) -> None:
    """The bucket stops taking connections in the middle of a night, then comes back: uploads
    wait for it without spending a video's tries, each video is fetched from the CDN once, and
    every one lands in the bucket (each try's refused connection used to give the night's
    videos up within seconds, exit 3)."""
    bucket = cuttable_bucket
    log_tap.on("downloaded", 2, bucket.cut)
    log_tap.on("bucket_unreachable", 1, bucket.back)
    async with simulator(fast(media_bytes=300_000)) as sim:
        settings = make_settings(
            sim, manifest_of(tmp_path, 6), out_dir=tmp_path / "local",
            out_bucket=f"s3://{bucket.name}/night", download_tries=2,
        )  # fmt: skip
        summary = await run_batch(settings)
        fetched = sim.stats()["media_requests"]
    stored = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix="night/")
    videos = [item["Key"] for item in stored["Contents"] if item["Key"].endswith(".mp4")]
    assert len(bucket.servers) == 2, "the outage was met and waited out"
    assert summary.exit_code == 0, summary
    assert len(videos) == 6
    assert fetched == 6, "no video fetched twice from the CDN"
