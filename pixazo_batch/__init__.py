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

from pixazo_batch.config import Settings, load_settings
from pixazo_batch.engine import run_batch
from pixazo_batch.errors import PixazoBatchError
from pixazo_batch.models import GenerationRequest, JobSpec, JobState, RemoteStatus
from pixazo_batch.summary import RunSummary

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
