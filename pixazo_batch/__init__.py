"""Batch image-to-video generation through the Pixazo gateway (Luma Ray 2 Flash).

Library use::

    import anyio
    from pathlib import Path
    from pydantic import SecretStr
    from pixazo_batch import Settings, run_batch

    async def nightly() -> int:
        settings = Settings(manifest=Path("jobs.jsonl"), out_dir=Path("out"),
                            api_key=SecretStr("..."), max_spend=20)
        summary = await run_batch(settings)
        return summary.exit_code

    anyio.run(nightly)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pixazo_batch.config import Settings, load_settings
    from pixazo_batch.engine import run_batch
    from pixazo_batch.errors import PixazoBatchError
    from pixazo_batch.models import GenerationRequest, JobSpec, JobState, RemoteStatus
    from pixazo_batch.summary import RunSummary

#: where each name of the library's interface lives: imported on first use, so a command that
#: does not talk to the gateway never loads the engine (nor aiohttp)
_HOMES = {
    "GenerationRequest": "pixazo_batch.models",
    "JobSpec": "pixazo_batch.models",
    "JobState": "pixazo_batch.models",
    "PixazoBatchError": "pixazo_batch.errors",
    "RemoteStatus": "pixazo_batch.models",
    "RunSummary": "pixazo_batch.summary",
    "Settings": "pixazo_batch.config",
    "load_settings": "pixazo_batch.config",
    "run_batch": "pixazo_batch.engine",
}

__all__ = [
    "GenerationRequest",
    "JobSpec",
    "JobState",
    "PixazoBatchError",
    "RemoteStatus",
    "RunSummary",
    "Settings",
    "load_settings",
    "run_batch",
]


def __getattr__(name: str) -> object:
    """The library's interface, each name imported from its module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pixazo_batch' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
