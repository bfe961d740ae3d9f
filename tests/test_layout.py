"""Package boundaries: the engine never imports the simulator; the command line loads the
engine only for the commands that talk to the gateway."""

from __future__ import annotations

import subprocess
import sys


def test_engine_modules_do_not_import_the_simulator() -> None:
    code = (
        "import sys, pixazo_batch.engine, pixazo_batch.cli;"
        "leaked = [m for m in sys.modules if m.startswith('pixazo_batch.sim')];"
        "print(leaked); sys.exit(1 if leaked else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_the_command_line_loads_no_engine_until_a_command_talks_to_the_gateway() -> None:
    heavy = ("aiohttp", "pixazo_batch.engine", "concurrent.futures.process")  # pools: validate
    code = (
        "import sys, pixazo_batch.cli;"
        f"loaded = [m for m in {heavy!r} if m in sys.modules];"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
