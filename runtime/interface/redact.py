"""No secret in an interface's log: every line is redacted before it is written.

Requests carry secrets in their URL (``?token=...``: the dashboard's token, a login
token of `zchannels.api.auth`) and their headers (``Authorization``). The access log,
Tornado's own lines (a malformed request, an uncaught exception with its request)
and ours may quote them. Rather than trust every call site, `install` puts a
filter on the process's log handlers that rewrites each record, traceback
included:

- the configured tokens (``publish_token``, ``metrics_token``,
  ``dashboard_token``), wherever they appear;
- the value of every ``name=value`` whose name (percent-decoded) contains
  ``token``, ``secret``, ``passw``, ``auth``, ``key``, ``sig``, ``session`` or
  ``cookie``: query parameters, form fields, ``key=value`` log fields;
- credentials after ``Bearer`` or ``Basic`` (as in an ``Authorization`` header or a
  ``bearer, <token>`` subprotocol offer), and the value of an ``Authorization``,
  ``Cookie`` or ``Set-Cookie`` header quoted in a line.

Each becomes ``[redacted]``. Log records are rare next to messages, so the few
regular expressions cost nothing on the message path.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from zchannels.core.config import Config

REDACTED = "[redacted]"
SECRET_NAMES = ("token", "secret", "passw", "auth", "key", "sig", "session", "cookie")

# name=value, the name as a URL or a log line writes it (percent-escapes included).
NAME_VALUE = re.compile(r"(?<![\w%.+-])([\w%.+-]+)=([^&;\s'\"<>,)\]]+)")
# A credential after an authentication scheme (at least 8 characters: not a word in
# a sentence such as "missing bearer token").
SCHEME_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(['\"]?[\s,]+['\"]?)([^\s'\",;\]]{8,})")
# A quoted header: "Authorization: ...", 'cookie': '...'.
HEADER_VALUE = re.compile(r"(?i)\b(authorization|set-cookie|cookie)(['\"]?\s*[:=]\s*['\"]?)"
                          r"([^'\"\r\n]+)")


def secret_name(name: str) -> bool:
    decoded = unquote_plus(name).lower()
    return any(word in decoded for word in SECRET_NAMES)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every secret it may hold replaced by ``[redacted]``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = HEADER_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = SCHEME_CREDENTIAL.sub(_redact_credential, text)
    return NAME_VALUE.sub(_redact_value, text)


def _redact_credential(match: re.Match[str]) -> str:
    scheme, separator, value = match.groups()
    if value.startswith(REDACTED[:-1]):
        return match.group(0)  # a configured token, already replaced
    return scheme + separator + REDACTED


def _redact_value(match: re.Match[str]) -> str:
    name, value = match.groups()
    if value.startswith(REDACTED[:-1]) or not secret_name(name):
        return match.group(0)
    return f"{name}={REDACTED}"


class Redactor(logging.Filter):
    """A handler filter: each record's message (and traceback) redacted."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)
        self.formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def install(config: Config) -> Redactor:
    """Redact every record of this process's log handlers (those of the root logger,
    which `zchannels.wire.process.setup_logging` made, and of any other logger)."""
    redactor = Redactor((config.publish_token, config.metrics_token, config.dashboard_token))
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if redactor not in handler.filters:
                handler.addFilter(redactor)
    return redactor
