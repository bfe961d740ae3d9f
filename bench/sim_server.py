"""Run the simulator in its own process so benchmarks measure the engine alone.

Usage: ``python bench/sim_server.py --scenario fast --key bench --set '{"media_bytes": 4096}'``
(``--journal PATH``: every accepted job's timeline is appended to that file). Prints
``gateway URL`` and ``media URL`` lines when ready, then serves until killed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import anyio

from pixazo_batch.sim import Simulator, scenario_named


def main() -> None:
    """Parse the scenario and its overrides, then serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", default="fast")
    parser.add_argument("--key", default="bench")
    parser.add_argument("--time-scale", type=float)
    parser.add_argument("--set", default="{}", help="JSON object of Scenario fields to override")
    parser.add_argument("--journal", type=Path, help="where to append each accepted job")
    args = parser.parse_args()
    overrides: dict[str, Any] = json.loads(args.set)
    for name, value in list(overrides.items()):
        if isinstance(value, list):
            overrides[name] = tuple(value)
    scenario = scenario_named(args.scenario, time_scale=args.time_scale)
    scenario = dataclasses.replace(scenario, keys=frozenset({args.key}), **overrides)

    async def serve() -> None:
        async with Simulator(scenario, journal=args.journal) as sim:
            print(f"gateway {sim.base_url}", flush=True)
            print(f"media {sim.media_url}", flush=True)
            await anyio.sleep_forever()

    anyio.run(serve)


if __name__ == "__main__":
    main()
