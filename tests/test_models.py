"""API payload models: defaults, hashing, both timestamp formats, every error shape."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime

from pixazo_batch.models import (
    AspectRatio,
    Duration,
    ErrorBody,
    GenerationRequest,
    RemoteStatus,
    Resolution,
    StatusResponse,
)

#: texts whose JSON needs escapes of every kind: quotes, backslashes, control characters,
#: non-ASCII, characters beyond the basic plane, a lone surrogate, the separators themselves
AWKWARD_TEXTS = [
    "a tree",
    'say "cheese" \\ or \\n',
    "tab\there\nnewline\r\x00\x1f\x7f",
    "caf\u00e9 \u65e5\u672c \U0001f3a5 \u2028\u2029",
    "lone \ud800 surrogate",
    '{"prompt":"x"},:',
    "",
]


def test_request_defaults_follow_the_documentation() -> None:
    request = GenerationRequest(prompt="a tree", image_url="https://x.example/a.jpg")
    assert request.model_dump(mode="json") == {
        "prompt": "a tree",
        "image_url": "https://x.example/a.jpg",
        "end_image_url": "",
        "aspect_ratio": "16:9",
        "loop": False,
        "resolution": "540p",
        "duration": "5s",
    }
    assert request.price_cents == 20


def test_nine_seconds_cost_36_cents_at_every_resolution() -> None:
    for resolution in ("540p", "720p", "1080p"):
        request = GenerationRequest.model_validate(
            {
                "prompt": "p",
                "image_url": "https://x/a.jpg",
                "duration": "9s",
                "resolution": resolution,
            }
        )
        assert request.price_cents == 36


def test_request_hash_ignores_spelling_of_defaults() -> None:
    short = GenerationRequest(prompt="a tree", image_url="https://x.example/a.jpg")
    explicit = GenerationRequest.model_validate(
        {
            "prompt": "a tree",
            "image_url": "https://x.example/a.jpg",
            "resolution": "540p",
            "loop": False,
        }
    )
    other = GenerationRequest(prompt="a tree!", image_url="https://x.example/a.jpg")
    assert short.request_hash() == explicit.request_hash()
    assert short.request_hash() != other.request_hash()


def test_canonical_json_is_what_json_dumps_writes_sorted_and_compact() -> None:
    # Every recorded request_hash was made from json.dumps's bytes: a faster writer must keep
    # them, or a job recorded earlier would look like a changed request.
    kinds = (list(AspectRatio), [True, False], list(Resolution), list(Duration))
    fields = itertools.product(AWKWARD_TEXTS, AWKWARD_TEXTS, *kinds)
    for prompt, url, aspect_ratio, loop, resolution, duration in fields:
        request = GenerationRequest.model_construct(
            prompt=prompt, image_url="https://x.example/" + url, end_image_url=url,
            aspect_ratio=aspect_ratio, loop=loop, resolution=resolution, duration=duration,
        )  # fmt: skip
        written = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        assert request.canonical_json() == written
    request = GenerationRequest(prompt="a tree", image_url="https://x.example/a.jpg")
    assert (
        request.request_hash()
        == hashlib.sha256(
            b'{"aspect_ratio":"16:9","duration":"5s","end_image_url":"","image_url":'
            b'"https://x.example/a.jpg","loop":false,"prompt":"a tree","resolution":"540p"}'
        ).hexdigest()
    )


def test_status_parses_both_timestamp_formats_as_utc() -> None:
    status = StatusResponse.model_validate(
        {
            "request_id": "r1",
            "status": "COMPLETED",
            "model_id": "m",
            "error": None,
            "output": {"media_url": ["https://cdn/x.mp4"], "media_type": "video/mp4"},
            "created_at": "2026-05-22T13:17:32.110Z",
            "updated_at": "2026-05-22 13:19:23",
            "completed_at": "2026-05-22 13:19:23",
        }
    )
    assert status.created_at == datetime(2026, 5, 22, 13, 17, 32, 110000, tzinfo=UTC)
    assert status.completed_at == datetime(2026, 5, 22, 13, 19, 23, tzinfo=UTC)
    assert status.media_url == "https://cdn/x.mp4"
    assert status.status.is_terminal


def test_error_status_has_no_output() -> None:
    status = StatusResponse.model_validate(
        {"request_id": "r", "status": "ERROR", "error": "Description of the error", "output": None}
    )
    assert status.status is RemoteStatus.ERROR
    assert status.media_url is None
    assert not RemoteStatus.PROCESSING.is_terminal


def test_error_bodies_in_every_shape() -> None:
    service = ErrorBody.from_text('{"error": "Insufficient Balance", "message": "Your wallet..."}')
    front = ErrorBody.from_text(
        '{"statusCode": 500, "message": "Internal server error", "activityId": "a"}'
    )
    plain = ErrorBody.from_text("Bad Gateway")
    odd = ErrorBody.from_text("[1, 2]")
    assert service.text == "Insufficient Balance: Your wallet..." and not service.from_api_front
    assert front.status_code == 500 and front.from_api_front
    assert plain.message == "Bad Gateway" and not plain.from_api_front
    assert odd.message == "[1, 2]"
