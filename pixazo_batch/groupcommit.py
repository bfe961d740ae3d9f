"""Group commit: the transitions of concurrent jobs share one SQLite transaction.

A commit is the larger part of what recording a transition costs (and, for the transitions
that decide whether money may be spent twice, an fsync). A job's transition made through
``GroupCommits.write`` joins the transaction open for its group (a savepoint of its own, so a
refused transition is undone alone) and its caller waits until the group is committed before it
acts: nothing acts on a transition that is not durable. The first caller of a group lets the
tasks that are ready run for a few turns of the event loop, so their transitions join, then
commits for all.

Any other write (``register_many``, a run's records) joins the open group and commits it at
once: it is durable when its call returns, as outside a group. Groups commit in the order they
opened, and a transition that read another's uncommitted change is in the same group or a later
one, so a failed commit loses nothing that was acted on (docs/design.md, "Job lifecycle").
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio

from pixazo_batch.errors import StateDamagedError, StateWriteError
from pixazo_batch.statereader import Connection

T = TypeVar("T")

#: turns of the event loop a group stays open after its first transition; measured with every
#: fsync 10 ms long (bench/README.md): one turn gathers 1.9 transitions a commit, three about 5
GATHER_TURNS = 3


@dataclass(eq=False)
class CommitGroup:
    """One open transaction and the callers waiting for its commit."""

    #: committed with ``synchronous=FULL`` (a power cut does not lose it)
    full: bool
    done: anyio.Event = field(default_factory=anyio.Event)
    #: why the commit failed (every transition of the group is lost)
    error: StateWriteError | StateDamagedError | None = None
    led: bool = False


class SqliteTransactions:
    """The transactions of a SQLite state file, alone or in groups (see the module's notes)."""

    path: Path | str
    db: Connection
    #: the group whose transaction is open, if any
    group: CommitGroup | None = None
    #: set while ``GroupCommits.write`` runs its change: transactions join a group, uncommitted
    deferring: bool = False
    #: the group the last deferred transaction joined
    joined: CommitGroup | None = None

    @contextmanager
    def _transaction(self, *, full: bool = False) -> Iterator[None]:
        """One transition, durable on leaving the block unless deferred (then durable once its
        group commits); all or nothing either way.

        Raises:
            StateWriteError: the disk refused a write; nothing of it was kept.
            StateDamagedError: the file is damaged.
        """
        if not self.deferring and self.group is None:
            with self._alone(full):
                yield
            return
        group = self._open_group(full)
        with self._savepoint(group):
            yield
        if self.deferring:
            self.joined = group
        else:
            self.commit_group()

    def commit_group(self) -> None:
        """Commit the open group, if any, and wake its waiters.

        Raises:
            StateWriteError: the commit failed; every transition of the group is lost.
        """
        group = self.group
        if group is None:
            return
        self.group = None
        try:
            self._translated(lambda: self.db.execute("COMMIT"))
        except (StateWriteError, StateDamagedError) as exc:
            self._fail(group, exc)
            raise
        finally:
            if group.full:
                self._translated(lambda: self.db.execute("PRAGMA synchronous=NORMAL"))
        group.done.set()

    @contextmanager
    def _alone(self, full: bool) -> Iterator[None]:
        """A transaction of its own, committed on leaving the block."""
        try:
            if full:
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:  # SQLite rolls back by itself after an I/O error
                    self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")
            finally:
                if full:
                    self.db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.IntegrityError:
            raise  # a constraint the caller checks (``StateStore.register``), not a sick file
        except sqlite3.OperationalError as exc:
            # A full disk or a failing one: nothing of this transaction was recorded, so the
            # caller must not act on it; the run stops, and resumes once the disk is sound.
            raise StateWriteError(f"cannot write the state file {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StateDamagedError(f"the state file {self.path} is damaged: {exc}") from exc

    def _open_group(self, full: bool) -> CommitGroup:
        """The group a transition joins: the open one, unless it must be committed with
        ``synchronous=FULL`` and the open one is not (the safety level is set before BEGIN)."""
        group = self.group
        if group is not None and (group.full or not full):
            return group
        self.commit_group()
        group = CommitGroup(full)

        def begin() -> None:
            if full:
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("BEGIN IMMEDIATE")

        self._translated(begin)
        self.group = group
        return group

    @contextmanager
    def _savepoint(self, group: CommitGroup) -> Iterator[None]:
        """The block's writes within the group, undone alone if it raises."""
        self._translated(lambda: self.db.execute("SAVEPOINT transition"))
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.IntegrityError
            ):  # SQLite may have rolled the whole group back
                error = _translate(exc, self.path)
                self._fail(group, error)
                raise error from exc
            # refused here (a constraint the caller checks, too): undone alone
            self._translated(lambda: self.db.execute("ROLLBACK TO transition"))
            self._translated(lambda: self.db.execute("RELEASE transition"))
            raise
        self._translated(lambda: self.db.execute("RELEASE transition"))

    def _fail(self, group: CommitGroup, error: StateWriteError | StateDamagedError) -> None:
        """The group's transaction is lost: roll back what SQLite kept of it, tell the waiters."""
        self.group = None
        group.error = error
        if self.db.in_transaction:
            # What failed the group may fail this too; nothing of the group is kept either way.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
        group.done.set()

    def _translated(self, statement: Callable[[], object]) -> None:
        try:
            statement()
        except sqlite3.DatabaseError as exc:
            error = _translate(exc, self.path)
            if self.group is not None:
                self._fail(self.group, error)
            raise error from exc


def _translate(exc: sqlite3.DatabaseError, path: Path | str) -> StateWriteError | StateDamagedError:
    if isinstance(exc, sqlite3.OperationalError):
        return StateWriteError(f"cannot write the state file {path}: {exc}")
    return StateDamagedError(f"the state file {path} is damaged: {exc}")


class GroupCommits:
    """Makes transitions of concurrent jobs share commits; each caller still waits for its own
    commit before it returns (a store that commits every transaction itself, PostgreSQL, is
    passed through)."""

    def __init__(self, store: object) -> None:
        self._store = store if isinstance(store, SqliteTransactions) else None

    async def write(self, change: Callable[[], T]) -> T:
        """Run ``change`` (transitions of the store) and return its result once what it wrote
        is committed.

        Raises:
            StateWriteError: the group's commit failed: nothing of ``change`` was kept.
        """
        store = self._store
        if store is None:
            return change()
        store.deferring, store.joined = True, None
        try:
            return change()
        finally:
            store.deferring = False
            if store.joined is not None:
                await _committed(store, store.joined)


async def _committed(store: SqliteTransactions, group: CommitGroup) -> None:
    """Wait for ``group``'s commit; its first caller commits it, a few turns of the loop later."""
    if not group.led:
        group.led = True
        with anyio.CancelScope(shield=True):
            for _ in range(GATHER_TURNS):  # the other ready jobs add their transitions
                await anyio.lowlevel.checkpoint()
            if store.group is group:
                store.commit_group()
    else:
        await group.done.wait()
    if group.error is not None:
        raise group.error
