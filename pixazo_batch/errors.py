"""The one exception tree of pixazo-batch, grouped by what the caller does next.

Third-party errors are translated into it once, at the edge (``gateway.py``, ``downloader.py``,
``state.py``). See ``docs/design.md`` section "Errors".

::

    PixazoBatchError
    ├── RunStopError                    the run cannot go on; ``exit_code`` says why
    │   ├── UsageError (2)             bad flags, settings or manifest
    │   │   ├── ManifestError          the manifest cannot be used, or --strict saw a bad line
    │   │   └── StateDamagedError      the state file is not a usable pixazo-batch state file
    │   ├── AuthRefusedError (4)       401, or a 403 not about quota
    │   ├── GatewayUnreachableError (3) no connection to the gateway for --outage-deadline
    │   └── StateError                 the state file refuses an operation
    │       ├── StateLockedError (75)  another run holds the state file
    │       ├── StateWriteError (3)    the disk refused a write: nothing of it was kept
    │       └── InvalidTransitionError a state change the lifecycle does not allow (a bug)
    ├── SubmitStopError                submit nothing more; finish what is in flight
    │   ├── BalanceError (3)           402 insufficient balance
    │   ├── QuotaExhaustedError (3)    403 "Out of call volume quota": temporary
    │   ├── BudgetReachedError (3)     --max-spend would be passed
    │   └── SettingsRefusedError (2)   a refusal every job would get ("Model not found", a header)
    └── RequestError                  one request went wrong; the stage retries or reports it
        ├── NotSentError               never left this machine: retrying cannot charge twice
        ├── AnswerLostError            may have reached the service: a submit may be charged
        ├── HttpStatusError            the gateway answered an error the caller handles
        └── MediaError                 one download try failed

``HttpStatusError`` subclasses and the stopping errors built from an answer carry ``status`` and
``body`` through ``GatewayAnswerError``.
"""

from __future__ import annotations

from pixazo_batch.models import ErrorBody

EXIT_OK = 0
EXIT_FAILED_JOBS = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_AUTH = 4
EXIT_DECIDE = 5
EXIT_LOCKED = 75

#: when several exit codes apply, the first in this order wins
EXIT_PRECEDENCE = (EXIT_AUTH, EXIT_DECIDE, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_FAILED_JOBS)


def worst_exit(codes: set[int]) -> int:
    """The exit code that wins among ``codes`` (0 when none applies)."""
    return next((code for code in EXIT_PRECEDENCE if code in codes), EXIT_OK)


class PixazoBatchError(Exception):
    """Root of every error pixazo-batch raises on purpose."""

    exit_code = EXIT_USAGE


class GatewayAnswerError(Exception):
    """Mixed into errors built from a gateway answer: its status, body and Retry-After."""

    def __init__(self, status: int, body: ErrorBody, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body.text}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


# --- the run cannot go on ----------------------------------------------------------------------


class RunStopError(PixazoBatchError):
    """Nothing more can be done this run; the exit code says why."""


class UsageError(RunStopError):
    """The command line, settings or manifest cannot be used as given."""


class ManifestError(UsageError):
    """The manifest cannot be read, or ``--strict`` refused a bad line."""


class StateDamagedError(UsageError):
    """The state file exists but is not a usable pixazo-batch state file."""


class AuthRefusedError(GatewayAnswerError, RunStopError):
    """The key was refused (401) or may not use this API (403)."""

    exit_code = EXIT_AUTH


class GatewayUnreachableError(RunStopError):
    """No connection to the gateway could be made for the whole outage deadline."""

    exit_code = EXIT_INCOMPLETE


class ServiceUnreachableError(RunStopError):
    """No connection to a service the downloads need (the output bucket, the media host)
    could be made for the whole outage deadline."""

    exit_code = EXIT_INCOMPLETE


class StateError(RunStopError):
    """The state file refuses an operation."""


class StateLockedError(StateError):
    """Another run holds the state file's lock."""

    exit_code = EXIT_LOCKED


class StateWriteError(StateError):
    """The disk refused a write to the state file; nothing of that transaction was kept."""

    exit_code = EXIT_INCOMPLETE


class InvalidTransitionError(StateError):
    """A job state change the lifecycle does not allow (a bug, never expected)."""


class WorkerFencedError(StateError):
    """The fleet took this worker for dead and gave its jobs to others: it must stop at once
    (its unfinished work goes on elsewhere)."""

    exit_code = EXIT_INCOMPLETE


class JobTakenError(PixazoBatchError):
    """Another worker of the fleet holds the job (it claimed it first)."""


class FleetFullError(PixazoBatchError):
    """The fleet has ``--max-in-flight`` jobs in flight: a submit must wait for one to end."""


# --- no more submissions -----------------------------------------------------------------------


class SubmitStopError(PixazoBatchError):
    """No job may be submitted any more this run; jobs in flight are still finished."""

    exit_code = EXIT_INCOMPLETE


class BalanceError(GatewayAnswerError, SubmitStopError):
    """The wallet cannot pay for another job (402)."""


class QuotaExhaustedError(GatewayAnswerError, SubmitStopError):
    """The subscription's call quota is used up until it is replenished."""

    def __str__(self) -> str:
        when = "" if self.retry_after is None else f" (returns in about {self.retry_after:.0f} s)"
        return super().__str__() + when


class BudgetReachedError(SubmitStopError):
    """Submitting the next job could take the committed spend past ``--max-spend``."""


class SettingsRefusedError(GatewayAnswerError, SubmitStopError):
    """The gateway refused something every job would send (the model, a header): fix the
    settings; no job is to blame."""

    exit_code = EXIT_USAGE


# --- one request went wrong --------------------------------------------------------------------


class RequestError(PixazoBatchError):
    """One request went wrong; the stage that sent it retries or reports an outcome."""

    exit_code = EXIT_INCOMPLETE


class NotSentError(RequestError):
    """The request never left this machine; retrying cannot cause a second charge."""


class AnswerLostError(RequestError):
    """The request may have reached the service; its outcome is unknown."""


class HttpStatusError(GatewayAnswerError, RequestError):
    """The gateway answered with an error status."""


class MediaError(RequestError):
    """One download try failed; the ``.part`` file is kept when it is still good. ``expired``:
    the media URL needs refreshing; ``final``: trying again this run would not help."""

    def __init__(
        self,
        message: str,
        *,
        discard_part: bool = False,
        expired: bool = False,
        final: bool = False,
    ) -> None:
        super().__init__(message)
        self.discard_part = discard_part
        self.expired = expired
        self.final = final
