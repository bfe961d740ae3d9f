"""Hostile manifests, gateways, callbacks and output folders change nothing they should not."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixazo_batch.config import Settings
from pixazo_batch.engine import run_batch
from pixazo_batch.errors import StateError
from pixazo_batch.listener import BoundedListener
from pixazo_batch.manifest import read_manifest
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import SUBMIT_PATH, GenerationRequest, JobSpec, JobState, StatusResponse
from pixazo_batch.state import StateStore
from pixazo_batch.stores import open_store
from pixazo_batch.webhooks import CallbackBox, Delivery, signature
from tests.conftest import (
    TEST_KEY,
    LogTap,
    fast,
    job_line,
    simulator,
    state_sql,
    write_manifest,
)
from tests.test_cli import cli_env, run_cli
from tests.test_webhooks import hooked, with_webhooks

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]


def manifest_of(tmp_path: Path, count: int, **fields: Any) -> Path:
    return write_manifest(tmp_path / "jobs.jsonl", [job_line(i, **fields) for i in range(count)])


def victim(tmp_path: Path) -> Path:
    """A file outside the output folder that a planted link points at."""
    target = tmp_path / "victim.txt"
    target.write_text("precious\n", encoding="utf-8")
    return target


# --- files in the output folder ---------------------------------------------------------------


@pytest.mark.parametrize("planted", ["job-000.mp4.part", "results.jsonl.tmp"])
async def test_a_link_planted_in_the_output_folder_is_never_written_through(
    tmp_path: Path, make_settings: MakeSettings, planted: str
) -> None:
    target = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(target)
    async with simulator() as sim:
        summary = await run_batch(make_settings(sim, manifest_of(tmp_path, 1)))
    assert target.read_text(encoding="utf-8") == "precious\n"
    assert summary.exit_code == 0
    assert (out / "job-000.mp4").read_bytes()[4:8] == b"ftyp"
    assert json.loads((out / "results.jsonl").read_text(encoding="utf-8"))["state"] == "downloaded"


@pytest.mark.sqlite_state("the state file's own path and lock")
@pytest.mark.parametrize("planted", [".pixazo-batch.db", ".pixazo-batch.db.lock"])
async def test_a_linked_state_or_lock_file_is_refused_and_its_target_untouched(
    tmp_path: Path, make_settings: MakeSettings, planted: str
) -> None:
    target = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(target)
    async with simulator() as sim:
        with pytest.raises(StateError, match="symbolic link"):
            await run_batch(make_settings(sim, manifest_of(tmp_path, 1)))
        stats = sim.stats()
    assert target.read_text(encoding="utf-8") == "precious\n"
    assert stats["submit_requests"] == 0


@pytest.mark.sqlite_state("the state file's own modes")
async def test_the_state_its_log_and_its_lock_are_private(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    names = (".pixazo-batch.db", ".pixazo-batch.db.lock", ".pixazo-batch.db-wal")
    modes: dict[str, int] = {}
    out = tmp_path / "out"

    def look() -> None:  # while the run holds them open (SQLite removes its log at the end)
        modes.update({name: stat.S_IMODE((out / name).stat().st_mode) for name in names})

    log_tap.on("submitted", 1, look)
    async with simulator() as sim:
        await run_batch(make_settings(sim, manifest_of(tmp_path, 1)))
    assert modes == dict.fromkeys(names, 0o600)


def test_one_state_file_reached_through_a_link_is_locked_once(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with (
        StateStore.open(real),
        pytest.raises(StateError, match="another pixazo-batch run"),
        StateStore.open(link),
    ):
        pass


def test_a_damaged_state_file_is_one_line_and_exit_2_for_every_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    manifest = manifest_of(tmp_path, 1)
    state = out / ".pixazo-batch.db"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)

    def foreign_tables() -> None:
        with closing(sqlite3.connect(state)) as db:
            db.execute("CREATE TABLE t (x)")
            db.commit()

    damages = {
        "not sqlite": lambda: state.write_bytes(b"this is not a database" * 100),
        "truncated": lambda: state.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50),
        "tables missing": foreign_tables,
    }
    for name, damage in damages.items():
        for leftover in out.iterdir():
            leftover.unlink()
        damage()
        before = state.read_bytes()
        commands = [
            ("run", str(manifest), "--out", str(out), "--base-url", "http://127.0.0.1:9"),
            ("status", "--out", str(out)),
            ("report", "--out", str(out)),
            ("resolve", "job-000", "--out", str(out), "--abandon"),
        ]
        for command in commands:
            result = run_cli(*command, env=env)
            assert result.returncode == 2, (name, command, result.stderr)
            assert "Traceback" not in result.stderr, (name, command)
            assert len(result.stderr.strip().splitlines()) == 1, (name, command, result.stderr)
        assert state.read_bytes() == before, f"{name}: the damaged file was changed"


# --- the manifest ---------------------------------------------------------------------------


HOSTILE_LINES: list[tuple[bytes, str, str]] = [
    (json.dumps(job_line(0, output=".")).encode(), "output", "must name a file"),
    (json.dumps(job_line(0, output="a/")).encode(), "output", "must name a file"),
    (json.dumps(job_line(0, output="results.jsonl.tmp")).encode(), "output", "uses itself"),
    (json.dumps(job_line(0, output="x.mp4.part")).encode(), "output", "uses itself"),
    # The spool a bucket run keeps beside its state: a video put there by hand would be taken
    # for the spooled video of the job of that name.
    (
        json.dumps(job_line(0, output=".pixazo-batch-spool/job-001.mp4")).encode(),
        "output",
        "uses itself",
    ),
    (b"[" * 1000 + b"]" * 1000, "(line)", "nested too deeply"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "(line)", "nested too deeply"),
    (
        json.dumps(job_line(0)).replace('"job-000"', '"job-000", "id": "job-999"').encode(),
        "id",
        "given twice",
    ),
    (json.dumps(job_line(0, output="\udc80.mp4")).encode(), "output", "lone surrogate"),
    (json.dumps(job_line(0, image_url="https://x/\udc80.jpg")).encode(), "image_url", "surrogate"),
    (
        json.dumps(job_line(0, end_image_url="https://x/\udc80.jpg")).encode(),
        "end_image_url",
        "surrogate",
    ),
    (b'{"prompt": "' + b"x" * (3 << 20) + b'"}', "(line)", "longer than"),
]


@pytest.mark.parametrize(("line", "field", "message"), HOSTILE_LINES)
def test_a_hostile_line_is_reported_and_the_rest_runs(
    tmp_path: Path, line: bytes, field: str, message: str
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(line + b"\n" + json.dumps(job_line(1)).encode() + b"\n")
    items = list(read_manifest(path))
    assert isinstance(items[0], ManifestIssue), items[0]
    assert (items[0].line, items[0].field) == (1, field)
    assert message in items[0].message
    assert isinstance(items[1], JobSpec) and items[1].line == 2


def test_validate_and_run_report_every_hostile_line_without_a_traceback(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join(line for line, _, _ in HOSTILE_LINES) + b"\n")
    result = run_cli("validate", str(manifest))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count(f"{manifest}:") == len(HOSTILE_LINES)


def test_outputs_that_need_a_file_and_a_folder_at_one_path_are_refused(tmp_path: Path) -> None:
    path = write_manifest(
        tmp_path / "m.jsonl",
        [
            job_line(0, output="x"),
            job_line(1, output="x/y.mp4"),
            job_line(2, output="a/b/c.mp4"),
            job_line(3, output="a/b"),
            job_line(4, output="a/d.mp4"),
        ],
    )
    items = list(read_manifest(path))
    assert [type(i).__name__ for i in items] == [
        "JobSpec", "ManifestIssue", "JobSpec", "ManifestIssue", "JobSpec",
    ]  # fmt: skip
    assert "cannot be a folder" in items[1].message  # type: ignore[union-attr]
    assert "is a folder of the output of line 3" in items[3].message  # type: ignore[union-attr]


@pytest.mark.sqlite_state("two manifests on one state (a database holds one)")
async def test_an_output_conflicting_with_a_recorded_one_is_refused_on_a_later_run(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    async with simulator() as sim:
        first = write_manifest(tmp_path / "a.jsonl", [job_line(0, output="clips")])
        await run_batch(make_settings(sim, first))
        later = write_manifest(tmp_path / "b.jsonl", [job_line(1, output="clips/one.mp4")])
        summary = await run_batch(make_settings(sim, later))
    assert summary.exit_code == 2
    assert "output 'clips' of job 'job-000' cannot also be a folder" in summary.manifest_issues[0]


@pytest.mark.parametrize(
    ("recorded_output", "conflicting_output", "issue"),
    [
        ("clips", "clips/one.mp4", "output 'clips' of job 'job-000' cannot also be a folder"),
        # the same output under a new id: a manifest issue, not a damaged state file
        ("clip.mp4", "clip.mp4", "output 'clip.mp4' is already the output of job 'job-000'"),
    ],
)
async def test_a_later_run_records_its_new_jobs_and_names_the_one_that_conflicts(
    tmp_path: Path,
    make_settings: MakeSettings,
    recorded_output: str,
    conflicting_output: str,
    issue: str,
) -> None:
    """New jobs are recorded together; one conflicting with a recorded output sends the batch
    back to being recorded job by job, which names it and records the others."""
    async with simulator() as sim:
        first = write_manifest(tmp_path / "a.jsonl", [job_line(0, output=recorded_output)])
        await run_batch(make_settings(sim, first))
        lines = [job_line(1), job_line(2), job_line(3, output=conflicting_output), job_line(4)]
        later = write_manifest(first, lines)  # the manifest edited: job-000 went, four came
        settings = make_settings(sim, later)
        summary = await run_batch(settings)
    assert summary.exit_code == 2
    assert summary.manifest_issues == [f"{later}:3: output: {issue}"]
    with open_store(settings.state_location, lock=False) as store:
        states = {row.id: row.state.value for row in store.iter_jobs()}
    assert states == dict.fromkeys(["job-000", "job-001", "job-002", "job-004"], "downloaded")


async def test_a_later_run_sends_the_known_lines_still_pending_and_names_their_duplicates(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    """Lines an earlier run recorded are known again without being read: those whose jobs are
    still to be sent are sent, and a copy of one (byte for byte, or spelled otherwise) is a
    duplicate as on any run."""
    from decimal import Decimal

    lines = [json.dumps(job_line(n)) for n in range(5)]
    manifest = write_manifest(tmp_path / "a.jsonl", lines)
    async with simulator() as sim:
        # the budget stops the first run after two jobs: three stay pending
        first = await run_batch(make_settings(sim, manifest, max_spend=Decimal("0.50")))
        respelled = json.dumps(job_line(2), separators=(",", ":"))
        write_manifest(manifest, [*lines, lines[0], json.dumps(job_line(5)), respelled])
        settings = make_settings(sim, manifest)
        second = await run_batch(settings)
        stats = sim.stats()
    assert (first.exit_code, second.exit_code) == (3, 2)
    assert second.manifest_issues == [
        f"{manifest}:6: id: duplicate id 'job-000' (first on line 1)",
        f"{manifest}:8: id: duplicate id 'job-002' (first on line 3)",
    ]
    assert stats["accepted"] == 6
    with open_store(settings.state_location, lock=False) as store:
        assert store.counts() == {JobState.DOWNLOADED: 6}


async def test_a_state_of_an_earlier_version_learns_its_lines_on_the_next_run(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    """A state file (or database) from before lines were kept gains the column on opening, and
    the next run keeps the lines of the jobs it already held as well as the new one's."""
    manifest = write_manifest(tmp_path / "a.jsonl", [job_line(0), job_line(1)])
    async with simulator() as sim:
        settings = make_settings(sim, manifest)
        await run_batch(settings)
        _as_before_lines_were_kept(settings.state_location)
        write_manifest(manifest, [job_line(0), job_line(1), job_line(2)])
        summary = await run_batch(settings)
    assert summary.exit_code == 0
    with open_store(settings.state_location, lock=False) as store:
        kept = store.recorded_lines(["job-000", "job-001", "job-002"])
    assert sorted(kept) == ["job-000", "job-001", "job-002"]


@pytest.mark.parametrize("earlier_version", [False, True])
async def test_a_dry_run_prices_the_known_lines_still_to_send(
    tmp_path: Path, make_settings: MakeSettings, earlier_version: bool
) -> None:
    """A dry run over an edited manifest lists the known jobs a run would send (pending ones),
    not those done, whether or not the state keeps lines (a read-only state file of an earlier
    version does not)."""
    from decimal import Decimal

    from pixazo_batch.planning import plan_run

    lines = [json.dumps(job_line(n)) for n in range(5)]
    manifest = write_manifest(tmp_path / "a.jsonl", lines)
    async with simulator() as sim:
        await run_batch(make_settings(sim, manifest, max_spend=Decimal("0.50")))
        settings = make_settings(sim, manifest)
    if earlier_version:
        _as_before_lines_were_kept(settings.state_location)
    write_manifest(manifest, [*lines, json.dumps(job_line(5, duration="9s"))])
    jobs: list[dict[str, object]] = []
    totals = plan_run(settings, on_issue=lambda issue: None, on_job=jobs.append)
    assert [(job["id"], job["state"]) for job in jobs] == [
        ("job-002", "pending"), ("job-003", "pending"), ("job-004", "pending"), ("job-005", "new"),
    ]  # fmt: skip
    assert totals.as_json() == {"jobs": 4, "price_usd": "0.96", "problems": 0}


def _as_before_lines_were_kept(location: Path | str) -> None:
    """Take the state back to the schema of the version before ``line_digest``."""
    if isinstance(location, Path):
        with closing(sqlite3.connect(location)) as db:
            db.execute("ALTER TABLE jobs DROP COLUMN line_digest")
            db.commit()
        return
    import psycopg

    with psycopg.connect(location, autocommit=True) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN line_digest")
        db.execute("UPDATE fleet SET value = '1' WHERE name = 'schema'")


#: a batch of new jobs whose third output conflicts, after the jobs ``old-*`` were recorded
BATCH_CONFLICTS = [
    ([], ["x", "a", "x/y", "b"], "output 'x' of job 'job-0' cannot also be a folder"),
    ([], ["x/y", "a", "x", "b"], "output 'x' is a folder of job 'job-0''s output"),
    (["r/s"], ["a", "b", "r", "c"], "output 'r' is a folder of job 'old-0''s output"),
    (["q"], ["a", "b", "q/z", "c"], "output 'q' of job 'old-0' cannot also be a folder"),
]


@pytest.mark.parametrize(("earlier", "outputs", "refused"), BATCH_CONFLICTS)
def test_jobs_recorded_together_are_checked_against_each_other_and_the_recorded_ones(
    tmp_path: Path, earlier: list[str], outputs: list[str], refused: str
) -> None:
    """In one batch, a job whose output would have to be a file and a folder, beside an
    earlier job of the batch or a recorded one, is refused by name; the others are recorded."""
    with StateStore.open(tmp_path / "state.db") as store:
        assert_conflicts_in_a_batch_are_named(store, earlier, outputs, refused)


def assert_conflicts_in_a_batch_are_named(
    store: StateStore, earlier: list[str], outputs: list[str], refused: str
) -> None:
    """Record ``earlier``, then ``outputs`` together: only the third is refused, as ``refused``."""

    def specs(prefix: str, paths: list[str]) -> list[JobSpec]:
        return [
            JobSpec.of(f"{prefix}-{n}",
                    GenerationRequest(prompt=f"{prefix} {n}", image_url="https://x.example/a"),
                    output, line=n + 1)
            for n, output in enumerate(paths)
        ]  # fmt: skip

    for row in store.register_many(specs("old", earlier)):
        assert not isinstance(row, str)
    rows = store.register_many(specs("job", outputs))
    recorded = [row if isinstance(row, str) else row.id for row in rows]
    assert store.get("job-2") is None
    assert recorded == ["job-0", "job-1", refused, "job-3"]


def test_jobs_recorded_together_are_yielded_as_a_read_finds_them(tmp_path: Path) -> None:
    """The rows ``register_many`` yields for new jobs (built, not read back) are the stored
    ones."""
    with StateStore.open(tmp_path / "state.db") as store:
        assert_new_rows_are_the_stored_ones(store)


def assert_new_rows_are_the_stored_ones(store: StateStore) -> None:
    """Register three new jobs together; each yielded row must equal a fresh read of it."""
    specs = [
        JobSpec.of(f"job-{n}", GenerationRequest(prompt=f"take {n}", image_url="https://x.example/a"),
                f"{n}.mp4", line=n + 1, digest=bytes([n]) * 16)
        for n in range(3)
    ]  # fmt: skip
    rows = list(store.register_many(specs))
    assert rows == [store.get(spec.id) for spec in specs]
    assert {row.state for row in rows if not isinstance(row, str)} == {JobState.PENDING}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
_LINES = st.one_of(
    st.binary(max_size=200),
    _JSON.map(lambda value: json.dumps(value).encode()),
    st.builds(
        lambda fields: json.dumps({**job_line(0), **fields}).encode(),
        st.dictionaries(st.sampled_from([*sorted(job_line(0)), "output", "loop"]), _JSON),
    ),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.text().map(lambda text: json.dumps({"prompt": text, "output": text}).encode()),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(_LINES, max_size=8))
def test_no_generated_line_makes_the_reader_raise(tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    items = list(read_manifest(path))
    assert all(isinstance(item, JobSpec | ManifestIssue) for item in items)
    assert len({item.line for item in items if isinstance(item, JobSpec)}) == sum(
        isinstance(item, JobSpec) for item in items
    )
    for item in items:
        if isinstance(item, JobSpec):
            item.output.encode("utf-8")  # storable and usable as a path


# --- the gateway's answers -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["relative", "malformed"])
async def test_an_unusable_polling_url_is_ignored_now_and_when_read_back(
    tmp_path: Path, make_settings: MakeSettings, form: str
) -> None:
    slow = fast(polling_url_form=form, processing_median={"540p": 300.0}, processing_sigma=0.0)
    async with simulator(slow) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 2), job_deadline=0.2)
        stalled = await run_batch(settings)
        for job in sim.state.book.jobs.values():
            job.started = job.finished = job.created
        resumed = await run_batch(make_settings(sim, manifest_of(tmp_path, 2)))
    assert stalled.exit_code == 3 and stalled.counts["submitted"] == 2
    assert resumed.exit_code == 0 and resumed.counts["downloaded"] == 2


@asynccontextmanager
async def echoing_gateway() -> AsyncIterator[str]:
    """A gateway that quotes the key it was sent in its refusal (some do, in debug modes)."""

    async def submit(request: web.Request) -> web.Response:
        key = request.headers.get("Ocp-Apim-Subscription-Key", "")
        message = f"prompt: refused for subscription {key}"
        return web.json_response({"error": "Bad Request", "message": message}, status=400)

    app = web.Application()
    app.router.add_post(SUBMIT_PATH, submit)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_key_echoed_by_the_gateway_is_never_stored_printed_or_written(
    tmp_path: Path,
) -> None:
    manifest = manifest_of(tmp_path, 2)
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with echoing_gateway() as base:
        command = ["run", str(manifest), "--out", str(out), "--base-url", base]
        result = await anyio.to_thread.run_sync(lambda: run_cli(*command, env=env))
    status = await anyio.to_thread.run_sync(lambda: run_cli("status", "--out", str(out), env=env))
    report = await anyio.to_thread.run_sync(lambda: run_cli("report", "--out", str(out), env=env))
    assert result.returncode == 1
    assert "refused for subscription [REDACTED]" in (out / "results.jsonl").read_text("utf-8")
    for text in (result.stdout, result.stderr, status.stdout, report.stdout):
        assert TEST_KEY not in text
    for path in out.rglob("*"):
        assert TEST_KEY.encode() not in path.read_bytes(), path


# --- downloads ------------------------------------------------------------------------------


async def test_a_video_announcing_more_than_the_cap_is_refused_before_a_byte_is_saved(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    async with simulator(fast(media_bytes=3 << 20, media_size_jitter=0.0)) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 1), max_video_mb=2)
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 3 and summary.counts["completed"] == 1
    assert stats["media_requests"] == 1, "refused for good, not tried again"
    assert not list(settings.out_dir.glob("*.mp4*"))
    assert "over --max-video-mb 2" in log_tap.named("download_gave_up")[0]["error"]


async def test_a_stalled_body_is_cut_and_resumed(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    scenario = fast(
        media_bytes=400_000,
        media_chunk=20_000,
        media_stall_rate=1.0,
        media_stall_seconds=3.0,
        fault_burst=1,
    )
    async with simulator(scenario) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 1), download_stall=0.3)
        with anyio.fail_after(20):
            summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code in (0, 3)
    assert any(
        "TimeoutError" in e["error"] or "stalled" in e["error"]
        for e in log_tap.named("download_retry")
    )
    assert stats["media_range_requests"] >= 1


async def test_an_ftyp_box_followed_by_a_web_page_never_reaches_the_final_path(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    scenario = fast(media_not_mp4_rate=1.0, media_not_mp4_kind="ftyp-html")
    async with simulator(scenario) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 1), download_tries=2)
        summary = await run_batch(settings)
    assert summary.exit_code == 3
    assert not list(settings.out_dir.glob("*.mp4"))
    assert (
        "not a whole MP4" in log_tap.named("download_retry")[0]["error"]
        or "fit" in (log_tap.named("download_retry")[0]["error"])
    )


# --- webhooks -------------------------------------------------------------------------------


async def post_callback(settings: Settings, query: dict[str, str], body: Any) -> int:
    assert settings.webhook_url is not None
    async with (
        aiohttp.ClientSession() as session,
        session.post(settings.webhook_url, params=query, json=body) as answer,
    ):
        return answer.status


async def test_a_leaked_callback_url_cannot_finish_a_job_or_hand_it_a_foreign_video(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    slow = hooked(processing_median={"540p": 600.0}, processing_sigma=0.0)
    manifest = manifest_of(tmp_path, 1)
    answers: list[int] = []
    async with simulator(slow) as sim:
        settings = with_webhooks(make_settings, sim, manifest, job_deadline=1.5)
        submitted = anyio.Event()
        log_tap.on("submitted", 1, submitted.set)

        async def replay_leaked_url() -> None:
            await submitted.wait()
            with state_sql(settings) as db:
                run, secret = db.execute("SELECT run_id, secret FROM webhook_secrets").fetchone()
                (request_id,) = db.execute("SELECT request_id FROM jobs").fetchone()
            query = {"job": "job-000", "run": str(run), "sig": signature(secret, "job-000")}
            body = {
                "request_id": request_id,
                "status": "COMPLETED",
                "output": {"media_url": ["https://attacker.example/evil.mp4"]},
            }
            answers.append(await post_callback(settings, query, body))

        async with anyio.create_task_group() as group:
            group.start_soon(replay_leaked_url)
            summary = await run_batch(settings)
        stats = sim.stats()
    assert answers == [200]
    assert summary.counts["submitted"] == 1, "the status answer, not the callback, decides"
    assert stats["media_requests"] == 0


async def test_a_leaked_callback_url_cannot_attach_a_made_up_request_to_an_uncertain_job(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    # The real job takes long: its one (terminal) callback comes after the wait is over.
    scenario = hooked(
        submit_reset_rate=1.0, processing_median={"540p": 600.0}, processing_sigma=0.0
    )
    manifest = manifest_of(tmp_path, 1)
    async with simulator(scenario) as sim:
        settings = with_webhooks(make_settings, sim, manifest, uncertain_wait=2.0)
        lost = anyio.Event()
        log_tap.on("submit_uncertain", 1, lost.set)

        async def forge() -> None:
            await lost.wait()
            with state_sql(settings) as db:
                run, secret = db.execute("SELECT run_id, secret FROM webhook_secrets").fetchone()
            query = {"job": "job-000", "run": str(run), "sig": signature(secret, "job-000")}
            body = {
                "request_id": "luma-dream-machine-ray-2-flash-image-to-video_madeup",
                "status": "COMPLETED",
            }
            await post_callback(settings, query, body)

        async with anyio.create_task_group() as group:
            group.start_soon(forge)
            summary = await run_batch(settings)
    assert summary.uncertain == ["job-000"]
    assert log_tap.named("callback_refused")


@pytest.mark.sqlite_state("two manifests on one state (a database holds one)")
async def test_callback_urls_of_a_run_older_than_the_secret_lifetime_are_refused(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    manifest = manifest_of(tmp_path, 1)
    async with simulator(hooked()) as sim:
        settings = with_webhooks(make_settings, sim, manifest)
        await run_batch(settings)
        with closing(sqlite3.connect(settings.state_file)) as db:
            db.execute("UPDATE runs SET started_at = ?", (time.time() - 8 * 86400,))
            db.commit()
            run, secret = db.execute("SELECT run_id, secret FROM webhook_secrets").fetchone()
        query = {"job": "job-000", "run": str(run), "sig": signature(secret, "job-000")}
        body = {"request_id": "x", "status": "COMPLETED"}
        answers: list[int] = []
        listening = anyio.Event()
        log_tap.on("webhooks_listening", 2, listening.set)

        async def late_callback() -> None:
            await listening.wait()
            answers.append(await post_callback(settings, query, body))

        held = write_manifest(tmp_path / "held.jsonl", [job_line(5, resolution="1080p")])
        slow_settings = settings.model_copy(update={"manifest": held, "job_deadline": 1.0})
        sim.state.scenario = hooked(processing_median={"1080p": 600.0}, processing_sigma=0.0)
        async with anyio.create_task_group() as group:
            group.start_soon(late_callback)
            await run_batch(slow_settings)
    assert answers == [403]


async def test_the_listener_caps_connections_and_closes_silent_and_old_ones() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    listener = BoundedListener(
        runner, "127.0.0.1", 0, max_connections=5, first_byte=0.3, lifetime=5.0
    )
    async with listener:
        assert listener._server is not None
        port = listener._server.sockets[0].getsockname()[1]
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await extra_reader.read(200)
        closed = [await reader.read(10) for reader, _ in idle]  # b"" once the server closes
        for _, writer in [*idle, (extra_reader, extra_writer)]:
            writer.close()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as r,
        ):
            served = r.status
    await runner.cleanup()
    assert refused.startswith(b"HTTP/1.1 503")
    assert closed == [b""] * 5
    assert served == 200
    assert listener.refused == 1


def test_the_callback_box_holds_a_bounded_number_of_statuses() -> None:
    box = CallbackBox(per_job=2, total=3)

    def status(request_id: str) -> StatusResponse:
        return StatusResponse(request_id=request_id, status="PROCESSING")  # type: ignore[arg-type]

    results = [
        box.deliver("a", status("r1")),
        box.deliver("a", status("r1")),
        box.deliver("a", status("r2")),
        box.deliver("a", status("r3")),
        box.deliver("b", status("r4")),
        box.deliver("c", status("r5")),
    ]
    box.forget("a")
    assert results == [
        Delivery.NEW, Delivery.DUPLICATE, Delivery.NEW, Delivery.FULL, Delivery.NEW, Delivery.FULL,
    ]  # fmt: skip
    assert box.deliver("c", status("r5")) is Delivery.NEW


async def test_an_oversized_callback_is_refused_with_one_log_line(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    slow = hooked(processing_median={"540p": 600.0}, processing_sigma=0.0)
    answers: list[int] = []
    async with simulator(slow) as sim:
        settings = with_webhooks(make_settings, sim, manifest_of(tmp_path, 1), job_deadline=1.0)
        submitted = anyio.Event()
        log_tap.on("submitted", 1, submitted.set)

        async def flood() -> None:
            await submitted.wait()
            with state_sql(settings) as db:
                run, secret = db.execute("SELECT run_id, secret FROM webhook_secrets").fetchone()
            query = {"job": "job-000", "run": str(run), "sig": signature(secret, "job-000")}
            answers.append(await post_callback(settings, query, {"error": "x" * (100 << 10)}))

        async with anyio.create_task_group() as group:
            group.start_soon(flood)
            await run_batch(settings)
    assert answers == [413]
    assert log_tap.named("webhook_too_large")


@pytest.fixture
def read_only(tmp_path: Path) -> Any:
    """A folder made read-only by a bind mount (CI runs as root, whom permissions do not stop)."""
    mounted: list[Path] = []

    def freeze(folder: Path) -> Path:
        view = tmp_path / f"{folder.name}-read-only"
        view.mkdir()
        bind = ["mount", "--bind", str(folder), str(view)]
        done = subprocess.run(bind, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot make a read-only mount here: {done.stderr.strip()}")
        mounted.append(view)
        remount = ["mount", "-o", "remount,bind,ro", str(view)]
        done = subprocess.run(remount, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot make a read-only mount here: {done.stderr.strip()}")
        return view

    yield freeze
    for view in mounted:
        subprocess.run(["umount", str(view)], check=False)


@pytest.mark.sqlite_state("the state file on a read-only disk")
async def test_on_a_read_only_disk_run_and_resolve_say_so_in_one_line_and_status_still_reads(
    tmp_path: Path, make_settings: MakeSettings, read_only: Any
) -> None:
    async with simulator() as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 1))
        await run_batch(settings)
        out = read_only(settings.out_dir)
        env = cli_env(PIXAZO_API_KEY=TEST_KEY)
        commands = {
            "run": ("run", str(settings.manifest), "--out", str(out), "--base-url", sim.base_url),
            "resolve": ("resolve", "job-000", "--out", str(out), "--abandon"),
            "status": ("status", "--out", str(out)),
        }
        results = {
            name: await anyio.to_thread.run_sync(partial(run_cli, *command, env=env))
            for name, command in commands.items()
        }
    for name in ("run", "resolve"):
        assert results[name].returncode == 2, results[name].stderr
        assert len(results[name].stderr.strip().splitlines()) == 1, results[name].stderr
        assert "Traceback" not in results[name].stderr
    assert results["status"].returncode == 0, results["status"].stderr
    assert json.loads(results["status"].stdout)["counts"] == {"downloaded": 1}
