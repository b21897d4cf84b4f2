"""Django's ``ALLOWED_HOSTS`` on WebSocket handshakes, in a worker that runs Django.

Django answers a request whose ``Host`` is not in ``ALLOWED_HOSTS`` with 400
(``DisallowedHost``), which defeats DNS rebinding and poisoned host names; Channels'
``AllowedHostsOriginValidator`` refuses a handshake whose ``Origin`` is not in it.
The interface does not import Django, so the worker checks both, before routing
the ``websocket.connect``: a handshake either fails is refused with 403, logged at
WARNING and counted (``disallowed_host``); no consumer of the connect runs (its
disconnect still comes, with 1006, as after any refusal). This is on top of the
interface's own ``allowed_origins`` check, which runs first.

Only a worker whose Django is set up (its settings configured: a Django
``wsgi_app``, or ``DJANGO_SETTINGS_MODULE`` once Django has been set up) checks;
anywhere else nothing is imported and every handshake goes on as before. Like
Django, the check reads ``ALLOWED_HOSTS`` (with ``DEBUG`` and an empty list: the
localhost names), ``USE_X_FORWARDED_HOST``, and uses Django's own
``validate_host``. A handshake without ``Origin`` (not a browser) is checked on its
``Host`` only.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from zchannels.api.message import Message

log = logging.getLogger("zchannels.worker")

# What Django allows when DEBUG is on and ALLOWED_HOSTS is empty (HttpRequest.get_host).
DEBUG_HOSTS = (".localhost", "127.0.0.1", "[::1]")


def refused(message: Message, count: Callable[[str], None]) -> bool:
    """For a ``websocket.connect``: refuse it (403) and return True if Django is set up
    and its Host or Origin is not allowed; else False, and nothing done."""
    settings = _django_settings()
    if settings is None:
        return False
    problem = disallowed(message.headers, settings)
    if problem is None:
        return False
    count("disallowed_host")
    client = message.get("client") or ["?"]
    log.warning("refused WebSocket handshake to %s from %s: %s; answering 403",
                message.path, client[0], problem)
    if message.reply_channel is not None:
        message.reply_channel.reject()
    return True


def _django_settings() -> Any:
    """Django's settings if this process has configured them, else None (and Django
    is not imported)."""
    conf = sys.modules.get("django.conf")
    if conf is None:
        return None
    settings = conf.settings
    return settings if settings.configured else None


def disallowed(headers: Mapping[str, str], settings: Any) -> str | None:
    """Why a handshake with these headers (lower-case names) is not for this site, or
    None if its Host, and its Origin if it has one, are in ``ALLOWED_HOSTS``."""
    from django.http.request import split_domain_port, validate_host

    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = DEBUG_HOSTS
    if settings.USE_X_FORWARDED_HOST and "x-forwarded-host" in headers:
        name, host = "X-Forwarded-Host", headers["x-forwarded-host"]
    else:
        name, host = "Host", headers.get("host", "")
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, allowed):
        return f"{name} {host!r} is not in ALLOWED_HOSTS"
    origin = headers.get("origin")
    if origin is not None:
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # e.g. an unclosed IPv6 bracket
            netloc = ""
        domain, _ = split_domain_port(netloc)
        if not domain or not validate_host(domain, allowed):
            return f"Origin {origin!r} is not in ALLOWED_HOSTS"
    return None
