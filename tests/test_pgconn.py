"""The state database's pipelined transactions (``pgconn.PgConnection.pipelined_transaction``):
all or nothing whichever way a transaction fails, the failure the one that tells why, and the
connection usable afterwards. Against the session's real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pixazo_batch.errors import BudgetReachedError, JobTakenError
from pixazo_batch.models import JobState
from pixazo_batch.pgconn import PgConnection, connect
from pixazo_batch.pgstate import PgStateStore
from pixazo_batch.pgworkers import FleetIdentity
from tests.test_router import register


@pytest.fixture
def db(pg_url: str) -> Iterator[PgConnection]:
    """A state connection to a fresh database holding one table of unique names."""
    connection = PgConnection(connect(pg_url))
    connection.execute("CREATE TABLE names (name TEXT PRIMARY KEY)")
    yield connection
    connection.close()


def names(db: PgConnection) -> list[str]:
    return [name for (name,) in db.execute("SELECT name FROM names ORDER BY name").fetchall()]


def test_a_statement_failing_after_others_were_sent_keeps_none_of_them(db: PgConnection) -> None:
    import psycopg

    def add_b_a_c() -> None:
        with db.pipelined_transaction():
            db.execute("INSERT INTO names VALUES ('b')")
            db.execute("INSERT INTO names VALUES ('a')")  # refused by the database
            db.execute("INSERT INTO names VALUES ('c')")

    db.execute("INSERT INTO names VALUES ('a')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        add_b_a_c()
    assert not db.in_transaction
    with db.pipelined_transaction():
        db.execute("INSERT INTO names VALUES ('d')")
    assert names(db) == ["a", "d"]


def test_a_refusal_raised_here_after_writes_were_sent_keeps_none_and_is_what_is_raised(
    db: PgConnection, caplog: pytest.LogCaptureFixture
) -> None:
    """The database's own refusal of a write sent before it is neither raised nor logged."""

    def add_b_twice_then_refuse() -> None:
        with db.pipelined_transaction():
            db.execute("INSERT INTO names VALUES ('b')")
            db.execute("INSERT INTO names VALUES ('b')")  # the database refuses this too
            raise LookupError("decided here")

    with pytest.raises(LookupError, match="decided here"):
        add_b_twice_then_refuse()
    assert [record.getMessage() for record in caplog.records] == []
    assert names(db) == []
    with db.pipelined_transaction():
        db.execute("INSERT INTO names VALUES ('e')")
    assert names(db) == ["e"]


def test_a_read_inside_the_transaction_sees_its_writes_and_a_failed_one_raises_there(
    db: PgConnection,
) -> None:
    import psycopg

    with db.pipelined_transaction():
        db.execute("INSERT INTO names VALUES ('f')")
        (seen,) = db.execute("SELECT COUNT(*) FROM names").fetchone()
    assert seen == 1

    def add_g_then_read_nothing() -> None:
        with db.pipelined_transaction():
            db.execute("INSERT INTO names VALUES ('g')")
            db.execute("SELECT COUNT(*) FROM no_such_table").fetchone()
            pytest.fail("the read's failure is raised where it is read")

    with pytest.raises(psycopg.errors.UndefinedTable):
        add_g_then_read_nothing()
    assert names(db) == ["f"]


def test_the_rows_of_a_statement_may_be_read_once_the_transaction_is_committed(
    db: PgConnection,
) -> None:
    with db.pipelined_transaction():
        added = db.execute("INSERT INTO names VALUES ('h') RETURNING name")
    assert added.fetchone() == ("h",)


def test_transactions_do_not_nest(db: PgConnection) -> None:
    def nested() -> None:
        with db.pipelined_transaction(), db.pipelined_transaction():
            db.execute("INSERT INTO names VALUES ('i')")

    with pytest.raises(RuntimeError, match="do not nest"):
        nested()
    assert names(db) == []


def test_a_submit_refused_by_the_budget_or_taken_by_another_worker_changes_nothing(
    pg_url: str,
) -> None:
    """The write-ahead's refusals come after its claim and the fleet's count were sent: the job
    stays pending with no attempt, and the worker's next transitions are recorded."""
    identity = FleetIdentity(manifest="jobs.jsonl", base_url="http://gw", api_key="k")
    with (
        PgStateStore.open_database(pg_url, fleet=identity) as first,
        PgStateStore.open_database(pg_url, fleet=identity) as second,
    ):
        first.max_in_flight = second.max_in_flight = 10
        register(first, "job-0")
        with pytest.raises(BudgetReachedError):
            first.begin_submit("job-0", 0)
        refused = first.get("job-0")
        second.begin_submit("job-0", None)
        with pytest.raises(JobTakenError):
            first.begin_submit("job-0", None)
        second.submit_accepted("job-0", "req-0", None)
        accepted = first.get("job-0")
    assert refused is not None and (refused.state, refused.attempts) == (JobState.PENDING, 0)
    assert accepted is not None and (accepted.state, accepted.attempts) == (JobState.SUBMITTED, 1)
