"""Recording a transition: the one store call that writes what an outcome did to a job, for the
router (``router.py``) and ``resolve`` alike (``docs/design.md``, "Job lifecycle")."""

from __future__ import annotations

from pixazo_batch.errors import InvalidTransitionError
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import (
    Accepted,
    AnswerLost,
    CallbackNamed,
    Declined,
    Downloaded,
    Interrupted,
    Listed,
    MediaRefreshed,
    OperatorAbandoned,
    OperatorFoundRequest,
    OperatorNotSent,
    Outcome,
    Refused,
    Rejected,
    RemoteEnded,
    Resumed,
    Step,
    UnknownRequest,
)
from pixazo_batch.models import JobState
from pixazo_batch.state import StateStore


def record(store: StateStore, row: JobRow, step: Step, outcome: Outcome) -> None:  # noqa: PLR0912
    """Write the transition ``outcome`` causes, as one durable transaction (nothing when the
    step leaves the job where it is)."""
    job_id, reason = row.id, step.reason
    if step.state is row.state and not isinstance(outcome, MediaRefreshed):
        return
    match outcome:
        case Interrupted() | AnswerLost():
            store.submit_uncertain(job_id, reason or "answer lost")
        case Accepted(request_id=request_id, polling_url=polling_url):
            store.submit_accepted(job_id, request_id, polling_url)
        case CallbackNamed(request_id=request_id) | OperatorFoundRequest(request_id=request_id):
            store.submit_accepted(job_id, request_id, None)
        case Rejected() | Refused():
            store.submit_refused(job_id, reason or "refused", final=step.state is JobState.FAILED)
        case Declined():
            store.submit_withdrawn(job_id, reason or "declined")
        case RemoteEnded(status=status, media_url=media_url):
            media = media_url if step.state is JobState.COMPLETED else None
            store.remote_finished(
                job_id, step.state, remote_status=status.value, media_url=media, error=reason
            )
        case UnknownRequest():
            store.remote_finished(job_id, step.state, remote_status="NOT_FOUND", error=reason)
        case Downloaded(size=size, sha256=sha256, video=video, mismatch=mismatch):
            store.downloaded(job_id, size, sha256, video, mismatch)
        case MediaRefreshed(media_url=media_url):
            store.refresh_media(job_id, media_url)
        case Resumed():
            store.file_missing(job_id)
        case OperatorNotSent():
            store.not_sent(job_id, reason or "not sent")
        case Listed() | OperatorAbandoned():
            store.set_state(job_id, step.state, reason)
        case _:
            raise InvalidTransitionError(f"job {job_id!r}: nothing records {outcome!r}")
