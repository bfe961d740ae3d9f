"""Group commit on a real state file: transitions of jobs that are ready together share one
commit, each caller returns only once its transition is committed (another connection sees it),
a transition refused inside a group is undone alone, and a group the disk refuses loses every
transition in it and tells every caller."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from pixazo_batch.errors import BudgetReachedError, StateWriteError
from pixazo_batch.groupcommit import GroupCommits
from pixazo_batch.models import GenerationRequest, JobSpec
from pixazo_batch.state import StateStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.db") as opened:
        for n in range(8):
            request = GenerationRequest(prompt=f"take {n}", image_url="https://x.example/a.jpg")
            spec = JobSpec.of(f"job-{n}", request, f"{n}.mp4", line=n + 1)
            assert not isinstance(opened.register(spec), str)
        yield opened


def committed_state(store: StateStore, job_id: str) -> str:
    """The job's state as another process would read it: committed changes only."""
    with closing(sqlite3.connect(store.path)) as other:
        (state,) = other.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return str(state)


def count_commits(store: StateStore) -> list[str]:
    commits: list[str] = []
    assert isinstance(store.db, sqlite3.Connection)
    store.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    return commits


async def test_jobs_ready_together_share_one_commit_and_each_returns_committed(
    store: StateStore,
) -> None:
    commits = count_commits(store)
    group = GroupCommits(store)
    seen_on_return: dict[str, str] = {}

    async def send(job_id: str) -> None:
        await group.write(lambda: store.begin_submit(job_id, None))
        seen_on_return[job_id] = committed_state(store, job_id)

    async with anyio.create_task_group() as tasks:
        for n in range(8):
            tasks.start_soon(send, f"job-{n}")
    assert seen_on_return == {f"job-{n}": "submitting" for n in range(8)}
    assert len(commits) == 1


async def test_a_transition_refused_in_a_group_is_undone_alone(store: StateStore) -> None:
    group = GroupCommits(store)
    refused: list[BaseException] = []

    async def send(job_id: str, budget_cents: int | None) -> None:
        try:
            await group.write(lambda: store.begin_submit(job_id, budget_cents))
        except BudgetReachedError as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send, "job-0", None)
        tasks.start_soon(send, "job-1", 1)  # less than one job's price
        tasks.start_soon(send, "job-2", None)
    assert len(refused) == 1
    states = [committed_state(store, f"job-{n}") for n in range(3)]
    assert states == ["submitting", "pending", "submitting"]
    assert store.committed_cents() == 2 * store.get_many(["job-0"])["job-0"].price_cents


async def test_a_group_the_disk_refuses_keeps_nothing_and_fails_every_caller(
    store: StateStore,
) -> None:
    for n in range(2):
        store.begin_submit(f"job-{n}", None)
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    store.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # no room for a long reason
    group = GroupCommits(store)
    failures: dict[str, BaseException] = {}

    async def record(job_id: str, change: Callable[[], None]) -> None:
        try:
            await group.write(change)
        except StateWriteError as exc:
            failures[job_id] = exc

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(record, "job-0", lambda: store.submit_accepted("job-0", "req-0", None))
        tasks.start_soon(record, "job-1", lambda: store.submit_uncertain("job-1", "x" * 200_000))
    assert set(failures) == {"job-0", "job-1"}
    assert "full" in str(failures["job-1"])
    assert [committed_state(store, f"job-{n}") for n in range(2)] == ["submitting"] * 2
    store.db.execute("PRAGMA max_page_count = 1073741823")
    await group.write(lambda: store.submit_accepted("job-0", "req-0", None))
    assert committed_state(store, "job-0") == "submitted"


async def test_a_write_outside_the_group_commits_the_open_group_at_once(
    store: StateStore,
) -> None:
    group = GroupCommits(store)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(group.write, lambda: store.begin_submit("job-0", None))
        await anyio.lowlevel.checkpoint()  # job-0's transition is in the open group
        assert committed_state(store, "job-0") == "pending"
        store.remember_pause("https://gateway.example", 1e12)
        assert committed_state(store, "job-0") == "submitting"
    assert store.pause_until("https://gateway.example") == 1e12


async def test_a_job_refused_by_a_constraint_while_a_group_is_open_spoils_nothing(
    store: StateStore,
) -> None:
    group = GroupCommits(store)
    request = GenerationRequest(prompt="another take", image_url="https://x.example/a.jpg")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(group.write, lambda: store.begin_submit("job-0", None))
        await anyio.lowlevel.checkpoint()  # job-0's transition is in the open group
        conflict = store.register(JobSpec.of("job-new", request, "3.mp4", line=9))
    assert conflict == "output '3.mp4' is already the output of job 'job-3'"
    assert committed_state(store, "job-0") == "submitting"
    assert store.get("job-new") is None
