"""The one exception tree of pixazo-batch; third-party errors are translated into it at the edge.

::

    PixazoBatchError
    ├── UsageError                  bad flags, config or manifest (exit 2)
    │   └── ManifestError           the manifest cannot be used at all, or --strict saw a bad line
    ├── StateError                  the state file refuses an operation
    │   ├── StateLockedError        another run holds the state file (exit 75)
    │   ├── StateWriteError         the disk refused a write (full, failing): resume later (exit 3)
    │   └── InvalidTransitionError  a state change DESIGN does not allow (a bug, never expected)
    └── GatewayError                talking to the gateway went wrong
        ├── NotSentError            never left (DNS, refused, TLS handshake): safe to retry
        ├── AnswerLostError         the request may have arrived (timeout, reset, 502/504, the API
        │                           front's 5xx): a submit may have been accepted and charged
        └── HttpStatusError         the gateway answered with an error status
            ├── AuthRefusedError    401, or a 403 not about quota (exit 4)
            ├── QuotaExhaustedError 403 "Out of call volume quota" (exit 3, temporary)
            └── BalanceError        402 insufficient balance (exit 3)

``RateLimited`` answers (429) never escape the gateway client: it waits them out.
"""

from __future__ import annotations

from pixazo_batch.models import ErrorBody

EXIT_OK = 0
EXIT_FAILED_JOBS = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_AUTH = 4
EXIT_LOCKED = 75


class PixazoBatchError(Exception):
    """Root of every error pixazo-batch raises on purpose."""

    exit_code = EXIT_USAGE


class UsageError(PixazoBatchError):
    """The command line, configuration or manifest cannot be used as given."""


class ManifestError(UsageError):
    """The manifest cannot be read, or ``--strict`` refused a bad line."""


class StateError(PixazoBatchError):
    """The state file refuses an operation."""


class StateLockedError(StateError):
    """Another run holds the state file's lock."""

    exit_code = EXIT_LOCKED


class StateWriteError(StateError):
    """The disk refused a write to the state file; nothing of that transaction was kept."""

    exit_code = EXIT_INCOMPLETE


class InvalidTransitionError(StateError):
    """A job state change that DESIGN section 3 does not allow."""


class GatewayError(PixazoBatchError):
    """Talking to the gateway went wrong."""

    exit_code = EXIT_INCOMPLETE


class NotSentError(GatewayError):
    """The request never left this machine; retrying cannot cause a second charge."""


class AnswerLostError(GatewayError):
    """The request may have reached the service; its outcome is unknown."""


class HttpStatusError(GatewayError):
    """The gateway answered with an error status."""

    def __init__(self, status: int, body: ErrorBody, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body.text}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class AuthRefusedError(HttpStatusError):
    """The key was refused (401) or the key may not use this API (403)."""

    exit_code = EXIT_AUTH


class QuotaExhaustedError(HttpStatusError):
    """The subscription's call quota is used up until it is replenished."""

    def __str__(self) -> str:
        when = "" if self.retry_after is None else f" (returns in about {self.retry_after:.0f} s)"
        return super().__str__() + when


class BalanceError(HttpStatusError):
    """The wallet cannot pay for another job (402)."""
