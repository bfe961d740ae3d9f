"""A fleet worker's state database a network hop away: how much longer a run takes when each of
its store calls (synchronous, on the event loop) waits for a round trip.

One worker runs the same quick jobs with its state on PostgreSQL reached directly (loopback),
then through a local proxy that holds every piece of data ``D`` ms in each direction (a round
trip of 2 D ms more), for each ``D`` asked. The gateway is the simulator on loopback, its jobs
near-instant, so the state's round trips are what the run waits on. Usage:
``python bench/distant_db.py [--jobs 200] [--delay-ms 0 1 2.5]`` (0: the proxy's own cost).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common import ROOT, free_port, quick_jobs, run_engine, sim_process, table, write_manifest

sys.path.insert(0, str(ROOT))
from tests.pgserver import fresh_database, postgres_server


class Traffic:
    """The turns of the conversation between the worker and its database through a proxy: a
    turn is what the worker sends after the database last answered (one round trip it waited
    for, however many statements it pipelined into it)."""

    def __init__(self) -> None:
        self.turns = 0
        self.answered = True


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    traffic: Traffic,
    *,
    to_database: bool,
) -> None:
    """Forward what ``reader`` receives to ``writer``, each piece ``delay`` seconds later, in
    order, counting the turns in ``traffic``."""
    loop = asyncio.get_running_loop()
    pieces: collections.deque[tuple[float, bytes]] = collections.deque()
    arrived = asyncio.Event()
    done = False

    async def send() -> None:
        while pieces or not done:
            if not pieces:
                arrived.clear()
                await arrived.wait()
                continue
            due, data = pieces.popleft()
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    while data := await reader.read(1 << 16):
        if to_database and traffic.answered:
            traffic.turns += 1
        traffic.answered = not to_database
        pieces.append((loop.time() + delay, data))
        arrived.set()
    done = True
    arrived.set()
    await sender


@contextmanager
def delaying_proxy(target: tuple[str, int], delay: float) -> Iterator[tuple[int, Traffic]]:
    """A TCP proxy on loopback to ``target`` that holds every piece ``delay`` seconds each
    way; yields its port and what goes through it towards the database."""
    port = free_port()
    traffic = Traffic()
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        await asyncio.gather(
            _pump(reader, upstream_writer, delay, traffic, to_database=True),
            _pump(upstream_reader, writer, delay, traffic, to_database=False),
            return_exceptions=True,
        )

    async def serve() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    serving = loop.create_task(serve())

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(serving)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait()
    try:
        yield port, traffic
    finally:
        loop.call_soon_threadsafe(serving.cancel)
        thread.join(timeout=5)


def via_port(url: str, port: int) -> str:
    """``url`` with its port replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def round_trip_ms(url: str) -> float:
    """The median time of ``SELECT 1`` over ``url``, in ms."""
    import psycopg

    with psycopg.connect(url) as db:
        times = []
        for _ in range(200):
            start = time.perf_counter()
            db.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[0.0, 1.0, 2.5])
    args = parser.parse_args()
    #: how, round trip ms, run s, CPU s, round trips
    rows: list[tuple[str, float, float, float, int | None]] = []
    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="pixazo-db-") as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder / "jobs.jsonl", args.jobs)
        target = urlsplit(server)
        assert target.hostname is not None
        assert target.port is not None
        flags = ["--rps", "500", "--poll-interval", "0.2"]
        for delay_ms in [None, *args.delay_ms]:
            url = fresh_database(server)
            with contextlib.ExitStack() as stack:
                how, traffic = "loopback, direct", None
                if delay_ms is not None:
                    proxy = delaying_proxy((target.hostname, target.port), delay_ms / 1000)
                    port, traffic = stack.enter_context(proxy)
                    url = via_port(url, port)
                    how = f"through the proxy, +{delay_ms:g} ms each way"
                sim = stack.enter_context(sim_process("fast", **quick_jobs(0.2, 0.1)))
                trip = round_trip_ms(url)
                before = 0 if traffic is None else traffic.turns
                cost = run_engine(manifest, folder / f"out-{len(rows)}", sim.base_url,
                                  "--state", url, *flags)  # fmt: skip
            if cost.returncode != 0:
                raise SystemExit(f"the run failed (exit {cost.returncode}): {how}")
            turns = None if traffic is None else traffic.turns - before
            rows.append((how, trip, cost.wall_s, cost.cpu_s, turns))
    base = rows[0][2]
    table(
        f"A worker's state database a hop away: {args.jobs} near-instant jobs, one worker",
        [
            (f"{how}: SELECT 1 {trip:.2f} ms, run s (x direct), CPU s",
             f"{wall:.1f} ({wall / base:.2f}x), {cpu:.1f}", "-", "-")
            for how, trip, wall, cpu, _ in rows
        ]
        + [
            (f"{how}: round trips a job (the whole run's / jobs)",
             f"{turns / args.jobs:.1f}", "-", "-")
            for how, _, _, _, turns in rows
            if turns is not None
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
