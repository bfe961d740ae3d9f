"""A faithful local stand-in for the Pixazo gateway and its media CDN.

For tests, the demo and the benchmarks.

Usage::

    async with Simulator(scenario_named("fast")) as sim:
        ...  # talk to sim.base_url with key sim.key; read sim.stats()

With ``journal=path`` it remembers every accepted job in that file and takes them back when it
starts again, as ``run --sandbox`` does so that an interrupted sandbox run can resume.

The engine never imports this package; only the CLI (``simulate``, ``--sandbox``), the tests and
the benchmarks do.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from pixazo_batch.sim.gateway import GatewayApp
from pixazo_batch.sim.images import ImageFetcher
from pixazo_batch.sim.media import media_routes
from pixazo_batch.sim.scenario import SCENARIOS, Scenario, scenario_named
from pixazo_batch.sim.state import SimState
from pixazo_batch.sim.webhooks import WebhookSender

__all__ = ["SCENARIOS", "Scenario", "Simulator", "scenario_named"]


class Simulator:
    """Two loopback origins (gateway and media CDN) sharing one simulated service.

    Usage: ``async with Simulator(scenario, port=0) as sim: sim.base_url``.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        journal: Path | None = None,
    ) -> None:
        self.scenario = scenario
        self.state = SimState(scenario, journal=journal)
        self.host = host
        self.port = port
        self.key = next(iter(sorted(scenario.keys)), "")
        self.base_url = ""
        self.media_url = ""
        self._webhooks = WebhookSender(self.state)
        self._images = ImageFetcher(self.state)
        self._gateway = GatewayApp(self.state, self._webhooks, self._images)
        self._media_runner: web.AppRunner | None = None
        self._gateway_runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        self.state.restore()
        await self.start_media()
        self._gateway.media_base = self.media_url
        self._webhooks.media_url = self._gateway.media_url
        try:
            await self.start_gateway()
        except BaseException:
            await self.stop_media()
            raise
        return self

    async def start_gateway(self) -> None:
        """Serve the gateway origin (again, after ``stop_gateway``, on the same port)."""
        gateway_app = web.Application()
        gateway_app.add_routes(self._gateway.routes())
        port = self.port if not self.base_url else int(self.base_url.rsplit(":", 1)[1])
        self._gateway_runner, self.base_url = await self._serve(gateway_app, port)

    async def stop_gateway(self) -> None:
        """An outage: the gateway origin closes every connection and refuses new ones until
        ``start_gateway``. Jobs, the wallet and the media origin are kept."""
        if self._gateway_runner is not None:
            await self._gateway_runner.cleanup()
            self._gateway_runner = None

    async def stop_media(self) -> None:
        """A CDN outage: the media origin closes every connection and refuses new ones until
        ``start_media``. Jobs and their videos are kept."""
        if self._media_runner is not None:
            await self._media_runner.cleanup()
            self._media_runner = None

    async def start_media(self) -> None:
        """Serve the media origin (again, after ``stop_media``, on the same port)."""
        media_app = web.Application()
        media_app.add_routes(media_routes(self.state))
        port = int(self.media_url.rsplit(":", 1)[1]) if self.media_url else 0
        self._media_runner, self.media_url = await self._serve(media_app, port)

    async def _serve(self, app: web.Application, port: int) -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, self.host, port).start()
        host, bound_port = runner.addresses[0][:2]
        return runner, f"http://{host}:{bound_port}"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._webhooks.close()
        await self._images.close()
        await self.stop_gateway()
        if self._media_runner is not None:
            await self._media_runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """The same counters ``GET /_sim/stats`` serves."""
        return self.state.stats.as_json(self.state.book)
