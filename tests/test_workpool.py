"""Work spread over worker processes: results in order, and nothing lost when a worker dies."""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

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


@pytest.mark.parametrize("threaded", [False, True], ids=["as-it-is", "with-a-thread"])
def test_results_come_in_order_and_a_dead_worker_s_pieces_are_done_here(
    log_tap: LogTap, threaded: bool
) -> None:
    # A process running other threads (a run's) has its workers started by a fork server; one
    # without (validate) forks them.
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


#: a command whose worker processes are busy when it is killed: it starts them, says so on its
#: standard output, then waits for its standard input (with another thread running when asked,
#: as a run's, so that its workers come from a fork server)
KILLED_COMMAND = """
import sys, threading
from pixazo_batch.workpool import in_order
from tests.test_workpool import own_pid
if sys.argv[1] == "threaded":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
results = in_order(own_pid, ((n, n) for n in range(1000)), workers=2)
next(results)
print("started", flush=True)
sys.stdin.read()
"""


def own_pid(piece: int) -> int:
    """The process that did ``piece``."""
    return os.getpid()


@pytest.mark.parametrize("threaded", ["as-it-is", "threaded"])
def test_a_killed_command_leaves_no_process_behind(threaded: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_COMMAND, threaded],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as command:
        assert command.stdout is not None
        assert command.stdout.readline() == "started\n"
        below = descendants(command.pid)
        assert len(below) >= 2  # its workers (and a fork server, a resource tracker)
        watched = [os.pidfd_open(pid) for pid in below]
        command.kill()
    try:
        for handle in watched:  # each becomes readable when its process has ended
            readable, _, _ = select.select([handle], [], [], 20)
            assert readable, f"processes left behind: {sorted(descendants_alive(below))}"
    finally:
        for handle in watched:
            os.close(handle)
        for pid in descendants_alive(below):  # what a regression would leave running
            os.kill(pid, signal.SIGKILL)


def descendants(root: int) -> set[int]:
    """Every process below ``root``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    waiting = list(children.get(root, []))
    while waiting:
        pid = waiting.pop()
        found.add(pid)
        waiting.extend(children.get(pid, []))
    return found


def descendants_alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running."""
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


#: a command whose workers cannot be started: the interpreter they would run is not there (with
#: the pool's resource tracker started before, the pool is made and its workers fail to start)
UNSTARTABLE_COMMAND = """
import json, multiprocessing, sys, threading
from multiprocessing import resource_tracker
from pixazo_batch.workpool import in_order
from tests.test_workpool import doubled_or_killed
threading.Thread(target=threading.Event().wait, daemon=True).start()  # workers: a fork server
if sys.argv[1] == "tracker-running":
    resource_tracker.ensure_running()
multiprocessing.set_executable("/nonexistent/python")
print(json.dumps(list(in_order(doubled_or_killed, ((n, n) for n in range(20)), workers=2))))
"""


@pytest.mark.parametrize("helpers", ["none", "tracker-running"])
def test_workers_that_cannot_start_leave_the_work_to_the_command(helpers: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", UNSTARTABLE_COMMAND, helpers],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    *logged, printed = done.stdout.splitlines()  # structlog's own set-up prints its lines
    results = [(local, tuple(made)) for local, made in json.loads(printed)]
    assert results == [(n, (n * 2, False)) for n in range(20)]  # every piece, all done here
    assert any("worker_process_lost" in line for line in logged)
