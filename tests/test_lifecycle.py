"""``next_step`` over every (state, outcome) pair: the whole job lifecycle as one table."""

from __future__ import annotations

import itertools

import pytest

from pixazo_batch.errors import InvalidTransitionError
from pixazo_batch.lifecycle import (
    Accepted,
    Action,
    AnswerLost,
    CallbackNamed,
    Declined,
    Downloaded,
    DownloadFailed,
    Hinted,
    Interrupted,
    Listed,
    MediaRefreshed,
    NoCallback,
    NotSent,
    OnWire,
    OperatorAbandoned,
    OperatorFoundRequest,
    OperatorNotSent,
    Outcome,
    Refused,
    Rejected,
    RemoteEnded,
    Resumed,
    RunFlags,
    Stalled,
    TakenElsewhere,
    UnknownRequest,
    next_step,
)
from pixazo_batch.models import ALLOWED_TRANSITIONS, JobState, RemoteStatus

P, SG, U, SD, C, D, F, E = (
    JobState.PENDING,
    JobState.SUBMITTING,
    JobState.UNCERTAIN,
    JobState.SUBMITTED,
    JobState.COMPLETED,
    JobState.DOWNLOADED,
    JobState.FAILED,
    JobState.ERRORED,
)
SUBMIT, SEND, RETRY, POLL, AWAIT, DOWNLOAD, REST = (
    Action.SUBMIT,
    Action.SEND,
    Action.RETRY,
    Action.POLL,
    Action.AWAIT_CALLBACK,
    Action.DOWNLOAD,
    Action.REST,
)

#: every outcome the stages can report, by a short name, in the variants that decide differently
OUTCOMES: dict[str, Outcome] = {
    "listed": Listed(RunFlags(), attempts_left=True),
    "listed, no attempts left": Listed(RunFlags(), attempts_left=False),
    "listed --resubmit-uncertain": Listed(RunFlags(resubmit_uncertain=True), attempts_left=True),
    "listed --abandon-uncertain": Listed(RunFlags(abandon_uncertain=True), attempts_left=True),
    "listed --retry-failed": Listed(RunFlags(retry_failed=True), attempts_left=True),
    "resumed": Resumed(),
    "resumed, file gone": Resumed(file_present=False),
    "interrupted": Interrupted(),
    "on wire": OnWire(),
    "not sent, retry": NotSent("refused", retry=True),
    "not sent, stop": NotSent("stopping", retry=False),
    "taken elsewhere": TakenElsewhere("another worker holds it"),
    "accepted": Accepted("r-1"),
    "answer lost": AnswerLost("504"),
    "answer lost, callbacks": AnswerLost("504", callbacks=True),
    "rejected": Rejected("400"),
    "refused, attempts left": Refused("500", attempts_left=True),
    "refused, last attempt": Refused("500", attempts_left=False),
    "declined, retry": Declined("429", retry=True),
    "declined, stop": Declined("402", retry=False),
    "completed": RemoteEnded(RemoteStatus.COMPLETED, "https://cdn/x.mp4", None, True),
    "completed, no media": RemoteEnded(RemoteStatus.COMPLETED, None, None, True),
    "failed": RemoteEnded(RemoteStatus.FAILED, None, "moderated", True),
    "error, attempts left": RemoteEnded(RemoteStatus.ERROR, None, "timeout", True),
    "error, last attempt": RemoteEnded(RemoteStatus.ERROR, None, "timeout", False),
    "stalled": Stalled("deadline"),
    "unknown request": UnknownRequest("404"),
    "callback named": CallbackNamed("r-2"),
    "hinted": Hinted(),
    "no callback": NoCallback(),
    "downloaded": Downloaded(10, "ab"),
    "media refreshed": MediaRefreshed("https://cdn/y.mp4"),
    "download failed, tries left": DownloadFailed("reset", tries_left=True),
    "download failed, last try": DownloadFailed("reset", tries_left=False),
    "operator found request": OperatorFoundRequest("r-3"),
    "operator: not sent": OperatorNotSent(),
    "operator abandoned": OperatorAbandoned(),
}

#: (state, outcome) -> (next state, action); every pair not listed is refused
TABLE: dict[tuple[JobState, str], tuple[JobState, Action]] = {
    # the manifest lists the job
    (P, "listed"): (P, SUBMIT),
    (P, "listed, no attempts left"): (P, SUBMIT),
    (P, "listed --resubmit-uncertain"): (P, SUBMIT),
    (P, "listed --abandon-uncertain"): (P, SUBMIT),
    (P, "listed --retry-failed"): (P, SUBMIT),
    (U, "listed"): (U, REST),
    (U, "listed, no attempts left"): (U, REST),
    (U, "listed --resubmit-uncertain"): (P, SUBMIT),
    (U, "listed --abandon-uncertain"): (F, REST),
    (U, "listed --retry-failed"): (U, REST),
    (F, "listed"): (F, REST),
    (F, "listed, no attempts left"): (F, REST),
    (F, "listed --resubmit-uncertain"): (F, REST),
    (F, "listed --abandon-uncertain"): (F, REST),
    (F, "listed --retry-failed"): (P, SUBMIT),
    (E, "listed"): (E, SUBMIT),
    (E, "listed, no attempts left"): (F, REST),
    (E, "listed --resubmit-uncertain"): (E, SUBMIT),
    (E, "listed --abandon-uncertain"): (E, SUBMIT),
    (E, "listed --retry-failed"): (E, SUBMIT),
    **{
        (s, name): (s, REST)
        for s in (SG, SD, C, D)
        for name in OUTCOMES
        if name.startswith("listed")
    },
    # paid-for work found in the state file
    (SD, "resumed"): (SD, POLL),
    (SD, "resumed, file gone"): (SD, POLL),
    (C, "resumed"): (C, DOWNLOAD),
    (C, "resumed, file gone"): (C, DOWNLOAD),
    (D, "resumed"): (D, REST),
    (D, "resumed, file gone"): (C, DOWNLOAD),
    (SG, "interrupted"): (U, REST),
    (U, "hinted"): (U, AWAIT),
    # the submitter
    (P, "on wire"): (SG, SEND),
    (E, "on wire"): (SG, SEND),
    (P, "not sent, retry"): (P, RETRY),
    (P, "not sent, stop"): (P, REST),
    (E, "not sent, retry"): (E, RETRY),
    (E, "not sent, stop"): (E, REST),
    (SG, "accepted"): (SD, POLL),
    (SG, "answer lost"): (U, REST),
    (SG, "answer lost, callbacks"): (U, AWAIT),
    (SG, "rejected"): (F, REST),
    (SG, "refused, attempts left"): (P, RETRY),
    (SG, "refused, last attempt"): (F, REST),
    (SG, "declined, retry"): (P, RETRY),
    (SG, "declined, stop"): (P, REST),
    # another worker of the fleet holds the job: left where it is, whatever its state
    **{(s, "taken elsewhere"): (s, REST) for s in JobState},
    # the poller
    (SD, "completed"): (C, DOWNLOAD),
    (SD, "completed, no media"): (F, REST),
    (SD, "failed"): (F, REST),
    (SD, "error, attempts left"): (E, SUBMIT),
    (SD, "error, last attempt"): (F, REST),
    (SD, "stalled"): (SD, REST),
    (SD, "unknown request"): (F, REST),
    (U, "callback named"): (SD, POLL),
    (U, "no callback"): (U, REST),
    # the downloader
    (C, "downloaded"): (D, REST),
    (C, "media refreshed"): (C, RETRY),
    (C, "download failed, tries left"): (C, RETRY),
    (C, "download failed, last try"): (C, REST),
    # the operator
    (U, "operator found request"): (SD, REST),
    (U, "operator: not sent"): (P, REST),
    (U, "operator abandoned"): (F, REST),
}

PAIRS = list(itertools.product(JobState, OUTCOMES))


@pytest.mark.parametrize(("state", "name"), PAIRS, ids=[f"{s.value}-{n}" for s, n in PAIRS])
def test_next_step_of_every_state_and_outcome(state: JobState, name: str) -> None:
    outcome = OUTCOMES[name]
    expected = TABLE.get((state, name))
    if expected is None:
        with pytest.raises(InvalidTransitionError):
            next_step(state, outcome)
        return
    step = next_step(state, outcome)
    assert (step.state, step.action) == expected
    if step.state is not state:
        assert step.state in ALLOWED_TRANSITIONS[state], "the store would refuse this step"


def test_the_table_names_only_known_outcomes() -> None:
    assert {name for _, name in TABLE} <= set(OUTCOMES)


def test_every_state_change_the_store_allows_is_reachable() -> None:
    reached = {
        (state, next_step(state, OUTCOMES[name]).state)
        for (state, name) in TABLE
        if next_step(state, OUTCOMES[name]).state is not state
    }
    allowed = {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets if a is not b}
    assert reached == allowed


def test_a_step_that_fails_or_holds_a_job_says_why() -> None:
    for (state, name), (target, _) in TABLE.items():
        if target in (F, U) and target is not state:
            assert next_step(state, OUTCOMES[name]).reason, (state, name)
