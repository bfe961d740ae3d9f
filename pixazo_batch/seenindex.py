"""The ids and outputs a manifest's earlier lines took, so a later line cannot take them again.

Kept in a throwaway on-disk SQLite file rather than in memory sets, so a manifest of any length
is read in flat memory (``docs/design.md``, "The manifest"). Lines are checked a batch at a
time: a batch with nothing seen twice (the usual case) costs a lookup and a bulk insert per
table; a batch with a conflict is checked line by line instead, which names the earlier line.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

#: lines checked together
BATCH = 512
#: the most parent folders a batch checks at once (SQLite's bound on one query's parameters;
#: a batch naming more is checked line by line)
MAX_FOLDERS = 900


class Claim(NamedTuple):
    """What a valid line takes: its job id and its output path."""

    line: int
    id: str
    output: str
    #: whether the line named its id (otherwise it was derived from the request)
    id_given: bool


@dataclass(frozen=True, slots=True)
class Conflict:
    """Why a line's job cannot run beside an earlier line's."""

    line: int
    field: str
    message: str


class SeenIndex:
    """Ids and output paths already taken, on disk, for one pass over one manifest.

    Usage: ``index = SeenIndex(folder)``; ``index.check(batch)`` for each batch of lines in
    order; ``index.close()``.
    """

    def __init__(self, folder: str) -> None:
        self.db = sqlite3.connect(Path(folder) / "seen.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE ids (value TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        # An output is a file; each of its parents is a folder: one name, one kind, one line.
        self.db.execute(
            "CREATE TABLE paths (value TEXT PRIMARY KEY, folder INTEGER, line INTEGER)"
            " WITHOUT ROWID"
        )
        # One transaction for the whole pass: a throwaway index needs no commits, and SQLite
        # spills its page cache to the file, so memory stays flat.
        self.db.execute("BEGIN")

    def close(self) -> None:
        """Drop the index."""
        self.db.close()

    def check(self, batch: list[Claim]) -> list[Conflict | None]:
        """For each claim of ``batch`` (lines in order, after every earlier batch), why it
        conflicts with an earlier line, or None; what is not a conflict is remembered."""
        if self._all_new(batch):
            return [None] * len(batch)
        return [self._one(claim) for claim in batch]

    def _all_new(self, batch: list[Claim]) -> bool:
        """Remember the whole batch if no id or path in it was taken before (nor is taken
        twice in it); otherwise remember nothing and say so."""
        ids = [claim.id for claim in batch]
        outputs = [claim.output for claim in batch]
        folders = [(p, claim.line) for claim in batch for p in parent_folders(claim.output)]
        names = {name for name, _ in folders}
        if (
            len(set(ids)) < len(ids)
            or len(set(outputs)) < len(outputs)
            or not names.isdisjoint(outputs)
            or len(names) > MAX_FOLDERS
            or self._any("SELECT 1 FROM ids WHERE value IN", ids)
            or self._any("SELECT 1 FROM paths WHERE value IN", outputs)
            or self._any("SELECT 1 FROM paths WHERE folder = 0 AND value IN", list(names))
        ):
            return False
        lines = [claim.line for claim in batch]
        self.db.executemany("INSERT INTO ids VALUES (?, ?)", zip(ids, lines, strict=True))
        self.db.executemany("INSERT INTO paths VALUES (?, 0, ?)", zip(outputs, lines, strict=True))
        self.db.executemany("INSERT INTO paths VALUES (?, 1, ?) ON CONFLICT DO NOTHING", folders)
        return True

    def _any(self, query: str, values: list[str]) -> bool:
        """Whether ``query`` (ending in ``IN``) finds a row for any of ``values``."""
        if not values:
            return False
        marks = ", ".join("?" * len(values))
        return self.db.execute(f"{query} ({marks}) LIMIT 1", values).fetchone() is not None

    def _one(self, claim: Claim) -> Conflict | None:
        earlier = self._first_line(claim.id, claim.line)
        if earlier is not None:
            hint = "" if claim.id_given else "; the same request twice: give each line its own id"
            message = f"duplicate id {claim.id!r} (first on line {earlier}){hint}"
            return Conflict(claim.line, "id", message)
        conflict = self._output_conflict(claim.output, claim.line)
        if conflict is not None:
            return Conflict(claim.line, "output", conflict)
        return None

    def _first_line(self, job_id: str, line: int) -> int | None:
        """The earlier line that used ``job_id``, or None (and remember this one)."""
        added = self.db.execute(
            "INSERT INTO ids VALUES (?, ?) ON CONFLICT DO NOTHING", (job_id, line)
        )
        if added.rowcount == 1:
            return None
        (earlier,) = self.db.execute("SELECT line FROM ids WHERE value = ?", (job_id,)).fetchone()
        return int(earlier)

    def _output_conflict(self, output: str, line: int) -> str | None:
        """Why ``output`` cannot coexist with the outputs seen so far (the same file, a file
        where another needs a folder, or the reverse), or None (and remember it)."""
        parents = parent_folders(output)
        for parent in parents:
            found = self._find(parent)
            if found is not None and not found[0]:
                return f"{parent!r} is the output of line {found[1]}, so it cannot be a folder"
        added = self.db.execute(
            "INSERT INTO paths VALUES (?, 0, ?) ON CONFLICT DO NOTHING", (output, line)
        )
        if added.rowcount != 1:
            folder, earlier = self._find(output) or (False, 0)
            if folder:
                return f"{output!r} is a folder of the output of line {earlier}"
            return f"{output!r} is already the output of line {earlier}"
        if parents:
            self.db.executemany(
                "INSERT INTO paths VALUES (?, 1, ?) ON CONFLICT DO NOTHING",
                [(parent, line) for parent in parents],
            )
        return None

    def _find(self, value: str) -> tuple[bool, int] | None:
        found = self.db.execute(
            "SELECT folder, line FROM paths WHERE value = ?", (value,)
        ).fetchone()
        return None if found is None else (bool(found[0]), int(found[1]))


def parent_folders(output: str) -> list[str]:
    """The folders the output path ``output`` (normalised, as ``safe_output`` makes it) lies
    in, deepest first."""
    parents = []
    cut = output.rfind("/")
    while cut > 0:
        parents.append(output[:cut])
        cut = output.rfind("/", 0, cut)
    return parents
