"""Work on a manifest's lines spread over worker processes, its results taken in order
(``docs/design.md``, "The manifest").

Judging a line on its own is most of what reading a large manifest costs and needs nothing from
the other lines, so it can run on every core while this process does what must be done in
order. A worker process that dies (killed, out of memory), or cannot be started, loses nothing:
what it held is done here instead.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog

if TYPE_CHECKING:
    import multiprocessing.context
    import multiprocessing.process
    from concurrent.futures import Future

log = structlog.get_logger(__name__)

#: a manifest at least this large is read with worker processes (smaller ones are over before
#: the workers would have started)
PARALLEL_BYTES = 8 << 20
#: pieces of work a worker holds at once: one being done, the next ones waiting
AHEAD = 3
#: what a worker process imports once, before it is forked for each pool (``forkserver``)
PRELOAD = ["pixazo_batch.manifest"]
Local = TypeVar("Local")
Piece = TypeVar("Piece")
Result = TypeVar("Result")


def worker_count(*, busy_here: bool = False) -> int:
    """How many worker processes a large manifest gets: one a core this process may use (at
    most 8), less the core this process keeps when it is ``busy_here`` (a run records every
    job it reads); 0 (work here) when there is only one core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if cores < 2:
        return 0
    return min(cores - 1 if busy_here else cores, 8)


def workers_for(manifest: Path, *, busy_here: bool = False) -> int:
    """How many worker processes reading ``manifest`` gets: ``worker_count`` for a file of at
    least ``PARALLEL_BYTES``, else 0."""
    try:
        large = manifest.is_file() and manifest.stat().st_size >= PARALLEL_BYTES
    except OSError:
        return 0  # reading it will say why
    return worker_count(busy_here=busy_here) if large else 0


def in_order(
    work: Callable[[Piece], Result], pieces: Iterable[tuple[Local, Piece]], workers: int
) -> Iterator[tuple[Local, Result]]:
    """``(local, work(piece))`` for each ``(local, piece)`` of ``pieces``, in order: done by
    ``workers`` processes (here when 0), a few pieces a worker ahead, so memory stays flat.
    ``local`` stays in this process; ``work`` and each piece must be picklable.
    """
    pieces = iter(pieces)
    if not workers:
        for local, piece in pieces:
            yield local, work(piece)
        return
    # Imported only here: most commands never start a process (10 ms to import).
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

    sent: deque[tuple[Local, Piece, Future[Result]]] = deque()
    unsent: list[tuple[Local, Piece]] = []
    try:
        pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_start_worker)
    except OSError as exc:  # not even the pool's own helpers could be started
        log.warning("worker_process_lost", error=str(exc), action="all is read in this process")
        for local, piece in pieces:
            yield local, work(piece)
        return
    with pool:
        try:
            for local, piece in pieces:
                unsent.append((local, piece))
                try:
                    sent.append((local, piece, pool.submit(work, piece)))
                except (OSError, EOFError) as exc:  # no worker could be started (no process,
                    # no pipe, a fork server gone before it answered)
                    raise BrokenProcessPool(str(exc) or type(exc).__name__) from exc
                unsent.clear()
                if len(sent) > AHEAD * workers:
                    yield sent[0][0], sent[0][2].result()
                    sent.popleft()
            while sent:
                yield sent[0][0], sent[0][2].result()
                sent.popleft()
        except BrokenProcessPool as exc:
            log.warning(
                "worker_process_lost", error=str(exc), action="the rest is read in this process"
            )
            undone = [(local, piece) for local, piece, _ in sent]
            sent.clear()
            for local, piece in itertools.chain(undone, unsent, pieces):
                yield local, work(piece)
        finally:
            for _, _, waiting in sent:
                waiting.cancel()


def _context() -> multiprocessing.context.BaseContext:
    # Forking is the fastest start, but a process that runs other threads (a run's event loop
    # hands work to some) may fork while one of them holds a lock the child would then wait on
    # forever: such a process has its workers forked by a fresh server process instead.
    import multiprocessing  # noqa: PLC0415

    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context()


def _start_worker() -> None:
    """A worker leaves Ctrl-C to the command, which stops it (and reports) itself, and ends
    when the command is gone, however it ended (a worker holds both ends of the pipe it takes
    work from, so it would never learn from it: killed, the command would leave it behind)."""
    import multiprocessing  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    command = multiprocessing.parent_process()
    if command is not None:
        threading.Thread(target=_end_with, args=(command,), daemon=True).start()


def _end_with(command: multiprocessing.process.BaseProcess) -> None:
    command.join()  # returns once the command's end of the pipe between them is closed
    os._exit(1)
