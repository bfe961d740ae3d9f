"""PostgreSQL behind the state store's SQL: a psycopg connection that takes the SQLite store's
queries (``?`` placeholders, ``rowid``, ``group_concat``) unchanged, its pipelined
transactions, how it connects, and the URL helpers."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

SCHEMES = ("postgresql://", "postgres://")
#: libpq settings of a state connection, unless its URL names them: a database gone silent (a
#: network cut, a host lost) fails the call waiting on it within about 30 s, where the system's
#: keepalive would first wait two hours with the run frozen (every store call is synchronous)
CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
#: the server ends a session of ours idle inside a transaction this long (unless the database
#: or the URL set a limit): none waits there (each transaction is one synchronous block), so it
#: is a worker frozen mid-transaction, whose row locks would hold every other worker
IDLE_IN_TRANSACTION = "60s"


def is_database_url(location: object) -> bool:
    """Whether a ``--state`` value names a PostgreSQL database rather than a file."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password or query (safe to print)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


@functools.lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    """The store's SQLite-flavoured SQL as PostgreSQL reads it."""
    sql = sql.replace("?", "%s").replace("group_concat(", "string_agg(")
    return re.sub(r"\browid\b", "seq", sql)


class PgConnection:
    """A psycopg connection behind the interface the store uses (``?`` placeholders, ``rowid``,
    ``group_concat``), so the SQLite store's queries run unchanged."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        """Run one statement; returns its cursor."""
        return self.conn.execute(_dialect(sql), parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> object:
        """Run one statement for each row."""
        with self.conn.cursor() as cursor:
            cursor.executemany(_dialect(sql), list(rows))
        return None

    @contextmanager
    def pipelined_transaction(self) -> Iterator[None]:
        """One transaction, committed on leaving the block, all or nothing. Its statements are
        pipelined: only reading a result waits for the database, so a transition costs two
        round trips (its locked read, then its writes with the commit) where each statement
        took one. A cursor's rows are read inside the block or once it is committed."""
        import psycopg  # noqa: PLC0415
        from psycopg.pq import PipelineStatus, TransactionStatus  # noqa: PLC0415

        conn, opened = self.conn, (TransactionStatus.INTRANS, TransactionStatus.INERROR)
        if (
            conn.info.pipeline_status != PipelineStatus.OFF
            or conn.info.transaction_status in opened
        ):
            raise RuntimeError("the state's transactions do not nest")
        try:
            with conn.pipeline() as pipeline:
                conn.execute("BEGIN")
                try:
                    yield
                except BaseException:
                    # What the block queued is settled here, its errors dropped: the block's
                    # own error is the one that tells what went wrong.
                    with contextlib.suppress(psycopg.Error):
                        pipeline.sync()
                    raise
                conn.execute("COMMIT")
        finally:
            if not conn.closed and self.in_transaction:  # refused or failed: nothing is kept
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        from psycopg.pq import TransactionStatus  # noqa: PLC0415

        return bool(self.conn.info.transaction_status != TransactionStatus.IDLE)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def connect(url: str) -> Any:
    """A psycopg connection to ``url`` with ``CONNECTION_DEFAULTS`` and ``IDLE_IN_TRANSACTION``
    where nothing else set them."""
    import psycopg  # noqa: PLC0415
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

    given = conninfo_to_dict(url)
    defaults = {name: value for name, value in CONNECTION_DEFAULTS.items() if name not in given}
    conn = psycopg.connect(make_conninfo(url, **defaults), autocommit=True)
    try:
        idle = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        if idle is not None and idle[0] == "0":
            conn.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'")
    except BaseException:
        conn.close()
        raise
    return conn
