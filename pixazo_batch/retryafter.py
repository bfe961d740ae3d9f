"""How long a gateway answer asks us to wait: ``Retry-After`` in any form, and quota messages."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?) seconds?", re.IGNORECASE)
_REPLENISHED = re.compile(r"replenished in (?:(\d+)\.)?(\d+):(\d+):(\d+)", re.IGNORECASE)


def parse_retry_after(
    header: str | None, body: str = "", *, now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds, HTTP date or ISO-8601 timestamp),
    else from the API front's "Try again in N seconds" body; None when neither says."""
    wall = time.time() if now is None else now
    if header:
        value = header.strip()
        try:
            seconds = float(value)
        except ValueError:
            pass
        else:
            return max(0.0, seconds) if math.isfinite(seconds) else None
        moment: datetime | None = None
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                moment = None
        if moment is not None:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return max(0.0, moment.timestamp() - wall)
    match = _TRY_AGAIN.search(body[:10_000])
    return float(match.group(1)) if match else None


def quota_wait(message: str) -> float | None:
    """Seconds until a quota returns, from "Quota will be replenished in [d.]hh:mm:ss"."""
    match = _REPLENISHED.search(message)
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
