"""structlog set-up: JSON lines off a terminal (as under cron), readable lines on one, and a
processor that removes secrets from every event before it is rendered."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

import structlog
from rich.console import Console
from rich.text import Text
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"


class SecretRedactor:
    """A structlog processor that replaces every occurrence of the given secrets."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        """Scrub the event's values (strings, and the text of anything else)."""
        if not self.secrets:
            return event
        for name, value in event.items():
            text = value if isinstance(value, str) else str(value)
            if any(secret in text for secret in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, REDACTED)
                event[name] = text
        return event


class _LibraryLogs(logging.Handler):
    """Sends what libraries log through the standard ``logging`` module (aiohttp's server, say)
    to structlog as one line, without a traceback: stderr stays JSON lines under cron."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        structlog.get_logger(record.name).log(
            record.levelno,
            "library_log",
            library=record.name,
            message=record.getMessage()[:500],
            error=None if error is None else f"{type(error).__name__}: {error}"[:500],
        )


class ConsoleSink:
    """A file-like sink that prints each rendered log line through a rich ``Console``, so a
    live display on the same console keeps its lines below the logs, never among them."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def write(self, text: str) -> None:
        """Print one rendered line (its ANSI colours kept)."""
        line = text.rstrip("\n")
        if line:
            self.console.print(Text.from_ansi(line), soft_wrap=True, highlight=False)

    def flush(self) -> None:
        """Nothing to flush: the console writes at once."""


def configure_logging(
    *,
    secrets: Iterable[str] = (),
    level: str = "info",
    json_lines: bool | None = None,
    stream: TextIO | None = None,
    console: Console | None = None,
) -> None:
    """Route all logs to ``stream`` (stderr by default), JSON lines unless it is a terminal;
    with ``console`` (a terminal shared with the progress display), readable lines through it.
    """
    stream = stream or sys.stderr
    sink: TextIO | ConsoleSink = stream
    if console is not None:
        sink, json_lines = ConsoleSink(console), False
    elif json_lines is None:
        json_lines = not stream.isatty()
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=console is not None and console.is_terminal)
    )
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso" if json_lines else "%H:%M:%S", utc=json_lines),
        SecretRedactor(secrets),
        structlog.processors.format_exc_info,
        renderer,
    ]
    root = logging.getLogger()
    if not any(isinstance(handler, _LibraryLogs) for handler in root.handlers):
        root.addHandler(_LibraryLogs())
    root.setLevel(logging.WARNING)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sink),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
