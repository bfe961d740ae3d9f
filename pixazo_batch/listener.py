"""BoundedListener: serves an aiohttp application to the open internet without being held open.

The webhook listener faces whoever finds its URL. aiohttp's server bounds a request's size, but
not how many connections may be open, nor how long one may idle before its first byte or
trickle its headers. Here each connection goes through a small protocol wrapper: it must say
something within ``first_byte`` seconds and is closed after ``lifetime`` seconds whatever it
does (a callback is one short POST), and past ``max_connections`` a new connection is answered
503 and closed at once. So a flood of idle or slow connections costs a bounded number of file
descriptors, and the downloads that share them keep working.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Self

import structlog

if TYPE_CHECKING:
    from aiohttp import web

log = structlog.get_logger(__name__)

_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Refuse(asyncio.Protocol):
    """A connection over the cap: one 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class _Guarded(asyncio.Protocol):
    """One connection, closed if it is silent at first or outlives its lifetime."""

    def __init__(
        self, inner: asyncio.Protocol, live: set[_Guarded], first_byte: float, lifetime: float
    ) -> None:
        self._inner = inner
        self._live = live
        self._first_byte = first_byte
        self._lifetime = lifetime
        self._spoke = False
        self._timers: list[asyncio.TimerHandle] = []
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._live.add(self)
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timers = [
            loop.call_later(self._first_byte, self._close_if_silent),
            loop.call_later(self._lifetime, transport.close),
        ]
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._spoke = True
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        for timer in self._timers:
            timer.cancel()
        self._inner.connection_lost(exc)

    def _close_if_silent(self) -> None:
        if not self._spoke and self._transport is not None:
            self._transport.close()


class BoundedListener:
    """Serves ``runner``'s application on ``host:port`` within the bounds above.

    Usage: ``async with BoundedListener(runner, host, port): ...`` after ``runner.setup()``.

    Raises:
        OSError: from ``__aenter__`` when the address cannot be bound.
    """

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        max_connections: int = 128,
        first_byte: float = 10.0,
        lifetime: float = 60.0,
    ) -> None:
        self._runner = runner
        self._host, self._port = host, port
        self.max_connections = max_connections
        self._first_byte, self._lifetime = first_byte, lifetime
        self._live: set[_Guarded] = set()
        self._server: asyncio.Server | None = None
        #: connections refused because the listener was full
        self.refused = 0

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()

    def _protocol(self) -> asyncio.Protocol:
        if len(self._live) >= self.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("webhook_listener_full", open=len(self._live), refused=self.refused)
            return _Refuse()
        handler = self._runner.server
        assert handler is not None
        return _Guarded(handler(), self._live, self._first_byte, self._lifetime)
