"""What an operator running nightly from cron relies on: config, dry runs, reports, the lock."""

from __future__ import annotations

import csv
import io
import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from pydantic import SecretStr

import pixazo_batch
from pixazo_batch.config import Settings, load_settings
from pixazo_batch.engine import run_batch
from pixazo_batch.errors import UsageError
from pixazo_batch.manifest import read_manifest
from pixazo_batch.models import JobSpec
from pixazo_batch.urlcheck import check_image_urls
from tests.conftest import TEST_KEY, LogTap, job_line, simulator, write_manifest
from tests.test_cli import PYTHON, cli_env, run_cli

pytestmark = pytest.mark.anyio


def test_public_api_is_pinned() -> None:
    assert pixazo_batch.__all__ == sorted(pixazo_batch.__all__)
    assert pixazo_batch.__all__ == [
        "GenerationRequest", "JobSpec", "JobState", "PixazoBatchError", "RemoteStatus",
        "RunSummary", "Settings", "load_settings", "run_batch",
    ]  # fmt: skip


def test_flags_beat_environment_beat_config_file(tmp_path: Path) -> None:
    config = tmp_path / "pixazo.toml"
    config.write_text(
        'rps = 1.5\nmax_attempts = 7\nbase_url = "https://file.example"\napi_key = "k-file"\n'
    )
    environ = {
        "PIXAZO_RPS": "2.5",
        "PIXAZO_API_KEY": "k-env",
        "PIXAZO_BASE_URL": "https://env.example",
    }
    flags = {"manifest": Path("m.jsonl"), "out_dir": Path("out"), "rps": 9.0, "max_attempts": None}
    settings = load_settings(flags, environ=environ, config_file=config)
    assert settings.rps == 9.0, "flag wins"
    assert settings.base_url == "https://env.example", "environment beats the file"
    assert settings.api_key.get_secret_value() == "k-env"
    assert settings.max_attempts == 7, "the file beats the default"
    assert "k-env" not in repr(settings), "the key is a secret type"


def test_unknown_config_keys_and_bad_values_name_the_field_and_its_source(
    tmp_path: Path,
) -> None:
    config = tmp_path / "pixazo.toml"
    config.write_text("colour = 'blue'\nmax_spend = 'lots'\n")
    env = {"PIXAZO_API_KEY": "k"}
    with pytest.raises(UsageError) as from_file:
        load_settings({"manifest": "m", "out_dir": "o"}, environ=env, config_file=config)
    with pytest.raises(UsageError, match=r"^--rps: Input should be greater than 0$"):
        load_settings({"manifest": "m", "out_dir": "o", "rps": -1}, environ=env)
    with pytest.raises(UsageError, match=r"^PIXAZO_MAX_SPEND: Input should be a valid decimal$"):
        load_settings({"manifest": "m", "out_dir": "o"}, environ={**env, "PIXAZO_MAX_SPEND": "abc"})
    assert f"{config}: colour: Extra inputs are not permitted" in str(from_file.value)
    assert f"{config}: max_spend: Input should be a valid decimal" in str(from_file.value)


def test_cli_reports_a_missing_out_folder_and_bad_values(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0)])
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    missing = run_cli("run", str(manifest), env=env)
    negative = run_cli("run", str(manifest), "--out", str(tmp_path / "o"), "--rps", "-3", env=env)
    assert missing.returncode == negative.returncode == 2
    assert "the following arguments are required: --out" in missing.stderr
    assert "--rps: Input should be greater than 0" in negative.stderr


async def test_dry_run_prices_what_would_be_submitted_and_sends_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "m.jsonl", [job_line(0), job_line(1, duration="9s"), job_line(2)]
    )
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator() as sim:
        before = await anyio.run_process(
            [PYTHON, "-m", "pixazo_batch", "run", str(manifest), "--out", str(out), "--dry-run",
             "--base-url", sim.base_url], env=env, check=False,
        )  # fmt: skip
        assert sim.stats()["gateway_requests"] == 0
        assert not (out / ".pixazo-batch.db").exists(), "a dry run writes nothing"
        settings = Settings(manifest=manifest, out_dir=out, api_key=SecretStr(TEST_KEY),
                            base_url=sim.base_url, poll_interval=0.02, rps=500)  # fmt: skip
        await run_batch(settings)
        write_manifest(
            manifest, [job_line(0), job_line(1, duration="9s"), job_line(2), job_line(3)]
        )
        after = await anyio.run_process(
            [PYTHON, "-m", "pixazo_batch", "run", str(manifest), "--out", str(out), "--dry-run",
             "--base-url", sim.base_url], env=env, check=False,
        )  # fmt: skip
    first = [json.loads(line) for line in before.stdout.decode().splitlines()]
    second = [json.loads(line) for line in after.stdout.decode().splitlines()]
    assert before.returncode == 0
    assert first[-1] == {"event": "dry_run", "jobs": 3, "price_usd": "0.76", "problems": 0}
    assert [job["id"] for job in second[:-1]] == ["job-003"]
    assert second[-1]["price_usd"] == "0.20"


@pytest.mark.sqlite_state("commands find the state file through --out")
async def test_status_and_csv_report_from_the_state_file(
    tmp_path: Path, make_settings: Any
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0), job_line(1)])
    from tests.conftest import fast

    async with simulator(fast(failed_rate=1.0)) as sim:
        settings = make_settings(sim, manifest)
        await run_batch(settings)
    status = json.loads(run_cli("status", "--out", str(settings.out_dir)).stdout)
    report = run_cli("report", "--out", str(settings.out_dir), "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(report)))
    assert status["counts"] == {"failed": 2}
    assert status["committed_usd"] == status["spent_usd"] == "0.40", "FAILED is charged"
    assert status["oldest_pending"] is None
    assert status["problems"] == 2
    assert {p["id"] for p in status["attention"]} == {"job-000", "job-001"}
    assert status["last_run"]["exit_code"] == 1
    assert [r["id"] for r in rows] == ["job-000", "job-001"]
    assert rows[0]["state"] == "failed" and rows[0]["cost_usd"] == "0.20"


def test_status_without_a_state_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("status", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "no state file" in result.stderr


async def test_check_urls_reports_unreachable_wrong_type_and_oversize(tmp_path: Path) -> None:
    async def image(request: web.Request) -> web.Response:
        kind = {"a.jpg": "image/jpeg", "b.txt": "text/html"}.get(request.match_info["name"])
        if kind is None:
            raise web.HTTPNotFound
        return web.Response(body=b"x", content_type=kind)

    async def huge(request: web.Request) -> web.Response:
        return web.Response(
            headers={"Content-Type": "image/png", "Content-Length": str(60 * 1024 * 1024)}
        )

    app = web.Application()
    app.router.add_route("HEAD", "/big.png", huge)
    app.router.add_get("/{name}", image)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [job_line(0, image_url=f"{base}/a.jpg"), job_line(1, image_url=f"{base}/b.txt"),
         job_line(2, image_url=f"{base}/gone.jpg", end_image_url=f"{base}/a.jpg"),
         job_line(3, image_url=f"{base}/big.png")],
    )  # fmt: skip
    try:
        jobs = [item for item in read_manifest(manifest) if isinstance(item, JobSpec)]
        issues = await check_image_urls(jobs, str(manifest))
    finally:
        await runner.cleanup()
    found = {(i.line, i.field): i.message for i in issues}
    assert set(found) == {(2, "image_url"), (3, "image_url"), (4, "image_url")}
    assert "Content-Type 'text/html'" in found[(2, "image_url")]
    assert "HTTP 404" in found[(3, "image_url")]
    assert "too large" in found[(4, "image_url")]


async def test_a_second_run_exits_75_naming_the_holder_and_a_killed_holder_frees_the_lock(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    from tests.conftest import fast
    from tests.test_cli import log_events, run_args

    slow = fast(processing_median={"540p": 60.0}, processing_sigma=0.0)
    async with simulator(slow) as sim:
        async with await anyio.open_process(run_args(sim, manifest, out), env=env) as holder:
            async for record in log_events(holder):
                if record.get("event") == "submitted":
                    break
            second = await anyio.run_process(run_args(sim, manifest, out), env=env, check=False)
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
        for job in sim.state.book.jobs.values():
            job.started = job.finished = job.created
        third = await anyio.run_process(run_args(sim, manifest, out), env=env, check=False)
    assert second.returncode == 75
    assert f'"pid": {holder.pid}' in second.stderr.decode()
    assert '"started"' in second.stderr.decode()
    assert third.returncode == 0, "the lock of a SIGKILLed run is taken over"


async def test_json_log_lines_carry_the_job_fields_and_end_with_a_summary(
    tmp_path: Path, make_settings: Any, log_tap: LogTap
) -> None:
    async with simulator() as sim:
        await run_batch(make_settings(sim, write_manifest(tmp_path / "m.jsonl", [job_line(0)])))
    lines = [json.loads(line) for line in log_tap.sink.getvalue().splitlines()]  # type: ignore[attr-defined]
    submitted = next(line for line in lines if line["event"] == "submitted")
    assert {"job_id", "request_id", "state", "attempt", "timestamp", "level"} <= set(submitted)
    assert lines[-1]["event"] == "summary"
    assert lines[-1]["exit_code"] == 0


def test_off_a_terminal_stdout_holds_only_the_summary_and_quiet_keeps_stderr_to_warnings(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    args = ("run", "jobs.example.jsonl", "--out", str(out), "--sandbox", "--poll-interval", "0.3")
    result = run_cli("--quiet", *args)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["event"] == "summary"
    levels = {
        json.loads(entry)["level"] for entry in result.stderr.splitlines() if entry.startswith("{")
    }
    assert levels <= {"warning", "error"}


def test_garbage_manifests_get_clear_errors_never_a_traceback(tmp_path: Path) -> None:
    manifest = tmp_path / "garbage.jsonl"
    manifest.write_bytes(
        bytes(range(256)) * 4 + b"\n{\n[]\n" + json.dumps(job_line(0)).encode() + b"\n"
    )
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    checked = run_cli("validate", str(manifest), env=env)
    dry = run_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--dry-run", env=env)
    missing = run_cli("validate", str(tmp_path / "absent.jsonl"), env=env)
    for result in (checked, dry, missing):
        assert "Traceback" not in result.stderr
        assert result.returncode == 2
    assert ": (line): not valid UTF-8" in checked.stderr
    assert f"{manifest}:1: (line): invalid JSON" in checked.stderr
    assert json.loads(checked.stdout)["jobs"] == 1
    assert "absent.jsonl" in missing.stderr


async def test_terminal_progress_shows_bars_money_and_eta(
    tmp_path: Path, make_settings: Any
) -> None:
    from rich.console import Console

    from pixazo_batch.progress import TerminalProgress

    console = Console(record=True, width=140, force_terminal=True)
    async with simulator() as sim:
        settings = make_settings(
            sim, write_manifest(tmp_path / "m.jsonl", [job_line(0), job_line(1)])
        )
        await run_batch(settings, observer=TerminalProgress(console))
    text = console.export_text()
    assert "downloaded" in text and "2/2" in text
    assert "$0.40 committed" in text and "requests/min" in text and "ETA" in text
