"""GatewayClient: the only code that speaks HTTP to the Pixazo gateway.

It sends the key to the gateway's origin and nowhere else (redirects are not followed, and a
``polling_url`` on another origin is ignored), waits out 429 answers through the shared
``RateGovernor``, and turns every aiohttp failure into this project's error tree once, keeping
*not sent* apart from *maybe sent*: that split decides whether a submit may have been charged.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Self
from urllib.parse import quote

import aiohttp
import anyio
import structlog
from multidict import CIMultiDictProxy
from yarl import URL

from pixazo_batch.errors import (
    AnswerLostError,
    AuthRefusedError,
    BalanceError,
    HttpStatusError,
    NotSentError,
    QuotaExhaustedError,
)
from pixazo_batch.governor import RateGovernor
from pixazo_batch.models import (
    STATUS_PATH_PREFIX,
    SUBMIT_PATH,
    ErrorBody,
    GenerationRequest,
    StatusResponse,
    SubmitAccepted,
)

log = structlog.get_logger(__name__)

KEY_HEADER = "Ocp-Apim-Subscription-Key"
#: added to an announced Retry-After: event-loop timers may fire a hair early
RETRY_AFTER_MARGIN = 0.05
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
            return max(0.0, float(value))
        except ValueError:
            pass
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
    match = _TRY_AGAIN.search(body)
    return float(match.group(1)) if match else None


def quota_wait(message: str) -> float | None:
    """Seconds until a quota returns, from "Quota will be replenished in [d.]hh:mm:ss"."""
    match = _REPLENISHED.search(message)
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


@dataclass(frozen=True, slots=True)
class Answer:
    """A gateway answer read in full."""

    status: int
    text: str
    headers: CIMultiDictProxy[str]


class GatewayClient:
    """Submits jobs and reads their status, paced by a shared ``RateGovernor``.

    Usage: ``async with GatewayClient(base_url, key, governor) as gw: await gw.submit(req)``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        governor: RateGovernor,
        *,
        concurrency: int = 8,
        submit_timeout: float = 120.0,
        status_timeout: float = 30.0,
        retry_after_cap: float = 300.0,
    ) -> None:
        self.base = URL(base_url.rstrip("/"))
        self._key = api_key
        self.governor = governor
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._submit_timeout = aiohttp.ClientTimeout(total=submit_timeout, connect=30)
        self._status_timeout = aiohttp.ClientTimeout(total=status_timeout, connect=30)
        self.retry_after_cap = retry_after_cap
        self._session: aiohttp.ClientSession | None = None
        #: set while the gateway's backend answers; cleared when a submit's answer was lost
        self.healthy = anyio.Event()
        self.healthy.set()

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    def mark_unhealthy(self) -> None:
        """Note that the gateway lost a submit's answer; ``healthy`` stays clear until a status
        request is answered again."""
        if self.healthy.is_set():
            self.healthy = anyio.Event()

    async def submit(
        self,
        request: GenerationRequest,
        *,
        webhook_url: str | None = None,
        webhook_mode: str = "terminal",
    ) -> SubmitAccepted:
        """POST one job, asking for callbacks to ``webhook_url`` when given. Returns the 202
        answer.

        Raises:
            NotSentError: the request never left; retrying is safe.
            AnswerLostError: the job may exist and be charged (timeout, reset, 502/504 or the API
                front's 5xx).
            AuthRefusedError, QuotaExhaustedError, BalanceError, HttpStatusError: refused.
        """
        headers = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
        if webhook_url is not None:
            headers["X-Webhook-URL"] = webhook_url
            headers["X-Webhook-Mode"] = webhook_mode
        body = request.model_dump_json().encode()
        answer = await self._send(
            "POST", self._url(SUBMIT_PATH), headers, body, self._submit_timeout
        )
        if answer.status in (200, 201, 202):
            try:
                return SubmitAccepted.model_validate_json(answer.text)
            except ValueError as exc:
                raise AnswerLostError(f"HTTP {answer.status} without a request_id") from exc
        error = self._error(answer)
        if answer.status in (502, 504) or (answer.status >= 500 and error.body.from_api_front):
            raise AnswerLostError(f"HTTP {answer.status} from the API front: {error.body.text}")
        raise error

    async def status(self, request_id: str, polling_url: str | None = None) -> StatusResponse:
        """The current status of ``request_id``.

        Raises:
            NotSentError, AnswerLostError: network trouble (safe to retry: reads are free).
            AuthRefusedError, QuotaExhaustedError, HttpStatusError: the gateway answered an error.
        """
        url = self._status_url(request_id, polling_url)
        answer = await self._send("GET", url, {}, None, self._status_timeout)
        if answer.status < 500:
            self.healthy.set()
        if answer.status == 200:
            try:
                return StatusResponse.model_validate_json(answer.text)
            except ValueError as exc:
                raise HttpStatusError(200, ErrorBody(message=f"unreadable status: {exc}")) from exc
        raise self._error(answer)

    def _status_url(self, request_id: str, polling_url: str | None) -> URL:
        if polling_url:
            candidate = URL(polling_url)
            if candidate.origin() == self.base.origin():
                return candidate
        return self._url(STATUS_PATH_PREFIX + quote(request_id, safe=""))

    def _url(self, path: str) -> URL:
        """``path`` (already encoded) below the base URL, which may carry a proxy prefix."""
        return self.base.with_path(self.base.path.rstrip("/") + path, encoded=True)

    async def _send(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes | None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> Answer:
        session = self._session
        if session is None:
            raise RuntimeError("GatewayClient used outside 'async with'")
        headers = {**headers, KEY_HEADER: self._key}
        while True:
            await self.governor.acquire()
            async with self._limiter:
                answer = await self._exchange(session, method, url, headers, body, client_timeout)
            if answer.status != 429:
                self.governor.on_success()
                return answer
            self._wait_out_429(answer)

    def _wait_out_429(self, answer: Answer) -> None:
        wait = parse_retry_after(answer.headers.get("Retry-After"), answer.text)
        if wait is not None:
            if wait > self.retry_after_cap:
                log.warning("retry_after_capped", announced=wait, cap=self.retry_after_cap)
                wait = self.retry_after_cap
            wait += RETRY_AFTER_MARGIN
        paused = self.governor.on_rate_limited(wait)
        log.info("rate_limited", http_status=429, pause_s=round(paused, 3), rps=self.governor.rate)

    @staticmethod
    async def _exchange(  # noqa: PLR0917  (private, called once)
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes | None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> Answer:
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                data=body,
                timeout=client_timeout,
                allow_redirects=False,
            ) as response:
                text = await response.text(errors="replace")
                return Answer(response.status, text, response.headers)
        except aiohttp.ClientConnectorError as exc:
            raise NotSentError(f"{method} {url.host}: could not connect: {exc.os_error}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise AnswerLostError(f"{method} {url.host}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _error(answer: Answer) -> HttpStatusError:
        body = ErrorBody.from_text(answer.text)
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        if answer.status == 401:
            return AuthRefusedError(401, body)
        if answer.status == 403:
            message = body.message or ""
            if "quota" in message.lower():
                return QuotaExhaustedError(403, body, retry_after or quota_wait(message))
            return AuthRefusedError(403, body)
        if answer.status == 402:
            return BalanceError(402, body)
        return HttpStatusError(answer.status, body, retry_after)
