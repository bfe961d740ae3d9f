"""The operator's view: the live display in a real pseudo-terminal, human output on a terminal
and JSON off one, and the command line's conventions (one line, never a traceback)."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import job_line, write_manifest
from tests.test_cli import cli_env, run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BAR = "━"
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d \[(debug|info|warning|error)")


def in_terminal(*args: str, columns: int = 120, timeout: float = 120) -> tuple[int, str]:
    """Run the command line with a pseudo-terminal for its stdin, stdout and stderr; returns the
    exit code and everything it wrote, with ANSI sequences removed."""
    controller, terminal = pty.openpty()
    env = cli_env(COLUMNS=str(columns), LINES="40", TERM="xterm-256color")
    process = subprocess.Popen(
        [sys.executable, "-m", "pixazo_batch", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        close_fds=True,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError as exc:  # EIO once the child has closed its side
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    code = process.wait(timeout=timeout)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def lines_of(text: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def test_the_live_display_keeps_logs_above_it_and_counts_the_whole_manifest(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(60)])
    code, text = in_terminal(
        "run", str(manifest), "--out", str(tmp_path / "out"), "--sandbox",
        "--sandbox-scenario", "fast",
    )  # fmt: skip
    lines = lines_of(text)
    bars = [line for line in lines if BAR in line]
    assert code == 0, text[-3000:]
    assert bars, "the display was drawn"
    assert all(re.search(r" \d+/60\s*$", line) for line in bars), "every bar counts out of 60"
    assert any(re.match(r"downloaded .* 60/60\s*$", line) for line in bars)
    assert not [line for line in bars if LOG_LINE.search(line)], "no log text inside the display"
    assert sum(bool(LOG_LINE.search(line)) for line in lines) >= 60, "the logs were shown"
    assert "60 jobs: 60 downloaded. $12.00 committed, $12.00 spent." in text
    assert "Review page:" in text


def test_validate_and_status_speak_to_a_person_on_a_terminal_and_json_on_request(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    code, _ = in_terminal("run", "jobs.example.jsonl", "--out", str(out), "--sandbox", "--quiet")
    assert code == 0
    _, validated = in_terminal("validate", "jobs.example.jsonl")
    _, status = in_terminal("status", "--out", str(out))
    _, as_json = in_terminal("status", "--out", str(out), "--json")
    _, report = in_terminal("report", "--out", str(out))
    assert "6 jobs, price $1.36" in validated
    assert "6 jobs" in status and "$1.36 committed, $1.36 spent." in status
    assert "Last run:" in status
    assert json.loads(lines_of(as_json)[-1])["jobs"] == 6
    assert "tree-01" in report and "downloaded" in report and "{" not in report


def test_off_a_terminal_stdout_is_json_and_stderr_only_json_lines(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0), "{broken"])
    result = run_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--sandbox")
    assert result.returncode == 2
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    events = [json.loads(line) for line in result.stderr.splitlines()]
    issues = [event for event in events if event["event"] == "manifest_issue"]
    assert summary["jobs"] == 1 and summary["problems"] == 1
    (issue,) = issues
    assert issue["problem"].startswith(f"{manifest}:2: (line): invalid JSON: ")


def test_shared_options_go_before_or_after_the_command_and_version_is_known(
    tmp_path: Path,
) -> None:
    after = run_cli("validate", "jobs.example.jsonl", "--quiet", "--json")
    before = run_cli("--quiet", "--json", "validate", "jobs.example.jsonl")
    version = run_cli("--version")
    assert after.returncode == before.returncode == version.returncode == 0
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert re.fullmatch(r"pixazo-batch \d+\.\d+\.\d+\n", version.stdout)


def test_every_option_shows_its_metavar_and_choices() -> None:
    help_text = " ".join(run_cli("run", "--help").stdout.split())
    assert "--sandbox-scenario SCENARIO" in help_text
    assert "demo, fast, realistic, hostile, broke" in help_text
    assert "--webhook-mode MODE" in help_text and "terminal or sync" in help_text
    assert "--max-in-flight N" in help_text and "MAX_IN_FLIGHT" not in help_text
    assert "(no cap)" in help_text.split("--max-spend USD")[-1].split("--")[0]
    assert "(no cap)" not in help_text.split("--webhook-url URL")[-1].split("--")[0]
    assert "usage: pixazo-batch run" in help_text and "--out DIR" in help_text


def test_a_closed_pipe_ends_quietly_and_a_full_disk_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("run", "jobs.example.jsonl", "--out", str(out), "--sandbox").returncode == 0
    command = [sys.executable, "-m", "pixazo_batch", "report", "--out", str(out)]
    piped = " ".join(command) + " | head -1"
    head = subprocess.run(
        piped, shell=True, capture_output=True, text=True, env=cli_env(), check=False
    )
    with open("/dev/full", "w", encoding="utf-8") as full:
        filled = subprocess.run(
            command, stdout=full, stderr=subprocess.PIPE, text=True, check=False
        )
    assert head.stderr == "" and json.loads(head.stdout)["id"]
    assert filled.returncode == 2
    assert filled.stderr == "pixazo-batch: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_output_folder_that_cannot_be_one_is_one_line(tmp_path: Path, where: str) -> None:
    target = tmp_path / "a-file" if where == "file" else Path("/proc/pixazo-batch-test")
    if where == "file":
        target.write_text("not a folder")
    result = run_cli(
        "run", "jobs.example.jsonl", "--out", str(target), "--sandbox",
        env=cli_env(PIXAZO_API_KEY="k"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"pixazo-batch: --out {target}")


def test_simulate_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("simulate", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.startswith(f"pixazo-batch: --port {port}: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    result = run_cli(
        "run", "jobs.example.jsonl", "--out", str(tmp_path / "o"),
        env=cli_env(PIXAZO_API_KEY="k", PIXAZO_MAX_SPEND="abc"),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "pixazo-batch: PIXAZO_MAX_SPEND: Input should be a valid decimal\n"
