"""The morning review page in a real headless browser (Debian's chromium, driven over the
DevTools protocol): it loads without console errors, shows a card per job, filters by state, and
every video on it reaches ``loadedmetadata``; past its limit of cards it shows the jobs that need
a look first."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from pixazo_batch.engine import run_batch
from pixazo_batch.reviewpage import render_page
from pixazo_batch.stores import open_store
from tests.conftest import fast, job_line, simulator, write_manifest

pytestmark = pytest.mark.anyio

BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0",
)  # fmt: skip


def chromium() -> str:
    """The browser's path; installed with apt when missing and allowed (CI runs as root)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            pytest.skip(f"chromium could not be installed: {done.stderr.strip()[-300:]}")
    return shutil.which("chromium") or pytest.skip("chromium installed but not found")


class Page:
    """One browser tab over the DevTools protocol: commands, and the errors it reports."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse, session: str) -> None:
        self.socket = socket
        self.session = session
        self.errors: list[str] = []
        self.loaded = anyio.Event()
        self._ids = itertools.count(1)
        self._answers: dict[int, Any] = {}
        self._arrived = anyio.Event()

    async def send(self, method: str, *, to_browser: bool = False, **params: Any) -> Any:
        """A command to this tab (or, ``to_browser``, to the browser itself); its result."""
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if not to_browser:
            message["sessionId"] = self.session
        await self.socket.send_str(json.dumps(message))
        while number not in self._answers:
            await self._arrived.wait()
        answer = self._answers.pop(number)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer["result"]

    async def listen(self) -> None:
        async for frame in self.socket:
            message = json.loads(frame.data)
            if "id" in message:
                self._answers[message["id"]] = message
                self._arrived.set()
                self._arrived = anyio.Event()
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Page.loadEventFired":
                self.loaded.set()
            elif method == "Runtime.exceptionThrown":
                self.errors.append(str(params["exceptionDetails"].get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                self.errors.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.errors.append(params["entry"]["text"])


@asynccontextmanager
async def browser_page(tmp_path: Path) -> AsyncIterator[Page]:
    command = [chromium(), *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    async with await anyio.open_process(command) as process:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(30):
            while (match := re.search(rb"DevTools listening on (ws://\S+)", seen)) is None:
                seen += await process.stderr.receive()
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(match.group(1).decode(), max_msg_size=0) as socket,
            anyio.create_task_group() as group,
        ):
            page = Page(socket, session="")
            group.start_soon(page.listen)
            target = await page.send("Target.createTarget", to_browser=True, url="about:blank")
            attached = await page.send(
                "Target.attachToTarget", to_browser=True, targetId=target["targetId"], flatten=True
            )
            page.session = attached["sessionId"]
            for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
                await page.send(domain)
            try:
                yield page
            finally:
                group.cancel_scope.cancel()
                process.terminate()


_VIDEOS_READY = """
(async () => {
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map(v => v.readyState >= 1 ? null : new Promise((ok, no) => {
    v.addEventListener('loadedmetadata', ok);
    v.addEventListener('error', () => no(new Error('cannot load ' + v.src)));
  })));
  const failed = document.querySelector('.filters input[value="failed"]');
  failed.checked = false;
  failed.dispatchEvent(new Event('change'));
  return JSON.stringify({
    cards: document.querySelectorAll('.card').length,
    shown_without_failed: [...document.querySelectorAll('.card')].filter(c => !c.hidden).length,
    states: [...document.querySelectorAll('.card')].map(c => c.dataset.state),
    durations: videos.map(v => Math.round(v.duration)),
    sizes: videos.map(v => v.videoWidth + 'x' + v.videoHeight),
  });
})()
"""


async def test_the_review_page_shows_every_job_and_every_video_loads(
    tmp_path: Path, make_settings: Any
) -> None:
    manifest = write_manifest(
        tmp_path / "jobs.jsonl",
        [
            job_line(0, output="spring/one <b>&.mp4", prompt="<script>alert(1)</script> & co"),
            job_line(1, aspect_ratio="9:16", duration="9s"),
            job_line(2, aspect_ratio="21:9"),
            job_line(3, prompt="   "),  # refused by the gateway: a card without a video
        ],
    )
    async with simulator(fast()) as sim:
        settings = make_settings(sim, manifest)
        await run_batch(settings)
    page_url = (settings.out_dir / "report.html").resolve().as_uri()
    async with browser_page(tmp_path) as page:
        await page.send("Page.navigate", url=page_url)
        with anyio.fail_after(30):
            await page.loaded.wait()
            found = await page.send("Runtime.evaluate", expression=_VIDEOS_READY, awaitPromise=True)
    assert "exceptionDetails" not in found, found
    report = json.loads(found["result"]["value"])
    assert page.errors == []
    assert report["cards"] == 4
    assert report["shown_without_failed"] == 3, "the state filters work"
    assert sorted(report["states"]) == ["downloaded", "downloaded", "downloaded", "failed"]
    assert sorted(report["durations"]) == [5, 5, 9]
    assert sorted(report["sizes"]) == ["112x48", "54x96", "96x54"]


async def test_past_its_limit_the_page_shows_jobs_not_downloaded_then_the_latest(
    tmp_path: Path, make_settings: Any
) -> None:
    refused = {0: {"prompt": "   "}, 4: {"prompt": "   "}}  # the gateway refuses them: failed
    lines = [job_line(index, **refused.get(index, {})) for index in range(6)]
    async with simulator(fast()) as sim:
        settings = make_settings(sim, write_manifest(tmp_path / "jobs.jsonl", lines))
        await run_batch(settings)
    with open_store(settings.state_location, lock=False) as store:
        capped = "".join(render_page(store, limit=3))
        whole = "".join(render_page(store, limit=7))
    assert re.findall(r'data-id="([^"]+)"', capped) == ["job-000", "job-004", "job-005"]
    assert "This page shows 3 of the 6 jobs" in capped
    order = ["job-000", "job-004", "job-001", "job-002", "job-003", "job-005"]
    assert re.findall(r'data-id="([^"]+)"', whole) == order
    assert "This page shows" not in whole
