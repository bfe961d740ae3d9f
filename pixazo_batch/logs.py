"""structlog set-up: JSON lines off a terminal (as under cron), readable lines on one, and a
processor that removes secrets from every event before it is rendered."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

import structlog
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


def configure_logging(
    *,
    secrets: Iterable[str] = (),
    level: str = "info",
    json_lines: bool | None = None,
    stream: TextIO | None = None,
) -> None:
    """Route all logs to ``stream`` (stderr by default), JSON lines unless it is a terminal."""
    sink = stream or sys.stderr
    if json_lines is None:
        json_lines = not sink.isatty()
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
        logger_factory=structlog.PrintLoggerFactory(file=sink),
        cache_logger_on_first_use=False,
    )
