"""A faithful local stand-in for the Pixazo gateway and its media CDN.

For tests, the demo and the benchmarks.

Usage::

    async with Simulator(scenario_named("fast")) as sim:
        ...  # talk to sim.base_url with key sim.key; read sim.stats()

The engine never imports this package; only the CLI (``simulate``, ``--sandbox``), the tests and
the benchmarks do.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from aiohttp import web

from pixazo_batch.sim.gateway import GatewayApp
from pixazo_batch.sim.media import media_routes
from pixazo_batch.sim.scenario import SCENARIOS, Scenario, scenario_named
from pixazo_batch.sim.state import SimState
from pixazo_batch.sim.webhooks import WebhookSender

__all__ = ["SCENARIOS", "Scenario", "Simulator", "scenario_named"]


class Simulator:
    """Two loopback origins (gateway and media CDN) sharing one simulated service.

    Usage: ``async with Simulator(scenario, port=0) as sim: sim.base_url``.
    """

    def __init__(self, scenario: Scenario, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.scenario = scenario
        self.state = SimState(scenario)
        self.host = host
        self.port = port
        self.key = next(iter(sorted(scenario.keys)), "")
        self.base_url = ""
        self.media_url = ""
        self._webhooks = WebhookSender(self.state)
        self._runners: list[web.AppRunner] = []

    async def __aenter__(self) -> Self:
        media_app = web.Application()
        media_app.add_routes(media_routes(self.state))
        self.media_url = await self._serve(media_app, 0)
        gateway = GatewayApp(self.state, self._webhooks)
        gateway.media_base = self.media_url
        self._webhooks.media_url = gateway.media_url
        gateway_app = web.Application()
        gateway_app.add_routes(gateway.routes())
        self.base_url = await self._serve(gateway_app, self.port)
        return self

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self.host, port).start()
        host, bound_port = runner.addresses[0][:2]
        return f"http://{host}:{bound_port}"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._webhooks.close()
        for runner in reversed(self._runners):
            await runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """The same counters ``GET /_sim/stats`` serves."""
        return self.state.stats.as_json(self.state.book)
