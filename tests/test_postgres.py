"""The state in PostgreSQL (``--state postgresql://...``): the engine's own tests, run again with
a real PostgreSQL server (started by the fixtures) in place of the SQLite file, and what only a
database adds: one clear line when it cannot be used, status, report and resolve against it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from pixazo_batch.config import Settings
from pixazo_batch.engine import run_batch
from pixazo_batch.sim import Simulator
from tests.conftest import TEST_KEY, fast, job_line, simulator, write_manifest
from tests.test_cli import cli_env, log_events, run_args
from tests.test_engine import (  # noqa: F401  (collected here again, on PostgreSQL)
    test_a_changed_request_under_a_known_id_is_refused,
    test_a_lost_answer_makes_the_job_uncertain_and_it_is_never_resubmitted_silently,
    test_a_run_cancelled_inside_any_stage_resumes_without_paying_twice,
    test_bad_lines_are_reported_and_good_lines_still_run,
    test_budget_caps_committed_spend_across_runs,
    test_happy_path_downloads_every_video,
    test_remote_error_is_resubmitted_up_to_max_attempts,
    test_rerunning_a_finished_manifest_sends_nothing,
    test_retry_after_is_honoured_in_every_form,
)
from tests.test_hardening import (  # noqa: F401  (collected here again, on PostgreSQL)
    BATCH_CONFLICTS,
    test_a_later_run_records_its_new_jobs_and_names_the_one_that_conflicts,
    test_a_later_run_sends_the_known_lines_still_pending_and_names_their_duplicates,
    test_a_state_of_an_earlier_version_learns_its_lines_on_the_next_run,
)
from tests.test_unattended import cli
from tests.test_webhooks import (  # noqa: F401  (collected here again, on PostgreSQL)
    test_a_kept_callback_lets_the_next_run_finish_the_job_even_without_webhooks,
    test_a_lost_answer_is_resolved_by_the_callback_without_paying_twice,
    test_callbacks_replace_polling_and_duplicates_change_nothing,
    test_without_a_callback_a_lost_answer_stays_uncertain_after_the_wait,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def make_settings(tmp_path: Path, pg_url: str) -> Callable[..., Settings]:
    """As the suite's own, with the state in a fresh PostgreSQL database."""

    def build(sim: Simulator, manifest: Path, **changes: Any) -> Settings:
        values: dict[str, Any] = {
            "manifest": manifest,
            "out_dir": tmp_path / "out",
            "api_key": TEST_KEY,
            "base_url": sim.base_url,
            "poll_interval": 0.02,
            "rps": 500.0,
            "max_in_flight": 50,
            "state_url": pg_url,
        }
        values.update(changes)
        return Settings(**values)

    return build


def manifest_of(tmp_path: Path, count: int, name: str = "jobs.jsonl") -> Path:
    return write_manifest(tmp_path / name, [job_line(i) for i in range(count)])


async def test_status_report_and_resolve_work_against_the_database(
    tmp_path: Path, make_settings: Callable[..., Settings], pg_url: str
) -> None:
    import psycopg

    manifest = manifest_of(tmp_path, 2)
    out = str(tmp_path / "out")
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    state = ["--out", out, "--state", pg_url, "--json"]
    async with simulator(fast(submit_reset_rate=1.0)) as sim:
        lost = await run_batch(make_settings(sim, manifest))
        status = json.loads((await cli("status", *state, env=env)).stdout)
        sim.state.scenario = fast()
        with psycopg.connect(pg_url) as db:
            rows = db.execute("SELECT id, request_hash FROM jobs").fetchall()
        hashes: dict[str, str] = dict(rows)
        request_ids = {job.request_hash: job.request_id for job in sim.state.book.jobs.values()}
        found = await cli(
            "resolve", "job-000", *state, "--base-url", sim.base_url,
            "--request-id", request_ids[hashes["job-000"]], env=env,
        )  # fmt: skip
        abandoned = await cli("resolve", "job-001", *state, "--abandon", env=env)
        finished = await run_batch(make_settings(sim, manifest))
        report = await cli("report", *state, "--format", "jsonl", env=env)
        stats = sim.stats()
    assert lost.exit_code == 5
    assert [job["id"] for job in status["uncertain"]] == ["job-000", "job-001"]
    assert f"--state {pg_url} --not-sent" in status["uncertain"][0]["resolve"][1]
    assert status["workers"] == [], "the run ended: no worker is left"
    assert found.returncode == 0, found.stderr
    assert abandoned.returncode == 0, abandoned.stderr
    assert finished.counts["downloaded"] == 1 and finished.counts["failed"] == 1
    records = [json.loads(line) for line in report.stdout.splitlines()]
    assert [(r["id"], r["state"]) for r in records] == [
        ("job-000", "downloaded"), ("job-001", "failed"),
    ]  # fmt: skip
    assert stats["accepted"] == 2, "job-000 was attached, never submitted again"


@pytest.mark.parametrize("problem", ["unreachable", "another manifest", "tables not ours"])
async def test_a_database_that_cannot_be_used_is_one_clear_line_and_nothing_is_paid(
    tmp_path: Path, pg_url: str, problem: str
) -> None:
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    url = "postgresql://pixazo@127.0.0.1:9/nowhere" if problem == "unreachable" else pg_url
    async with simulator(fast()) as sim:
        if problem == "tables not ours":
            import psycopg

            with psycopg.connect(pg_url, autocommit=True) as db:
                db.execute("CREATE TABLE fleet (owner TEXT)")
        if problem == "another manifest":
            first = run_args(sim, manifest_of(tmp_path, 1, "monday.jsonl"), tmp_path / "o")
            await anyio.run_process([*first, "--state", url], env=env)
        command = run_args(sim, manifest_of(tmp_path, 2, "tuesday.jsonl"), tmp_path / "o")
        before = sim.stats()["accepted"]
        refused = await anyio.run_process([*command, "--state", url], env=env, check=False)
        stats = sim.stats()
    errors = [line for line in refused.stderr.decode().splitlines() if '"error"' in line]
    assert refused.returncode == 2
    assert stats["accepted"] == before, "nothing paid"
    expected = {
        "unreachable": "cannot use the database",
        "another manifest": "holds the jobs of manifest 'monday.jsonl', not 'tuesday.jsonl'",
        "tables not ours": 'the database refused us: column "value" does not exist',
    }[problem]
    assert expected in refused.stderr.decode(), errors
    assert "Traceback" not in refused.stderr.decode()


async def test_workers_keeping_what_they_learned_at_once_do_not_fail(pg_url: str) -> None:
    """Two workers ending together both keep the gateway's speed: the second, whose write
    waits on the first's, must not stop on the rows the first just added."""
    import psycopg

    from pixazo_batch.pgstate import PgStateStore

    with PgStateStore.open_database(pg_url) as store, psycopg.connect(pg_url) as first:
        first.execute(
            "INSERT INTO speed_samples (origin, n, scale) VALUES ('g', 0, 1.0), ('g', 1, 2.0)"
        )  # the first worker's transaction, not yet committed
        pid = first.info.backend_pid
        blocked = (
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND %s = ANY(pg_blocking_pids(pid))"
        )
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, store.keep_speed, "g", [3.0, 4.0, 5.0])
            with psycopg.connect(pg_url, autocommit=True) as watch:
                # until the second worker's insert waits on the first's
                while watch.execute(blocked, (pid,)).fetchone() is None:
                    await anyio.lowlevel.checkpoint()
            first.commit()
        assert store.speed_scales("g") == [3.0, 4.0, 5.0]


def test_jobs_recorded_together_are_yielded_as_the_database_holds_them(pg_url: str) -> None:
    from pixazo_batch.pgstate import PgStateStore
    from tests.test_hardening import assert_new_rows_are_the_stored_ones

    with PgStateStore.open_database(pg_url) as store:
        assert_new_rows_are_the_stored_ones(store)


@pytest.mark.parametrize(("earlier", "outputs", "refused"), BATCH_CONFLICTS)
def test_jobs_recorded_together_are_checked_in_the_database(
    pg_url: str, earlier: list[str], outputs: list[str], refused: str
) -> None:
    from pixazo_batch.pgstate import PgStateStore
    from tests.test_hardening import assert_conflicts_in_a_batch_are_named

    with PgStateStore.open_database(pg_url) as store:
        assert_conflicts_in_a_batch_are_named(store, earlier, outputs, refused)


def test_the_parts_of_the_keys_rate_read_in_one_tick_add_up_to_one(pg_url: str) -> None:
    """Workers read their parts at different moments of a tick while the jobs they hold
    change: the parts still come from one picture of the fleet (several pictures would give
    more than the key's rate: requests past the limit, a 429 for everyone). One who joins in
    the tick has none until the next."""
    import psycopg

    from pixazo_batch.pgstate import PgStateStore
    from pixazo_batch.pgworkers import FleetIdentity
    from tests.test_router import register

    identity = FleetIdentity(manifest="jobs.jsonl", base_url="http://gw", api_key="k")
    tick, next_tick = 1e9, 1e8  # seconds: every read falls in one tick of each
    with contextlib.ExitStack() as stores:
        first, second = (
            stores.enter_context(PgStateStore.open_database(pg_url, fleet=identity))
            for _ in range(2)
        )
        for index in range(4):
            register(first, f"job-{index}")
        first.begin_submit("job-0", None)
        mine = first.rate_part(tick, 0.05)
        second.begin_submit("job-1", None)
        second.begin_submit("job-2", None)  # held since the first worker read its part
        joined = stores.enter_context(PgStateStore.open_database(pg_url, fleet=identity))
        parts = [mine, second.rate_part(tick, 0.05), joined.rate_part(tick, 0.05)]
        assert parts == pytest.approx([1.05 / 1.1, 0.05 / 1.1, 0.0])
        assert sum(part or 0.0 for part in parts) == pytest.approx(1.0)
        with psycopg.connect(pg_url) as other:  # another worker working the parts out
            other.execute("SELECT 1 FROM fleet WHERE name = 'rate_parts' FOR UPDATE")
            assert first.rate_part(next_tick, 0.05) is None, "asks again, never waits"
        later = [store.rate_part(next_tick, 0.05) for store in (first, second, joined)]
        assert later == pytest.approx([1.05 / 3.15, 2.05 / 3.15, 0.05 / 3.15])


@pytest.mark.parametrize("database", ["back at once", "refusing connections"])
async def test_a_database_lost_mid_run_stops_it_in_one_line_and_the_next_run_finishes(
    tmp_path: Path, pg_url: str, database: str
) -> None:
    """The database drops the run's connection while its jobs are in flight: the run stops with
    exit 3 and one line saying why, no traceback, and its summary when the database takes it
    back; the next run finishes every job, none sent twice."""
    import psycopg

    admin, name = pg_url.rsplit("/", 1)[0] + "/postgres", pg_url.rsplit("/", 1)[1]
    allow = "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}"
    manifest = manifest_of(tmp_path, 4)
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    slow = fast(processing_median={"540p": 600.0}, processing_sigma=0.0)
    async with simulator(slow) as sim:
        command = [*run_args(sim, manifest, tmp_path / "out"), "--state", pg_url,
                   "--worker-timeout", "1"]  # fmt: skip
        async with await anyio.open_process(command, env=env) as process:
            submitted = 0
            async for record in log_events(process):
                submitted += record.get("event") == "submitted"
                if submitted == 4:
                    break
            with psycopg.connect(admin, autocommit=True) as db:
                if database == "refusing connections":
                    db.execute(allow.format(name, "false"))
                db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            assert process.stderr is not None
            after = "".join([text async for text in TextReceiveStream(process.stderr)])
            await process.wait()
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(allow.format(name, "true"))
        for job in sim.state.book.jobs.values():  # the simulated jobs finish now
            job.started = job.finished = job.created
        finished = await anyio.run_process(command, env=env, check=False)
        stats = sim.stats()
    errors = [json.loads(line) for line in after.splitlines() if '"level": "error"' in line]
    assert process.returncode == 3, after[-2000:]
    assert "Traceback" not in after, after[-2000:]
    assert [e["event"] for e in errors] == ["state_write_failed"], errors
    summaries = [json.loads(line) for line in after.splitlines() if '"summary"' in line]
    if database == "back at once":
        assert [s["counts"]["submitted"] for s in summaries] == [4]
    else:  # no summary to read: the line says so
        assert "cannot reach the state database" in after.splitlines()[-1], after[-2000:]
        assert summaries == []
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 4
    assert stats["accepted"] == 4, "every job was sent once"


def test_a_state_connection_gives_up_on_a_silent_database_unless_its_url_says_otherwise(
    pg_url: str,
) -> None:
    """A database gone silent must fail the call waiting on it within seconds (libpq's
    keepalives and TCP timeout), and a session frozen inside a transaction is ended by the
    server; what the URL names is kept."""
    from pixazo_batch.pgconn import PgConnection
    from pixazo_batch.pgstate import PgStateStore

    def given(store: PgStateStore) -> tuple[dict[str, str], str]:
        assert isinstance(store.db, PgConnection)
        (idle,) = store.db.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        return store.db.conn.info.get_parameters(), idle

    theirs = f"{pg_url}?keepalives_idle=42&options=-c%20idle_in_transaction_session_timeout%3D5s"
    with PgStateStore.open_database(pg_url) as ours, PgStateStore.open_database(theirs) as named:
        settings = [given(store) for store in (ours, named)]
    (ours_given, ours_idle), (named_given, named_idle) = settings
    assert ours_given["keepalives_idle"] == "10" and ours_given["tcp_user_timeout"] == "30000"
    assert ours_idle == "1min"
    assert named_given["keepalives_idle"] == "42" and named_given["keepalives_count"] == "3"
    assert named_idle == "5s"


async def test_an_acceptance_a_lost_database_missed_is_recorded_once_it_is_back(
    tmp_path: Path, pg_url: str
) -> None:
    """The connection is cut while a POST is on the wire: the gateway's answer (the job taken,
    and charged) cannot be recorded then, but is over a new connection at the run's end, so the
    next run downloads the video and nobody has to ``resolve`` the job."""
    import psycopg

    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    slow = fast(processing_median={"540p": 600.0}, processing_sigma=0.0, response_delay=0.5)
    async with simulator(slow) as sim:
        command = [*run_args(sim, manifest_of(tmp_path, 1), tmp_path / "out"), "--state", pg_url]
        async with await anyio.open_process(command, env=env) as process:
            async for record in log_events(process):
                if record.get("event") == "submitting":  # on the wire, answered in 0.5 s
                    break
            with psycopg.connect(pg_url, autocommit=True) as db:
                db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            assert process.stderr is not None
            after = "".join([text async for text in TextReceiveStream(process.stderr)])
            await process.wait()
        for job in sim.state.book.jobs.values():  # the simulated job finishes now
            job.started = job.finished = job.created
        finished = await anyio.run_process(command, env=env, check=False)
        stats = sim.stats()
    events = [json.loads(line)["event"] for line in after.splitlines() if line.startswith("{")]
    assert process.returncode == 3, after[-2000:]
    assert "accepted_not_recorded" in events and "accepted_recorded_late" in events, events
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 1
    assert stats["accepted"] == 1


def test_an_uncertain_job_another_worker_settled_first_is_left_to_it_without_stopping(
    pg_url: str,
) -> None:
    """Two workers confirm the request a callback named for one uncertain job (each received
    it, or one started while the other waited for it): the second finds the job moved on,
    which a fleet's router leaves be, and is fenced only once the fleet has reaped it."""
    import psycopg

    from pixazo_batch.errors import InvalidTransitionError, WorkerFencedError
    from pixazo_batch.models import JobState
    from pixazo_batch.pgstate import PgStateStore
    from pixazo_batch.pgworkers import FleetIdentity
    from tests.test_router import register

    identity = FleetIdentity(manifest="jobs.jsonl", base_url="http://gw", api_key="k")
    with contextlib.ExitStack() as stores:
        first, second = (
            stores.enter_context(PgStateStore.open_database(pg_url, fleet=identity))
            for _ in range(2)
        )
        for job_id in ("job-0", "job-1"):
            register(first, job_id)
            first.begin_submit(job_id, None)
            first.submit_uncertain(job_id, "answer lost")
            first.submit_accepted(job_id, f"req-{job_id}", None)  # the first to confirm
        with pytest.raises(InvalidTransitionError) as beaten:
            second.submit_accepted("job-0", "req-job-0", None)
        assert not isinstance(beaten.value, WorkerFencedError)
        with psycopg.connect(pg_url) as admin:
            admin.execute("UPDATE workers SET reaped = TRUE WHERE id = %s", (second.worker,))
        with pytest.raises(WorkerFencedError):
            second.submit_accepted("job-1", "req-job-1", None)
        held = first.get("job-0")
    assert held is not None and held.state is JobState.SUBMITTED
    assert held.request_id == "req-job-0"


async def test_a_worker_lets_go_of_an_uncertain_job_it_no_longer_waits_for(
    tmp_path: Path, make_settings: Callable[..., Settings], log_tap: Any
) -> None:
    """A worker holds a lost answer's job while it may wait for the job's callback (the
    others wait for it), and lets go of it once it rests, while the worker still works on
    other jobs: a request another worker is told of may then settle it."""
    import dataclasses

    import psycopg

    from tests.test_webhooks import hooked

    lossy = hooked(
        submit_lost_answer_rate=1.0, lost_answer_delay=0.0,
        processing_median={"540p": 0.3, "1080p": 600.0}, processing_sigma=0.0,
    )  # fmt: skip
    manifest = write_manifest(
        tmp_path / "jobs.jsonl", [job_line(0), job_line(1, resolution="1080p")]
    )
    seen: list[tuple[str | None, bool]] = []  # (holder, the worker stopped) once it rested
    async with simulator(lossy) as sim:
        settings = make_settings(sim, manifest, concurrency=1, job_deadline=3.0)
        rested = anyio.Event()

        def second_post_answered() -> None:  # the first POST has had its (lost) answer
            sim.state.scenario = dataclasses.replace(lossy, submit_lost_answer_rate=0.0)
            rested.set()

        log_tap.on("submitting", 2, second_post_answered)

        async def watch() -> None:
            await rested.wait()
            with psycopg.connect(str(settings.state_url), autocommit=True) as db:
                while not seen or seen[-1][0] is not None:
                    found = db.execute(
                        "SELECT j.held_by, w.stopped_at IS NOT NULL FROM jobs j"
                        " JOIN workers w ON TRUE WHERE j.id = 'job-000'"
                    ).fetchone()
                    assert found is not None
                    seen.append((found[0], found[1]))
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            summary = await run_batch(settings)
            group.cancel_scope.cancel()
    assert summary.uncertain == ["job-000"] and summary.stalled == ["job-001"]
    assert seen[-1] == (None, False), "let go while the worker still worked"


def test_a_lost_answer_a_living_worker_waits_for_is_not_left_to_a_person(pg_url: str) -> None:
    """Another worker ending meanwhile does not report the job as one a person must settle
    (exit 5): it is the waiting worker's, until that worker lets go of it or dies."""
    from pixazo_batch.pgstate import PgStateStore
    from pixazo_batch.pgworkers import FleetIdentity
    from tests.test_router import register

    identity = FleetIdentity(manifest="jobs.jsonl", base_url="http://gw", api_key="k")
    with contextlib.ExitStack() as stores:
        waiting, ending = (
            stores.enter_context(PgStateStore.open_database(pg_url, fleet=identity))
            for _ in range(2)
        )
        register(waiting, "job-0")
        waiting.begin_submit("job-0", None)
        waiting.submit_uncertain("job-0", "answer lost")
        while_waited = [row.id for row in ending.undecided(10)]
        waiting.release("job-0")
        once_let_go = [row.id for row in ending.undecided(10)]
    assert while_waited == [] and once_let_go == ["job-0"]


def test_a_worker_that_stops_or_is_reaped_lets_go_of_the_lost_answers_it_held(
    pg_url: str,
) -> None:
    """A lost answer a worker waited for the callback of is left to a person, and another
    worker may settle it from a callback's request, once the worker stops or the fleet takes
    it for dead."""
    import psycopg

    from pixazo_batch.models import JobState
    from pixazo_batch.pgstate import PgStateStore
    from pixazo_batch.pgworkers import FleetIdentity
    from tests.test_router import register

    identity = FleetIdentity(manifest="jobs.jsonl", base_url="http://gw", api_key="k")
    with PgStateStore.open_database(pg_url, fleet=identity) as survivor:
        with PgStateStore.open_database(pg_url, fleet=identity) as stopping:
            register(stopping, "job-0")
            stopping.begin_submit("job-0", None)
            stopping.submit_uncertain("job-0", "answer lost")
            held_while_it_ran = [row.id for row in survivor.undecided(10)]
        with PgStateStore.open_database(pg_url, fleet=identity) as silent:
            register(silent, "job-1")
            silent.begin_submit("job-1", None)
            silent.submit_uncertain("job-1", "answer lost")
            with psycopg.connect(pg_url) as admin:  # silent for a minute, as far as all know
                admin.execute(
                    "UPDATE workers SET heartbeat_at = heartbeat_at - 60 WHERE id = %s",
                    (silent.worker,),
                )
            survivor.reap_and_adopt(timeout=30)
            left = [row.id for row in survivor.undecided(10)]
            for job_id in ("job-0", "job-1"):  # a callback named their requests to the survivor
                survivor.submit_accepted(job_id, f"req-{job_id}", None)
            settled = [survivor.get(job_id) for job_id in ("job-0", "job-1")]
    assert held_while_it_ran == []
    assert left == ["job-0", "job-1"]
    assert all(row is not None and row.state is JobState.SUBMITTED for row in settled)
