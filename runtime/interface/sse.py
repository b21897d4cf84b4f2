"""Server-Sent Events on the wire (``text/event-stream``): the response headers, the
heartbeat comment, and one event built from a message."""
from __future__ import annotations

from typing import Any

SSE_HEADERS = (("Content-Type", "text/event-stream; charset=utf-8"),
               ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
SSE_HEARTBEAT = b": keep-alive\n\n"


def sse_event(payload: bytes, event: Any = None, event_id: Any = None) -> bytes:
    """One Server-Sent Event: optional ``event:`` and ``id:`` lines, a ``data:`` line
    per line of the payload (which must be UTF-8 text), and the blank line."""
    parts = []
    if event:
        parts.append(b"event: %s\n" % _field(event))
    if event_id is not None:
        parts.append(b"id: %s\n" % _field(event_id))
    lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    parts.extend(b"data: %s\n" % line for line in lines)
    parts.append(b"\n")
    return b"".join(parts)


def _field(value: Any) -> bytes:
    # A newline would end the field and let the rest be read as another field.
    return str(value).replace("\r", " ").replace("\n", " ").encode()
