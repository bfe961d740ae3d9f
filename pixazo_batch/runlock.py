"""The run lock: one live run per state file. The kernel drops an ``flock`` when its holder
dies, so the lock of a killed run is taken over without any stale-lock heuristics."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO

from pixazo_batch.errors import StateLockedError


def take_lock(lock_file: IO[str], lock_path: Path) -> None:
    """Lock ``lock_file`` for this process and record who holds it.

    Raises:
        StateLockedError: another live process holds it (its pid and start time are named).
    """
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        raise StateLockedError(
            f"another pixazo-batch run holds {lock_path} ({holder}); wait for it to finish"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lock_file.write(json.dumps({"pid": os.getpid(), "started": started}))
    lock_file.flush()
