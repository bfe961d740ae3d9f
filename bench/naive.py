"""The baseline: what a competent user writes from the documentation's "Typical Workflow".

asyncio + a semaphore + polling every N seconds + whole-body download; no state, no rate
governor, no resume. Usage: ``python bench/naive.py MANIFEST OUT BASE_URL [--poll S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp

MODEL = "luma-dream-machine-ray-2-flash-image-to-video"


async def one_job(  # noqa: PLR0917  (a throwaway baseline script)
    session: aiohttp.ClientSession,
    gate: asyncio.Semaphore,
    base: str,
    job: dict[str, Any],
    out: Path,
    poll: float,
) -> bool:
    """Submit, poll every ``poll`` seconds, download the whole body."""
    headers = {"Ocp-Apim-Subscription-Key": os.environ["PIXAZO_API_KEY"]}
    body = {k: v for k, v in job.items() if k not in ("id", "output")}
    async with gate:
        while True:
            async with session.post(
                f"{base}/{MODEL}/v1/{MODEL}-request", json=body, headers=headers
            ) as r:
                if r.status == 429:
                    await asyncio.sleep(5)
                    continue
                if r.status != 202:
                    return False
                request_id = (await r.json())["request_id"]
                break
        while True:
            await asyncio.sleep(poll)
            async with session.get(f"{base}/v2/requests/status/{request_id}", headers=headers) as r:
                if r.status != 200:
                    continue
                status = await r.json()
            if status["status"] == "COMPLETED":
                async with session.get(status["output"]["media_url"][0]) as media:
                    (out / f"{job['id']}.mp4").write_bytes(await media.read())
                return True
            if status["status"] in ("FAILED", "ERROR"):
                return False


async def main() -> None:
    """Run the whole manifest."""
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("base_url")
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    gate = asyncio.Semaphore(args.concurrency)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            *(one_job(session, gate, args.base_url, j, args.out, args.poll) for j in jobs)
        )


if __name__ == "__main__":
    asyncio.run(main())
