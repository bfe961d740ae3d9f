"""Work spread over worker processes: results in order, and nothing lost when a worker dies."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest

from pixazo_batch.workpool import AHEAD, in_order
from tests.conftest import LogTap

#: the piece a worker process dies on (killed, as the kernel kills one out of memory)
FATAL = 13


def doubled_or_killed(piece: int) -> tuple[int, bool]:
    """Twice ``piece``, and whether a worker process made it; a worker given ``FATAL`` is
    killed first."""
    in_worker = multiprocessing.parent_process() is not None
    if in_worker and piece == FATAL:
        os.kill(os.getpid(), signal.SIGKILL)
    return piece * 2, in_worker


@pytest.mark.parametrize("threaded", [False, True], ids=["forked", "from-a-fork-server"])
def test_results_come_in_order_and_a_dead_worker_s_pieces_are_done_here(
    log_tap: LogTap, threaded: bool
) -> None:
    # A process running other threads (a run's) has its workers started by a fork server.
    idle = threading.Event()
    other = threading.Thread(target=idle.wait) if threaded else None
    if other is not None:
        other.start()
    try:
        pieces = ((f"local-{n}", n) for n in range(40))
        results = list(in_order(doubled_or_killed, pieces, workers=2))
    finally:
        idle.set()
    assert [(local, value) for local, (value, _) in results] == [
        (f"local-{n}", n * 2) for n in range(40)
    ]
    by_worker = [worker for _, (_, worker) in results]
    sent_before = FATAL - AHEAD * 2  # yielded before the fatal piece was sent: by workers
    assert by_worker[:sent_before] == [True] * sent_before
    assert by_worker[FATAL:] == [False] * (40 - FATAL)  # from the fatal piece on: here
    assert [event["event"] for event in log_tap.events] == ["worker_process_lost"]


def test_without_workers_everything_is_done_here() -> None:
    results = list(in_order(doubled_or_killed, ((n, n) for n in range(20)), workers=0))
    assert results == [(n, (n * 2, False)) for n in range(20)]
