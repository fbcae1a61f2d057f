"""uvicorn's h11 connection with two guards it lacks: a deadline for a request's headers, and JSON answers for
requests that are not valid HTTP.

- **The header deadline.** uvicorn closes an idle keep-alive connection after a few seconds, but a client that
  opens a connection and sends nothing, or sends its header a byte at a time, holds the connection for as
  long as it likes: enough such clients use up the server's sockets (slowloris). Here a request's header must
  be complete within ``header_timeout_s`` of the connection opening or of the previous response. A client
  that misses it gets a 408 and the connection is closed.
- **JSON errors.** A request h11 cannot parse (a garbled request line, a header over h11's size limit) is
  answered as every other refusal is, ``{"error": ...}``. A header over the limit is a 431. uvicorn itself
  answers with plain text.

This module imports uvicorn (the [serve] extra): only :func:`googlenet.serve.app.uvicorn_options` imports it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# The largest request header read (h11's max_incomplete_event_size, set by googlenet.serve.app): twice h11's
# default, room for large cookies; nginx allows 32 KB in all by default.
HEADER_LIMIT = 32 * 1024


def json_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, written without h11 (whose state may not
    allow a response when the request was never read)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header = b""  # the start of the request header being received, up to HEADER_LIMIT
        self._oversized = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # still reading a request's header
            if self._header_deadline is None:  # the first bytes after a keep-alive pause
                self._arm()
            if self._header_too_large(data):
                self.send_400_response("")
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the header is complete: the body has its own timeout
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's header starts now; uvicorn's keep-alive timer closes a connection that stays idle.
        self._header = b""

    def _header_too_large(self, data: bytes) -> bool:
        """Whether the header being received, ``data`` included, passes HEADER_LIMIT. h11 limits only a header
        it has not seen the end of, so a large one that arrives whole would pass it."""
        start = len(self._header)
        self._header += data[: max(0, HEADER_LIMIT + 4 - start)]  # no more than can decide it
        end = self._header.find(b"\r\n\r\n", max(0, start - 3))
        self._oversized = (end + 4 if end >= 0 else len(self._header)) > HEADER_LIMIT
        return self._oversized

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        if self._oversized:
            answer = json_response(
                431, "Request Header Fields Too Large", f"the request header is over {HEADER_LIMIT:,} bytes"
            )
        else:
            answer = json_response(400, "Bad Request", "the request is not valid HTTP/1.1")
        self.transport.write(answer)
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_timed_out(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:  # a response is still being written
            return
        message = f"the request header did not arrive within {self.header_timeout_s:g} s"
        self.transport.write(json_response(408, "Request Timeout", message))
        self.transport.close()


def guarded_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's ``http=``, with this header deadline."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})
