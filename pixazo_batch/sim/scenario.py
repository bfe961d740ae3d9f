"""Scenario settings of the gateway simulator: every timing, limit and fault is a field here.

Durations are in seconds at full scale; ``time_scale`` multiplies every one of them, so a test can
run the realistic distributions a hundred times faster. Rates are probabilities in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

RetryAfterStyle = Literal["seconds", "http-date", "iso", "absent"]
#: answers to a submit from something in front of the gateway (the job was forwarded, and made)
ForeignAnswer = Literal["524-html", "503-html", "408", "2xx-no-id"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """How the simulated gateway behaves.

    Usage: ``Scenario(name="x", processing_median={"540p": 1.0}).scaled(0.01)``.
    """

    name: str = "custom"
    seed: int = 7
    #: the poll interval that suits this scenario's timings (``--sandbox`` uses it by default)
    poll_interval: float = 5.0
    time_scale: float = 1.0
    keys: frozenset[str] = frozenset({"sandbox"})
    #: keys that authenticate but are forbidden (403 that is not a quota message)
    forbidden_keys: frozenset[str] = frozenset()
    #: keys whose call quota is exhausted (403 with the APIM quota message and Retry-After)
    quota_keys: frozenset[str] = frozenset()

    # --- time -----------------------------------------------------------------------------
    slots: int = 10
    dispatch_delay: tuple[float, float] = (1.0, 5.0)
    processing_median: dict[str, float] = field(
        default_factory=lambda: {"540p": 35.0, "720p": 45.0, "1080p": 70.0}
    )
    processing_sigma: float = 0.35
    long_duration_factor: float = 1.7
    straggler_rate: float = 0.01
    straggler_range: tuple[float, float] = (180.0, 600.0)
    processing_cap: float = 900.0
    #: the gateway refreshes a job's status only on its own tick (0 = status is live)
    status_tick: tuple[float, float] = (10.0, 30.0)

    # --- outcomes and money -----------------------------------------------------------------
    failed_rate: float = 0.03
    error_rate: float = 0.02
    failed_is_charged: bool = True
    #: wallet in cents; None means unlimited
    balance_cents: int | None = None

    # --- rate limit (sliding window per key, shared by submit and status) --------------------
    rate_limit: int | None = None
    rate_window: float = 60.0
    retry_after: RetryAfterStyle = "seconds"
    #: a request arriving this soon after a 429 was sent was already on the wire (the client
    #: could not have known): it is not counted as a request inside the announced window
    retry_window_grace: float = 0.25

    # --- faults on the gateway -------------------------------------------------------------
    #: every submit answers the documented 400 "Model not found" (a model switched off)
    model_disabled: bool = False
    #: 500 in the service's own {error, message} shape; the job is not created
    submit_refused_rate: float = 0.0
    #: 504 / APIM 500 after ``lost_answer_delay``; the job IS created and charged
    submit_lost_answer_rate: float = 0.0
    lost_answer_delay: float = 10.0
    #: connection reset after the body was read; the job IS created and charged
    submit_reset_rate: float = 0.0
    #: APIM 500 with activityId on a status request
    status_error_rate: float = 0.0
    #: an answer from an intermediary instead of the gateway's (the job IS created and charged)
    submit_foreign_rate: float = 0.0
    submit_foreign_kind: ForeignAnswer = "524-html"
    #: how the 202's ``polling_url`` is written (a careless gateway may give a relative one)
    polling_url_form: Literal["absolute", "relative", "malformed"] = "absolute"
    #: how many requests in a row a fault lasts once it starts (a burst)
    fault_burst: int = 1
    #: extra latency added to every gateway answer
    response_delay: float = 0.0

    # --- media origin ----------------------------------------------------------------------
    #: bits per second of video, per resolution; None = use ``media_bytes``
    media_bitrate: dict[str, float] | None = field(
        default_factory=lambda: {"540p": 2.5e6, "720p": 5e6, "1080p": 9e6}
    )
    media_bytes: int = 64 * 1024
    media_size_jitter: float = 0.3
    #: a media body cut off half way (connection reset mid-body)
    media_truncate_rate: float = 0.0
    #: a 503 from the CDN instead of the body
    media_error_rate: float = 0.0
    #: ``matching``: each video is a clip of its request's aspect ratio and duration; ``fixed``:
    #: every video is the same 16:9, 5-second clip (a provider returning the wrong video)
    media_clip: Literal["matching", "fixed"] = "matching"
    #: a 200 carrying an HTML page instead of the video (a proxy or captive portal)
    media_not_mp4_rate: float = 0.0
    #: ``html``: a page; ``ftyp-html``: an ``ftyp`` box followed by a page (fools an 8-byte check)
    media_not_mp4_kind: Literal["html", "ftyp-html"] = "html"
    #: a body that stops half way for ``media_stall_seconds``, then goes on
    media_stall_rate: float = 0.0
    media_stall_seconds: float = 0.0
    #: a media URL handed out already expired (403) until the status is polled again
    media_expire_rate: float = 0.0
    #: per-connection throughput cap in bytes per second (None = unlimited)
    media_throughput: float | None = None
    media_chunk: int = 256 * 1024

    # --- inputs -----------------------------------------------------------------------------
    #: the model fetches each image URL, failing jobs whose image cannot be read (off by
    #: default: tests and the demo use example.com URLs that lead nowhere)
    fetch_images: bool = False

    # --- webhooks ---------------------------------------------------------------------------
    webhook_duplicate_rate: float = 0.05
    #: the real gateway rejects plain http:// callback URLs; tests on loopback may allow them
    webhook_allow_http: bool = False

    def scaled(self, time_scale: float) -> Scenario:
        """The same scenario with every duration multiplied by ``time_scale``."""
        return dataclasses.replace(self, time_scale=time_scale)

    def seconds(self, full_scale: float) -> float:
        """A full-scale duration converted to this scenario's time scale."""
        return full_scale * self.time_scale


_DEMO = Scenario(
    name="demo",
    poll_interval=0.5,
    dispatch_delay=(0.2, 0.5),
    processing_median={"540p": 2.0, "720p": 2.5, "1080p": 3.5},
    long_duration_factor=1.3,
    straggler_rate=0.0,
    status_tick=(0.5, 1.0),
    failed_rate=0.0,
    error_rate=0.0,
    media_bitrate=None,
    media_bytes=256 * 1024,
)

_FAST = Scenario(
    name="fast",
    poll_interval=0.05,
    slots=10_000,
    dispatch_delay=(0.0, 0.0),
    processing_median={"540p": 0.0, "720p": 0.0, "1080p": 0.0},
    processing_sigma=0.0,
    straggler_rate=0.0,
    status_tick=(0.0, 0.0),
    failed_rate=0.0,
    error_rate=0.0,
    media_bitrate=None,
    media_bytes=8 * 1024,
    media_size_jitter=0.0,
)

_REALISTIC = Scenario(name="realistic", rate_limit=60, rate_window=60.0)

_HOSTILE = Scenario(
    name="hostile",
    poll_interval=0.5,
    dispatch_delay=(0.2, 1.0),
    processing_median={"540p": 3.0, "720p": 4.0, "1080p": 6.0},
    straggler_rate=0.0,
    status_tick=(0.5, 1.5),
    failed_rate=0.05,
    error_rate=0.05,
    rate_limit=20,
    rate_window=1.0,
    submit_refused_rate=0.05,
    submit_lost_answer_rate=0.05,
    lost_answer_delay=1.0,
    submit_reset_rate=0.05,
    status_error_rate=0.05,
    fault_burst=2,
    media_bitrate=None,
    media_bytes=512 * 1024,
    media_truncate_rate=0.2,
    media_expire_rate=0.2,
    media_error_rate=0.05,
)

_BROKE = dataclasses.replace(_DEMO, name="broke", balance_cents=60)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (_DEMO, _FAST, _REALISTIC, _HOSTILE, _BROKE)}


def scenario_named(name: str, *, time_scale: float | None = None) -> Scenario:
    """The named scenario, optionally rescaled.

    Raises:
        KeyError: the name is not one of ``SCENARIOS``, with the known names in the message.
    """
    try:
        scenario = SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)}") from None
    return scenario if time_scale is None else scenario.scaled(time_scale)
