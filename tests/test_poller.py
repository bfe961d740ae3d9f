"""How the poller learns completion times from what the gateway reports."""

from __future__ import annotations

import pytest

from pixazo_batch.models import StatusResponse
from pixazo_batch.poller import _time_to_finish


def finished(created_at: str, completed_at: str) -> StatusResponse:
    return StatusResponse.model_validate(
        {
            "request_id": "r",
            "status": "COMPLETED",
            "created_at": created_at,
            "completed_at": completed_at,
        }
    )


def test_whole_second_stamps_are_read_as_the_middle_of_their_second() -> None:
    # The API documentation's webhook example: created 13:17:32.110, completed "13:19:23".
    status = finished("2026-05-22T13:17:32.110Z", "2026-05-22 13:19:23")
    assert _time_to_finish(status, elapsed=300.0, last_miss=None) == pytest.approx(111.39)


def test_finer_stamps_are_taken_as_they_are() -> None:
    status = finished("2026-05-22T13:17:32.110Z", "2026-05-22T13:19:23.250Z")
    assert _time_to_finish(status, elapsed=300.0, last_miss=None) == pytest.approx(111.14)


def test_without_stamps_polls_only_bracket_the_end() -> None:
    status = StatusResponse.model_validate({"request_id": "r", "status": "COMPLETED"})
    assert _time_to_finish(status, elapsed=40.0, last_miss=30.0) == 35.0
    assert _time_to_finish(status, elapsed=40.0, last_miss=None) == 32.0
