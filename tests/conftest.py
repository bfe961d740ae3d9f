"""Shared fixtures: the simulator on loopback, manifests, and settings for engine runs."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from pixazo_batch.config import Settings
from pixazo_batch.models import SUBMIT_PATH
from pixazo_batch.sim import Scenario, Simulator, scenario_named

TEST_KEY = "test-key-5f2a9c"
#: where the runs of ``make_settings`` keep their state: ``postgres`` (``make test-pg``) runs
#: them on a database of the session's PostgreSQL server, as a fleet's worker would
STATE = os.environ.get("PIXAZO_TEST_STATE", "sqlite")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With the state in PostgreSQL, skip the tests about the state file itself, saying why."""
    if STATE != "postgres":
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_state")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"SQLite state only: {marker.args[0]}"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fast(**changes: Any) -> Scenario:
    """The near-zero-latency scenario with the test key and the given changes."""
    return dataclasses.replace(scenario_named("fast"), keys=frozenset({TEST_KEY}), **changes)


@asynccontextmanager
async def simulator(scenario: Scenario | None = None) -> AsyncIterator[Simulator]:
    async with Simulator(scenario or fast()) as sim:
        yield sim


def job_line(index: int, **fields: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "id": f"job-{index:03d}",
        "prompt": f"A lighthouse at dusk, waves rolling in, take {index}",
        "image_url": f"https://images.example.com/{index}.jpg",
    }
    line.update(fields)
    return line


def write_manifest(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    state: dict[str, Any] = {}
    if STATE == "postgres":
        state["state_url"] = request.getfixturevalue("pg_url")

    def build(sim: Simulator, manifest: Path, **changes: Any) -> Settings:
        values: dict[str, Any] = {
            "manifest": manifest,
            "out_dir": tmp_path / "out",
            "api_key": SecretStr(TEST_KEY),
            "base_url": sim.base_url,
            "poll_interval": 0.02,
            "rps": 500.0,
            "max_in_flight": 50,
            **state,
        }
        values.update(changes)
        return Settings(**values)

    return build


@contextmanager
def state_sql(settings: Settings) -> Iterator[Any]:
    """The run's state with SQL at hand beneath the store, on either backend (``?``
    placeholders): what a test reads or plants there; a change is committed at once."""
    db: Any
    if settings.state_url is None:
        import sqlite3

        db = sqlite3.connect(settings.state_file, isolation_level=None)
    else:
        from pixazo_batch.pgconn import PgConnection, connect

        db = PgConnection(connect(settings.state_url))
    try:
        yield db
    finally:
        db.close()


async def post_submit(
    session: aiohttp.ClientSession, sim: Simulator, body: Any, key: str | None = TEST_KEY
) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
    if key is not None:
        headers["Ocp-Apim-Subscription-Key"] = key
    data = body if isinstance(body, str) else json.dumps(body)
    return await session.post(sim.base_url + SUBMIT_PATH, data=data, headers=headers)


class LogTap:
    """Captures rendered log lines and can act when an event has been logged N times."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._triggers: list[tuple[str, int, Callable[[], None]]] = []

    def on(self, event: str, count: int, action: Callable[[], None]) -> None:
        self._triggers.append((event, count, action))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def processor(self, logger: object, method: str, event: Any) -> Any:
        self.events.append(dict(event))
        seen = len(self.named(event.get("event")))
        for name, count, action in self._triggers:
            if name == event.get("event") and seen == count:
                action()
        return event

    def write(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture
def log_tap() -> LogTap:
    """structlog routed through the project's own set-up (with redaction), into memory."""
    import io

    import structlog

    from pixazo_batch.logs import configure_logging

    tap = LogTap()
    sink = io.StringIO()
    configure_logging(secrets=[TEST_KEY], level="debug", json_lines=True, stream=sink)
    config = structlog.get_config()
    structlog.configure(processors=[tap.processor, *config["processors"]])
    tap.sink = sink  # type: ignore[attr-defined]
    return tap


class FastClock:
    """A clock whose time runs ``factor`` times faster than the loop's: back-offs and pauses
    of the engine pass quickly (only for tests without a rate limit to honour)."""

    def __init__(self, factor: float = 20.0) -> None:
        import anyio

        self.factor = factor
        self._start = anyio.current_time()

    def now(self) -> float:
        import anyio

        return self._start + (anyio.current_time() - self._start) * self.factor

    async def sleep(self, seconds: float) -> None:
        import anyio

        await anyio.sleep(max(0.0, seconds) / self.factor)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on loopback, for the whole session."""
    import logging

    from moto.server import ThreadedMotoServer

    # The server's own access log (werkzeug, in this process) is not the engine's output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket on the moto server, with the AWS environment pointing at it; returns a
    boto3 client for looking inside."""
    import uuid

    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"videos-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    client.bucket_name = name
    return client


class CuttableBucket:
    """A bucket on an S3 server of its own (moto), which a test can cut off (connections
    refused) and bring back on the same port."""

    def __init__(self) -> None:
        import socket
        import uuid

        import boto3
        from moto.server import ThreadedMotoServer

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._server_type = ThreadedMotoServer
        self.servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)]
        self.servers[0].start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        self.name = f"cuttable-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=self.name)

    def cut(self) -> None:
        """From now on every connection is refused (the listening socket is closed)."""
        server = self.servers[-1]
        server.stop()
        assert server._server is not None
        server._server.server_close()

    def back(self) -> None:
        """Serve again on the same port; the bucket and its objects are as they were."""
        self.servers.append(
            self._server_type(ip_address="127.0.0.1", port=self.port, verbose=False)
        )
        self.servers[-1].start()


@pytest.fixture
def cuttable_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[CuttableBucket]:
    """A ``CuttableBucket`` with the AWS environment pointing at its server."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    bucket = CuttableBucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    yield bucket
    bucket.servers[-1].stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server (initdb and pg_ctl into a temp folder) for the session; yields
    the URL of its maintenance database. Skips, saying why, where PostgreSQL is not installed."""
    from tests.pgserver import postgres_bin, postgres_server

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed here (apt install postgresql-15)")
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_url(postgres: str) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    from tests.pgserver import fresh_database

    return fresh_database(postgres)
