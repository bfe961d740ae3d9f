"""Opening the state: the SQLite file (the default) or a PostgreSQL database a fleet shares.

Both are ``StateStore``s with the same transitions and guarantees; the database adds the
fleet's workers (``pgstate.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pixazo_batch.pgconn import is_database_url
from pixazo_batch.pgstate import PgStateStore
from pixazo_batch.pgworkers import FleetIdentity
from pixazo_batch.state import StateStore


@contextmanager
def open_store(
    location: Path | str,
    *,
    lock: bool = True,
    folder: Path | None = None,
    fleet: FleetIdentity | None = None,
) -> Iterator[StateStore]:
    """Open the state at ``location`` for the block: a ``postgresql://`` URL (joining as a
    worker when ``fleet`` is given) or a state file (locked unless ``lock=False``, when it is
    read-only; ``folder`` as in ``StateStore.open``).

    Raises:
        UsageError: the database cannot be used, or holds another fleet's jobs.
        StateError: the state file cannot be used (``StateStore.open``).
    """
    if is_database_url(location):
        with PgStateStore.open_database(str(location), fleet=fleet) as database:
            yield database
        return
    with StateStore.open(Path(location), lock=lock, folder=folder) as store:
        yield store
