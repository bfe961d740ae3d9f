"""PostgreSQL behind the state store's SQL: a psycopg connection that takes the SQLite store's
queries (``?`` placeholders, ``rowid``, ``group_concat``) unchanged, and the URL helpers."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

SCHEMES = ("postgresql://", "postgres://")


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

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        from psycopg.pq import TransactionStatus  # noqa: PLC0415

        return bool(self.conn.info.transaction_status != TransactionStatus.IDLE)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
