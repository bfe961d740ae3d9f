"""GatewayClient: the only code that speaks HTTP to the Pixazo gateway.

It sends the key to the gateway's origin and nowhere else (redirects are not followed, and a
``polling_url`` on another origin is ignored), paces every request through the shared
``RateGovernor``, reports reachability to ``GatewayHealth``, and turns every aiohttp failure and
every answer into this project's error tree once. Two splits decide whether a submit may have
been charged (``docs/design.md``, section "Who answered"): *not sent* against *maybe sent*
(``wire.py``, which makes each exchange), and an answer in the gateway's own shapes against
anything else (a proxy's page, a CDN's 52x).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self
from urllib.parse import quote

import aiohttp
import anyio
import structlog
from yarl import URL

from pixazo_batch.errors import (
    AnswerLostError,
    AuthRefusedError,
    BalanceError,
    GatewayAnswerError,
    HttpStatusError,
    NotSentError,
    QuotaExhaustedError,
    SettingsRefusedError,
)
from pixazo_batch.governor import RateGovernor
from pixazo_batch.health import GatewayHealth
from pixazo_batch.logs import REDACTED
from pixazo_batch.models import (
    STATUS_PATH_PREFIX,
    SUBMIT_PATH,
    ErrorBody,
    GenerationRequest,
    StatusResponse,
    SubmitAccepted,
)
from pixazo_batch.retryafter import parse_retry_after, quota_wait
from pixazo_batch.wire import ANSWER_LIMIT, Answer, exchange, open_session

log = structlog.get_logger(__name__)

KEY_HEADER = "Ocp-Apim-Subscription-Key"
#: added to an announced Retry-After: event-loop timers may fire a hair early
RETRY_AFTER_MARGIN = 0.05
#: what a request_id may look like before it is stored or put in a URL (documented:
#: ``{model_id}_{uuid}``; kept a little wider, since the id is opaque)
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,199}$")
_SUBMIT_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-cache"}


class RateLimitedError(HttpStatusError):
    """A submit answered 429: not accepted; every sender is paused already."""


def usable_request_id(request_id: str) -> bool:
    """Whether ``request_id`` has a shape that is safe to store and put in a URL."""
    return REQUEST_ID.match(request_id) is not None


class GatewayClient:
    """Submits jobs and reads their status, paced by a shared ``RateGovernor``.

    Usage: ``async with GatewayClient(base_url, key, governor, health) as gw: await
    gw.submit(req, on_wire=...)``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        governor: RateGovernor,
        health: GatewayHealth,
        *,
        concurrency: int = 8,
        submit_timeout: float = 120.0,
        status_timeout: float = 30.0,
        retry_after_cap: float = 300.0,
        on_pause: Callable[[float], None] | None = None,
    ) -> None:
        self.base = URL(base_url.rstrip("/"))
        self._key = api_key
        self.governor = governor
        self.health = health
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._submit_timeout = aiohttp.ClientTimeout(total=submit_timeout, connect=30)
        self._status_timeout = aiohttp.ClientTimeout(total=status_timeout, connect=30)
        self.retry_after_cap = retry_after_cap
        self._on_pause = on_pause
        self._session: aiohttp.ClientSession | None = None
        #: requests sent to the gateway so far (for the progress display)
        self.requests = 0

    async def __aenter__(self) -> Self:
        self._session = open_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def submit(
        self,
        request: GenerationRequest,
        *,
        on_wire: Callable[[], Awaitable[None]],
        webhook_url: str | None = None,
        webhook_mode: str = "terminal",
    ) -> SubmitAccepted:
        """POST one job. ``on_wire`` runs once the POST holds its rate token and connection,
        just before its bytes leave; whatever it raises stops the POST unsent.

        Raises:
            NotSentError: the request never left; retrying is safe.
            AnswerLostError: the job may exist and be charged: no answer, or one that is not
                the gateway's (a proxy's page, 408, 502/504, a 2xx without a request_id).
            RateLimitedError, HttpStatusError: not accepted (429, 503, a 500 in the service's
                shape, or a 4xx naming this job).
            AuthRefusedError, QuotaExhaustedError, BalanceError, SettingsRefusedError: not
                accepted, and no other job would be either.
        """
        headers = dict(_SUBMIT_HEADERS)
        if webhook_url is not None:
            headers["X-Webhook-URL"] = webhook_url
            headers["X-Webhook-Mode"] = webhook_mode
        body = request.model_dump_json().encode()
        url = self._url(SUBMIT_PATH)
        await self.governor.acquire()

        async def leaving() -> None:
            writing_since = self.governor.clock.now()
            await on_wire()
            self.governor.departed(writing_since)

        answer = await self._send("POST", url, headers, body, self._submit_timeout, leaving)
        if 200 <= answer.status < 300 and not answer.oversized:
            try:
                accepted = SubmitAccepted.model_validate_json(answer.text)
            except ValueError:
                accepted = None
            if accepted is not None and usable_request_id(accepted.request_id):
                return accepted.model_copy(update={"polling_url": self._own(accepted.polling_url)})
        error = self._error(answer)
        if not self._not_accepted(answer.status, error.body):
            raise AnswerLostError(f"HTTP {answer.status}, not the gateway's answer: {error}")
        if answer.status == 429:
            self._pause_for(answer)
            raise RateLimitedError(429, error.body, error.retry_after)
        if answer.status == 404 or (answer.status == 400 and _names_a_setting(error, headers)):
            raise SettingsRefusedError(answer.status, error.body)
        raise error

    async def status(self, request_id: str, polling_url: str | None = None) -> StatusResponse:
        """The current status of ``request_id``; 429 answers are waited out.

        Raises:
            NotSentError, AnswerLostError: network trouble (safe to retry: reads are free).
            AuthRefusedError, QuotaExhaustedError, HttpStatusError: the gateway answered an error.
        """
        url = self._status_url(request_id, polling_url)
        while True:
            # Ahead of submits waiting for a token: a job found done frees a slot for them.
            await self.governor.acquire(ahead=True)
            answer = await self._send("GET", url, {}, None, self._status_timeout)
            if answer.status != 429:
                break
            self._pause_for(answer)
        if answer.status == 200 and not answer.oversized:
            try:
                return StatusResponse.model_validate_json(answer.text)
            except ValueError as exc:
                message = f"unreadable status: {str(exc).splitlines()[0]}"
                raise HttpStatusError(200, ErrorBody(message=message)) from exc
        raise self._error(answer)

    @staticmethod
    def _not_accepted(status: int, body: ErrorBody) -> bool:
        """Whether a submit's error answer proves the job was not taken (``docs/design.md``,
        "Who answered")."""
        if not body.from_gateway:
            return False
        if status in (400, 401, 402, 403, 404, 429, 503):
            return True
        return status == 500 and body.from_service

    def _own(self, polling_url: str | None) -> str | None:
        """``polling_url`` when it is an absolute URL on the gateway's own origin, else None."""
        try:
            candidate = URL(polling_url or "")
            usable = candidate.absolute and candidate.origin() == self.base.origin()
        except ValueError:
            usable = False
        return polling_url if usable else None

    def _status_url(self, request_id: str, polling_url: str | None) -> URL:
        if not usable_request_id(request_id):
            raise HttpStatusError(404, ErrorBody(message=f"unusable request id {request_id!r}"))
        own = self._own(polling_url)
        if own is not None:
            return URL(own)
        return self._url(STATUS_PATH_PREFIX + quote(request_id, safe=""))

    def _url(self, path: str) -> URL:
        """``path`` (already encoded) below the base URL, which may carry a proxy prefix."""
        return self.base.with_path(self.base.path.rstrip("/") + path, encoded=True)

    async def _send(  # noqa: PLR0917  (private, two callers)
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes | None,
        client_timeout: aiohttp.ClientTimeout,
        on_wire: Callable[[], Awaitable[None]] | None = None,
    ) -> Answer:
        session = self._session
        if session is None:
            raise RuntimeError("GatewayClient used outside 'async with'")
        headers = {**headers, KEY_HEADER: self._key}
        self.requests += 1
        try:
            async with self._limiter:
                answer = await exchange(
                    session, method, url, headers, body, client_timeout, on_wire
                )
        except NotSentError as exc:
            self.health.unreachable(str(exc))
            raise
        if self._key in answer.text:  # an echoed key must never be stored, printed or logged
            answer = dataclasses.replace(answer, text=answer.text.replace(self._key, REDACTED))
        if answer.status < 500:
            self.health.answered()
        if answer.status != 429:
            self.governor.on_success()
        return answer

    def _pause_for(self, answer: Answer) -> None:
        """Pause every sender as a 429 asks (kept in the state file through ``on_pause``)."""
        wait = parse_retry_after(answer.headers.get("Retry-After"), answer.text)
        if wait is not None:
            if wait > self.retry_after_cap:
                log.warning("retry_after_capped", announced=wait, cap=self.retry_after_cap)
                wait = self.retry_after_cap
            wait += RETRY_AFTER_MARGIN
        paused = self.governor.on_rate_limited(wait)
        if self._on_pause is not None:
            self._on_pause(time.time() + paused)
        log.info("rate_limited", http_status=429, pause_s=round(paused, 3), rps=self.governor.rate)

    @staticmethod
    def _error(answer: Answer) -> GatewayAnswerError:
        body = ErrorBody.from_text(answer.text)
        if answer.oversized:
            body = ErrorBody(message=f"an answer over {ANSWER_LIMIT} bytes")
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        if answer.status == 401 and body.from_gateway:
            return AuthRefusedError(401, body)
        if answer.status == 403 and body.from_gateway:
            message = body.message or ""
            if "quota" in message.lower():
                return QuotaExhaustedError(403, body, retry_after or quota_wait(message))
            return AuthRefusedError(403, body)
        if answer.status == 402 and body.from_gateway:
            return BalanceError(402, body)
        return HttpStatusError(answer.status, body, retry_after)


def _names_a_setting(error: GatewayAnswerError, headers: dict[str, str]) -> bool:
    """A 400 every job would get: the model is not found, or the message names a header we
    send (a webhook URL the gateway refuses, say)."""
    text = error.body.text.lower()
    return "model not found" in text or any(name.lower() in text for name in headers)
