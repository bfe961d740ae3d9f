"""The README's crontab line and systemd units work as written (as far as can be checked here)."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

from pixazo_batch.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def parses_as_a_run(words: list[str]) -> None:
    program = words.index(next(w for w in words if w.endswith("/pixazo-batch")))
    args = build_parser().parse_args(words[program + 1 :])
    assert args.command == "run"
    assert args.out_dir is not None


def test_crontab_line_has_five_valid_time_fields_and_a_valid_command() -> None:
    (block,) = fenced("crontab")
    (line,) = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    fields = line.split(maxsplit=5)
    assert all(CRON_FIELD.match(field) for field in fields[:5]), fields[:5]
    command = shlex.split(fields[5])
    run = command[command.index("&&") + 1 :]
    redirect = next(i for i, word in enumerate(run) if word in (">", ">>", "2>", "2>>"))
    parses_as_a_run(run[:redirect])
    assert "2>>" in command and ">>" in command, "logs and summary are kept"


def test_systemd_service_and_timer_are_well_formed() -> None:
    units = {}
    for block in fenced("ini"):
        name = block.splitlines()[0].removeprefix("# ").rsplit("/", 1)[-1]
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(block)
        units[name] = parser
    service, timer = units["pixazo-batch.service"], units["pixazo-batch.timer"]
    assert service["Service"]["Type"] == "oneshot"
    assert "3" in service["Service"]["SuccessExitStatus"].split(), "exit 3 means resume later"
    parses_as_a_run(shlex.split(service["Service"]["ExecStart"]))
    assert timer["Timer"]["OnCalendar"]
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_readme_shows_the_two_commands() -> None:
    assert "make demo" in README
    assert "make test" in README
