"""A job's whole lifecycle in one place: what each stage can report, and where that takes the job.

Stages do their I/O and report an **outcome**; ``next_step(state, outcome)`` decides, without
I/O, the job's next state and what happens to it next; the router (``router.py``) records the
transition and moves the job on. Runs, dry runs and ``resolve`` all decide through it, so they
never disagree. The states and the reasoning behind each step are in ``docs/design.md``,
section "Job lifecycle".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pixazo_batch.errors import InvalidTransitionError
from pixazo_batch.models import JobState, RemoteStatus
from pixazo_batch.mp4 import Mp4Info


class Action(StrEnum):
    """What happens to a job after a step."""

    #: queue it for the submitter
    SUBMIT = "submit"
    #: let the POST's bytes leave (the write-ahead ``submitting`` row is durable)
    SEND = "send"
    #: the stage that reported tries the job again, after a back-off
    RETRY = "retry"
    #: queue it for the poller
    POLL = "poll"
    #: queue it for the poller, which waits for a callback naming its request
    AWAIT_CALLBACK = "await_callback"
    #: queue it for the downloader
    DOWNLOAD = "download"
    #: nothing more this run (finished, held, stopped, or waiting for the next run)
    REST = "rest"


@dataclass(frozen=True, slots=True)
class Step:
    """The state a job moves to, what happens to it next, and the reason to record."""

    state: JobState
    action: Action
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RunFlags:
    """The operator's standing choices for jobs the manifest lists."""

    resubmit_uncertain: bool = False
    abandon_uncertain: bool = False
    retry_failed: bool = False


# --- outcomes: what the producer found --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """The manifest lists the job; the flags and its attempts so far decide what to do."""

    flags: RunFlags
    attempts_left: bool


@dataclass(frozen=True, slots=True)
class Resumed:
    """The state file holds the job with paid-for work (submitted, completed, downloaded)."""

    file_present: bool = True


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The job was found ``submitting``: a run died while its POST may have been on the wire."""


# --- outcomes: the submitter ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnWire:
    """The POST holds its rate token and connection; its bytes are about to leave."""


@dataclass(frozen=True, slots=True)
class NotSent:
    """The POST never left (run stopping, budget, connection refused); ``retry`` when it may go
    again this run."""

    reason: str
    retry: bool


@dataclass(frozen=True, slots=True)
class TakenElsewhere:
    """Another worker of the fleet holds the job (it claimed it first, or moved it on): this
    worker leaves it, wherever it is."""

    reason: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """202 with a request_id."""

    request_id: str
    polling_url: str | None = None


@dataclass(frozen=True, slots=True)
class AnswerLost:
    """The POST may have been accepted (no answer, or not the gateway's); ``callbacks`` when a
    webhook can still name its request."""

    reason: str
    callbacks: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """The gateway refused this job as written (a 400 naming it): never accepted."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The service refused the job for now (500 in its own shape); the attempt counts."""

    reason: str
    attempts_left: bool


@dataclass(frozen=True, slots=True)
class Declined:
    """The gateway answered "not accepted" for reasons not the job's (429, 503, 402, quota, a
    setting): the attempt does not count; ``retry`` when it may go again this run."""

    reason: str
    retry: bool


# --- outcomes: the poller ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteEnded:
    """The status endpoint (or a confirmed callback) reported a terminal status."""

    status: RemoteStatus
    media_url: str | None
    error: str | None
    attempts_left: bool


@dataclass(frozen=True, slots=True)
class Stalled:
    """No terminal status within the job deadline (or polls cannot go on this run)."""

    reason: str


@dataclass(frozen=True, slots=True)
class UnknownRequest:
    """The gateway answers 404 for the job's request_id."""

    reason: str


@dataclass(frozen=True, slots=True)
class CallbackNamed:
    """A callback named the uncertain job's request, and a status request confirmed it."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Hinted:
    """A callback named a request for the uncertain job (kept in the state file, unconfirmed)."""


@dataclass(frozen=True, slots=True)
class NoCallback:
    """No callback named the uncertain job's request in time."""


# --- outcomes: the downloader -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Downloaded:
    """The verified video is at its final path; ``mismatch`` says how it differs from the
    request (it is kept all the same: it is paid for)."""

    size: int
    sha256: str
    video: Mp4Info | None = None
    mismatch: str | None = None


@dataclass(frozen=True, slots=True)
class MediaRefreshed:
    """The media URL expired; the status endpoint gave a fresh one."""

    media_url: str


@dataclass(frozen=True, slots=True)
class DownloadFailed:
    """One download try failed; ``tries_left`` in this run."""

    reason: str
    tries_left: bool


# --- outcomes: the operator (``resolve``) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperatorFoundRequest:
    """The operator found the uncertain job's request (checked by one status request)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class OperatorNotSent:
    """The operator established that the uncertain job's POST never arrived."""


@dataclass(frozen=True, slots=True)
class OperatorAbandoned:
    """The operator gives the uncertain job up."""


Outcome = (
    Listed | Resumed | Interrupted | OnWire | NotSent | TakenElsewhere | Accepted | AnswerLost
    | Rejected | Refused
    | Declined | RemoteEnded | Stalled | UnknownRequest | CallbackNamed | Hinted | NoCallback
    | Downloaded | MediaRefreshed | DownloadFailed | OperatorFoundRequest | OperatorNotSent
    | OperatorAbandoned
)  # fmt: skip

_S = JobState
_A = Action
#: states from which a job may be sent (a remote ERROR is resubmitted without passing pending)
SENDABLE = (_S.PENDING, _S.ERRORED)
#: states in which a job the manifest lists may be sent, flags permitting (``_listed``)
OFFERABLE = (_S.PENDING, _S.UNCERTAIN, _S.FAILED, _S.ERRORED)


def next_step(state: JobState, outcome: Outcome) -> Step:  # noqa: PLR0912
    """Where ``outcome`` takes a job in ``state``.

    Raises:
        InvalidTransitionError: the outcome cannot happen to a job in that state.
    """
    match outcome:
        case TakenElsewhere(reason=reason):
            return Step(state, _A.REST, reason)
        case Listed(flags=flags, attempts_left=attempts_left):
            return _listed(state, flags, attempts_left=attempts_left)
        case Resumed(file_present=present) if state in (_S.SUBMITTED, _S.COMPLETED, _S.DOWNLOADED):
            if state is _S.SUBMITTED:
                return Step(state, _A.POLL)
            if state is _S.COMPLETED or not present:
                return Step(_S.COMPLETED, _A.DOWNLOAD)
            return Step(state, _A.REST)
        case Interrupted() if state is _S.SUBMITTING:
            return Step(_S.UNCERTAIN, _A.REST, "the run stopped while this job's POST was sent")
        case OnWire() if state in SENDABLE:
            return Step(_S.SUBMITTING, _A.SEND)
        case NotSent(reason=reason, retry=retry) if state in SENDABLE:
            return Step(state, _A.RETRY if retry else _A.REST, reason)
    if state is _S.SUBMITTING:
        return _answered(outcome)
    match outcome:
        case RemoteEnded() if state is _S.SUBMITTED:
            return _ended(outcome)
        case Stalled(reason=reason) if state is _S.SUBMITTED:
            return Step(state, _A.REST, reason)
        case UnknownRequest(reason=reason) if state is _S.SUBMITTED:
            return Step(_S.FAILED, _A.REST, reason)
        case Hinted() if state is _S.UNCERTAIN:
            return Step(state, _A.AWAIT_CALLBACK)
        case CallbackNamed() if state is _S.UNCERTAIN:
            return Step(_S.SUBMITTED, _A.POLL)
        case NoCallback() if state is _S.UNCERTAIN:
            return Step(state, _A.REST)
        case Downloaded() if state is _S.COMPLETED:
            return Step(_S.DOWNLOADED, _A.REST)
        case MediaRefreshed() if state is _S.COMPLETED:
            return Step(state, _A.RETRY)
        case DownloadFailed(reason=reason, tries_left=left) if state is _S.COMPLETED:
            return Step(state, _A.RETRY if left else _A.REST, reason)
        case OperatorFoundRequest() if state is _S.UNCERTAIN:
            return Step(_S.SUBMITTED, _A.REST, "request attached by resolve")
        case OperatorNotSent() if state is _S.UNCERTAIN:
            return Step(_S.PENDING, _A.REST, "not sent, said resolve")
        case OperatorAbandoned() if state is _S.UNCERTAIN:
            return Step(_S.FAILED, _A.REST, "abandoned by resolve")
    raise InvalidTransitionError(f"a job in state {state} cannot take {outcome!r}")


def _listed(state: JobState, flags: RunFlags, *, attempts_left: bool) -> Step:
    """A manifest job at the start of a run."""
    if state is _S.PENDING:
        return Step(state, _A.SUBMIT)
    if state is _S.UNCERTAIN and flags.resubmit_uncertain:
        return Step(_S.PENDING, _A.SUBMIT, "resubmitted by --resubmit-uncertain")
    if state is _S.UNCERTAIN and flags.abandon_uncertain:
        return Step(_S.FAILED, _A.REST, "abandoned by --abandon-uncertain")
    if state is _S.FAILED and flags.retry_failed:
        return Step(_S.PENDING, _A.SUBMIT, "retried by --retry-failed")
    if state is _S.ERRORED:
        if attempts_left:
            return Step(state, _A.SUBMIT)
        return Step(_S.FAILED, _A.REST, "remote ERROR on every attempt")
    # In flight, finished, or held: resuming paid-for work is the Resumed outcome's business.
    return Step(state, _A.REST)


def _answered(outcome: Outcome) -> Step:
    """What the POST's answer (or its absence) makes of a job in ``submitting``."""
    match outcome:
        case Accepted():
            return Step(_S.SUBMITTED, _A.POLL)
        case AnswerLost(reason=reason, callbacks=callbacks):
            return Step(_S.UNCERTAIN, _A.AWAIT_CALLBACK if callbacks else _A.REST, reason)
        case Rejected(reason=reason):
            return Step(_S.FAILED, _A.REST, reason)
        case Refused(reason=reason, attempts_left=True):
            return Step(_S.PENDING, _A.RETRY, reason)
        case Refused(reason=reason):
            return Step(_S.FAILED, _A.REST, reason)
        case Declined(reason=reason, retry=retry):
            return Step(_S.PENDING, _A.RETRY if retry else _A.REST, reason)
    raise InvalidTransitionError(f"a job in state submitting cannot take {outcome!r}")


def _ended(outcome: RemoteEnded) -> Step:
    """A terminal remote status for a submitted job."""
    if outcome.status is RemoteStatus.COMPLETED and outcome.media_url:
        return Step(_S.COMPLETED, _A.DOWNLOAD)
    if outcome.status is RemoteStatus.COMPLETED:
        return Step(_S.FAILED, _A.REST, outcome.error or "COMPLETED without a media URL")
    if outcome.status is RemoteStatus.FAILED:
        return Step(_S.FAILED, _A.REST, outcome.error or "FAILED")
    reason = outcome.error or "ERROR"
    if outcome.attempts_left:
        return Step(_S.ERRORED, _A.SUBMIT, reason)
    return Step(_S.FAILED, _A.REST, f"remote ERROR on every attempt: {reason}")
