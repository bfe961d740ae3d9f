"""One HTTP exchange with the gateway, sorted into *not sent* and *maybe sent*
(``docs/design.md``, "Who answered"): whether a request's bytes may have left decides whether
a submit that got no answer may have been charged.

A trace hook marks the instant a request holds a connection and is about to write its headers;
a failure before it is ``NotSentError``, any failure after it ``AnswerLostError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from pixazo_batch.errors import AnswerLostError, NotSentError

#: the longest gateway answer read; a longer one is not the gateway's JSON
ANSWER_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class Answer:
    """A gateway answer read in full (up to ``ANSWER_LIMIT``)."""

    status: int
    text: str
    headers: CIMultiDictProxy[str]
    oversized: bool = False


class _Wire:
    """Whether a request reached the wire (its headers about to be written), and what to do
    just before it does."""

    def __init__(self, on_wire: Callable[[], Awaitable[None]] | None) -> None:
        self.reached = False
        self._on_wire = on_wire

    async def __call__(self) -> None:
        if self._on_wire is not None:
            await self._on_wire()
        self.reached = True


async def _call_on_wire(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    """aiohttp trace hook: the request holds a connection and is about to write its headers."""
    wire = context.trace_request_ctx
    if isinstance(wire, _Wire):
        await wire()


async def exchange(  # noqa: PLR0917
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    headers: dict[str, str],
    body: bytes | None,
    client_timeout: aiohttp.ClientTimeout,
    on_wire: Callable[[], Awaitable[None]] | None,
) -> Answer:
    """One request and its answer, read in full up to ``ANSWER_LIMIT``; ``on_wire`` runs once
    the request holds a connection, just before its headers are written.

    Raises:
        NotSentError: the request never reached the wire; no byte of it left.
        AnswerLostError: it reached the wire and no answer came back (whatever it did remotely).
    """
    wire = _Wire(on_wire)
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            data=body,
            timeout=client_timeout,
            allow_redirects=False,
            trace_request_ctx=wire,
        ) as response:
            raw = await response.content.read(ANSWER_LIMIT + 1)
            return Answer(
                response.status,
                raw[:ANSWER_LIMIT].decode("utf-8", errors="replace"),
                response.headers,
                oversized=len(raw) > ANSWER_LIMIT,
            )
    except (TimeoutError, aiohttp.ClientError) as exc:
        if not wire.reached:  # no connection, or none in time: not a byte left
            detail = getattr(exc, "os_error", None) or f"{type(exc).__name__}: {exc}"
            raise NotSentError(f"{method} {url.host}: could not connect: {detail}") from exc
        raise AnswerLostError(f"{method} {url.host}: {type(exc).__name__}: {exc}") from exc


def open_session() -> aiohttp.ClientSession:
    """A session for ``exchange``: no connection limit of its own (callers pace themselves), no
    status raised, the wire traced."""
    tracing = aiohttp.TraceConfig(trace_config_ctx_factory=SimpleNamespace)
    tracing.on_request_headers_sent.append(_call_on_wire)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), raise_for_status=False, trace_configs=[tracing]
    )
