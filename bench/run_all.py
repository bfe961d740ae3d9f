"""``make bench``: every benchmark with defaults that finish in a few minutes on 2 cores.

Pass ``--full`` for the sizes the targets are stated at (20,000 jobs, 1,000,000 lines).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Run each benchmark script in turn; their tables go to stdout."""
    full = "--full" in sys.argv
    runs = [
        [
            "overhead.py",
            "--jobs",
            "20000" if full else "2000",
            "--waiting-jobs",
            "20000" if full else "3000",
            "--validate-lines",
            "1000000" if full else "200000",
        ],
        ["requests_per_job.py", "--jobs", "100" if full else "40"],
        ["rate_limited.py", "--jobs", "400" if full else "200"],
        ["download.py", "--files", "20", "--mb", "100" if full else "20"],
        ["resume.py", "--jobs", "100000" if full else "20000"],
        ["hostile.py", "--line-mb", "100" if full else "20"],
        ["first_night.py", "--jobs", "30"],
        ["bucket.py", "--jobs", "20", "--mb", "100" if full else "20"],
        [
            "fleet.py",
            "--jobs",
            "120" if full else "60",
            "--videos",
            "24" if full else "12",
            "--pairs",
            "3" if full else "1",
        ],
        ["distant_db.py", "--jobs", "200" if full else "100"],
        ["register.py", "--lines", "1000000" if full else "200000"],
    ]
    if shutil.which("strace") is not None:
        runs.append(["slow_disk.py", "--jobs", "1000" if full else "300"])
    for script, *args in runs:
        subprocess.run([sys.executable, str(HERE / script), *args], check=True)


if __name__ == "__main__":
    main()
