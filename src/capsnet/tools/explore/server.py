"""Serving the explorer: a listening socket and uvicorn with bounds on slow or many clients.

uvicorn times out idle keep-alive connections but not a client that never finishes its
request headers; ``serve`` closes those after ``header_timeout`` seconds, answers 503 to a
request that arrives while ``max_connections`` connections (its own included) are open, and
the app itself answers 408 to a body that does not
arrive in time (``capsnet.tools.explore.app.BODY_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from capsnet.errors import ConfigError


@dataclass(frozen=True)
class ServerLimits:
    header_timeout: float = 10.0  # seconds to send the request line and headers
    keep_alive: float = 5.0  # seconds an idle connection stays open between requests
    max_connections: int = 64  # a request arriving with this many connections open gets 503


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0: a free one); ConfigError if it can't."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be in 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing connections whose headers are not in after the timeout."""

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_late(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    return TimedH11Protocol


def make_server(app: ASGIApp, limits: ServerLimits = ServerLimits()) -> Any:
    """A ``uvicorn.Server`` for ``app`` with ``limits``; ``.run(sockets=[sock])`` serves."""
    config = uvicorn.Config(
        app,
        http=_protocol(limits.header_timeout),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=int(max(1, limits.keep_alive)),
        limit_concurrency=limits.max_connections,
    )
    return uvicorn.Server(config)


def serve(app: ASGIApp, sock: socket.socket, limits: ServerLimits = ServerLimits()) -> None:
    """Serve ``app`` on a listening socket with uvicorn until interrupted (Ctrl-C)."""
    make_server(app, limits).run(sockets=[sock])
