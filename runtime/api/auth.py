"""Login on connect: who is on the other end of a connection.

Two ways, both optional:

- **Django.** ``message.user`` is the user of the connection's Django session
  cookie, loaded with the project's own session engine and authentication
  backends, and ``message.django_session`` is that session. Django is imported
  on first use, never before, so a project without Django pays nothing.
- **Signed tokens**, for clients without a cookie. The client offers the
  subprotocols ``["bearer", "<token>"]`` (or sends ``?token=...``, or an
  ``Authorization: Bearer`` header); `token_required` checks the token with a
  function you give it, such as `verify_token` for the HMAC-signed tokens
  `sign_token` makes.

Receive and disconnect events carry no headers, so a connection's later events
cannot read the cookie or the token again. What the connect event found is kept
in the connection's `Session` instead (under ``_django`` and ``_token_user``),
and later events read it from there. The Django user is loaded again from the
database on each event that asks for it, and checked against the session's
password hash, so changing the password logs out open sockets as it logs out
other browsers.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import os
import time
from http import cookies
from importlib import import_module
from typing import Any, Callable, Protocol

from zchannels.api import routing
from zchannels.core.exceptions import ZChannelsError


class _Answerable(Protocol):
    """What this module does with a reply channel: refuse or accept a handshake, close,
    answer a request."""

    def reject(self) -> None: ...
    def accept(self, subprotocol: str | None = None) -> None: ...
    def close(self, code: int = 1000, reason: str = "") -> None: ...
    def respond(self, body: str | bytes = b"", status: int = 200, headers: Any = None,
                content_type: str | None = None) -> None: ...


class Message(Protocol):
    """What this module reads of a `zchannels.api.message.Message` (declared here, so
    that the message can import this module and not the other way round)."""

    channel: str
    _auth: Any

    @property
    def session(self) -> dict[str, Any]: ...
    @property
    def reply_channel(self) -> _Answerable | None: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def query(self) -> dict[str, list[str]]: ...
    @property
    def user(self) -> Any: ...
    @property
    def django_session(self) -> Any: ...
    def get(self, key: str, default: Any = None) -> Any: ...


#: Keys of ``message.session`` this module writes. Leave them alone.
DJANGO_SESSION_KEY = "_django"
TOKEN_SESSION_KEY = "_token_user"

#: The subprotocol that carries a token: the client offers ``["bearer", token]``
#: and the server answers ``bearer``.
BEARER = "bearer"

#: Close code for a later WebSocket event whose user is no longer logged in
#: (4000-4999 is the application's range; 403 as in HTTP).
CLOSE_LOGIN_REQUIRED = 4403

TOKEN_MAX_LENGTH = 1024  # characters; longer is no token `sign_token` made
_TOKEN_PURPOSE = b"zchannels.auth.token:"  # a token signature verifies nothing else

_HEADER_CHANNELS = ("websocket.connect", "http.request")  # events that have headers

Verifier = Callable[[str], "str | None"]


class DjangoNotConfigured(ZChannelsError, RuntimeError):
    """``message.user`` was used in a worker where Django is not installed or set up."""


# -- cookies -------------------------------------------------------------------


def parse_cookie(header: str) -> dict[str, str]:
    """A ``Cookie:`` header as a dict, exactly as Django's ``parse_cookie`` reads it
    (a later cookie of the same name wins), so a WebSocket sees the session its
    HTTP requests see."""
    result = {}
    for chunk in header.split(";"):
        key, _, value = chunk.partition("=") if "=" in chunk else ("", "", chunk)
        key, value = key.strip(), value.strip()
        if key or value:
            result[key] = cookies._unquote(value)  # type: ignore[attr-defined]
    return result


def cookie_header(message: Message) -> str:
    """The request's cookies as one header. Several ``Cookie`` headers are joined
    with ``"; "`` (RFC 9113), not with the ``","`` of ``message.headers``."""
    return "; ".join(value for name, value in message.get("headers", ())
                     if name.lower() == "cookie")


# -- Django --------------------------------------------------------------------

_django_ready = False


def _setup_django() -> None:
    """Import Django and set it up if the worker has not (a worker mounting a Django
    project with ``wsgi_app`` has); say clearly what is missing otherwise."""
    global _django_ready
    if _django_ready:
        return
    try:
        import django
        from django.apps import apps
        from django.conf import settings
    except ImportError as e:
        raise DjangoNotConfigured(
            "message.user needs Django, which is not installed in this worker's "
            f"environment ({e})") from None
    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise DjangoNotConfigured(
            "message.user needs Django settings: mount the project with wsgi_app = "
            "\"yourproject.wsgi:application\" in [server], or set DJANGO_SETTINGS_MODULE "
            "in the workers' environment")
    if not apps.ready:
        django.setup()
    _django_ready = True


class _Resolved:
    """What this module found for one message (``message._auth``), so that asking
    twice in one consumer costs one lookup."""

    __slots__ = ("session_key", "login", "store", "user")

    def __init__(self, session_key: str | None, login: list[Any] | None,
                 store: Any = None) -> None:
        self.session_key = session_key
        self.login = login  # [user id, backend path, session hash], or None
        self.store = store  # the SessionStore, once opened
        self.user: Any = None


def _resolve(message: Message) -> _Resolved:
    resolved: _Resolved | None = message._auth
    if resolved is not None:
        return resolved
    _setup_django()
    if message.channel in _HEADER_CHANNELS:
        resolved = _from_cookie(message)
    else:
        cached = message.session.get(DJANGO_SESSION_KEY)
        if isinstance(cached, dict):
            resolved = _Resolved(cached.get("key"), cached.get("user"))
        else:
            resolved = _Resolved(None, None)
    message._auth = resolved
    return resolved


def _from_cookie(message: Message) -> _Resolved:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session_key = parse_cookie(cookie_header(message)).get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return _Resolved(None, None)
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    login = None
    if SESSION_KEY in store and BACKEND_SESSION_KEY in store:  # loads the session
        login = [store[SESSION_KEY], store[BACKEND_SESSION_KEY], store.get(HASH_SESSION_KEY)]
    if message.channel == "websocket.connect" and (login or store.keys()):
        # Later events have no cookie: they get what it said from the session. An
        # empty or forged session is not worth carrying with every event.
        message.session[DJANGO_SESSION_KEY] = {"key": session_key, "user": login}
    return _Resolved(session_key, login, store)


def django_session(message: Message) -> Any:
    """The Django session (a ``SessionStore``) of the connection's session cookie, or
    None without one. It is loaded on first access. Changes are not saved unless you
    call ``save()``, and with the ``signed_cookies`` engine they cannot be: the
    browser holds that session. Also ``message.django_session``."""
    resolved = _resolve(message)
    if resolved.store is None and resolved.session_key:
        from django.conf import settings
        engine = import_module(settings.SESSION_ENGINE)
        resolved.store = engine.SessionStore(resolved.session_key)
    return resolved.store


def django_user(message: Message) -> Any:
    """The Django user of the connection's session cookie, or an ``AnonymousUser``.

    Works on the connect event (and on ``http.request``) by reading the cookie,
    and on the connection's later events from what the connect event stored in
    ``message.session``: so read it (or use `login_required`) in the connect
    consumer, or later events see an ``AnonymousUser``. Also ``message.user``.
    """
    resolved = _resolve(message)
    if resolved.user is None:
        resolved.user = _verified_user(resolved.login)
    return resolved.user


def _verified_user(login: list[Any] | None) -> Any:
    """``django.contrib.auth.get_user`` without writing: that one cycles or flushes a
    session whose hash does not verify, and a WebSocket cannot send the new cookie
    back, so the browser would be logged out. Here such a session is just anonymous."""
    from django.conf import settings
    from django.contrib.auth import get_user_model, load_backend
    from django.contrib.auth.models import AnonymousUser
    from django.core.exceptions import ValidationError
    from django.utils.crypto import constant_time_compare

    if not isinstance(login, list) or len(login) != 3:
        return AnonymousUser()
    user_id, backend_path, session_hash = login
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return AnonymousUser()
    try:
        user_id = get_user_model()._meta.pk.to_python(user_id)
    except ValidationError:
        return AnonymousUser()
    # The database connection is looked after around every event by the worker, as
    # Django's handlers do per request (zchannels.worker.dispatch.DjangoDispatcher).
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return AnonymousUser()
    if hasattr(user, "get_session_auth_hash"):
        fallbacks = getattr(user, "get_session_auth_fallback_hash", lambda: ())
        if not session_hash or not any(
                constant_time_compare(session_hash, valid)
                for valid in (user.get_session_auth_hash(), *fallbacks())):
            return AnonymousUser()  # the password changed since this login
    return user


def require_login(message: Message) -> bool:
    """True if the message's user is logged in. If not, refuse and return False:
    ``reject()`` (HTTP 403) on ``websocket.connect``, close with 4403 on a later
    WebSocket event, a 403 response on ``http.request``; nothing to refuse on a
    disconnect or an application-channel message."""
    if message.user.is_authenticated:
        return True
    _refuse(message)
    return False


def _refuse(message: Message) -> None:
    reply = message.reply_channel
    if reply is None:
        return
    if message.channel == "websocket.connect":
        reply.reject()
    elif message.channel == "websocket.receive":
        reply.close(CLOSE_LOGIN_REQUIRED, "login required")
    elif message.channel == "http.request":
        reply.respond("login required\n", status=403)


def login_required(func: routing.Consumer) -> routing.Consumer:
    """Run the consumer only for a logged-in Django user; refuse the others (see
    `require_login`). On ``websocket.connect`` it refuses with HTTP 403. Put it
    below ``@consumer``::

        @consumer("websocket.connect", path="/ws/private")
        @login_required
        def connect(message): ...
    """
    _check_not_registered(func, "login_required")

    @functools.wraps(func)
    def logged_in(message: Message, **kwargs: Any) -> Any:
        if not require_login(message):
            return None
        return func(message, **kwargs)
    return logged_in


def _check_not_registered(func: routing.Consumer, decorator: str) -> None:
    # Above @consumer, the decorator would wrap a function that is already
    # registered unwrapped: every connection would get in.
    if any(route.func is func for route in routing.registry.routes):
        raise TypeError(f"@{decorator} must come below @consumer(...), not above it: "
                        f"{getattr(func, '__qualname__', func)!r} is already registered "
                        "without it")


# -- signed tokens -------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str | bytes, body: str) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the token secret is empty")
    return _b64(hmac.new(key, _TOKEN_PURPOSE + body.encode("ascii"), hashlib.sha256).digest())


def sign_token(user_id: str, secret: str | bytes, expires_in: float = 3600.0, *,
               now: float | None = None) -> str:
    """A token that says `user_id` until `expires_in` seconds from now, signed with
    HMAC-SHA256 under `secret`: ``<user id>.<expiry>.<signature>``, base64url.
    Every character is allowed in a subprotocol, a query string and a header."""
    if not isinstance(user_id, str) or not user_id:
        raise ValueError(f"user_id must be a non-empty str, not {user_id!r}")
    if not expires_in > 0:
        raise ValueError(f"expires_in must be positive seconds, not {expires_in!r}")
    expiry = math.ceil((time.time() if now is None else now) + expires_in)
    body = f"{_b64(user_id.encode())}.{expiry}"
    return f"{body}.{_signature(secret, body)}"


def verify_token(token: str, secret: str | bytes, *, now: float | None = None) -> str | None:
    """The user id of a `sign_token` token signed with `secret` that has not
    expired; None for anything else (never an exception for a bad token)."""
    if not isinstance(token, str) or len(token) > TOKEN_MAX_LENGTH:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    encoded_user, expiry, signature = parts
    try:
        body = f"{encoded_user}.{expiry}"
        expected = _signature(secret, body)
    except UnicodeEncodeError:  # not ASCII: not ours
        return None
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return None
    if not (expiry.isascii() and expiry.isdigit()):
        return None
    if int(expiry) <= (time.time() if now is None else now):
        return None
    try:
        return _unb64(encoded_user).decode()
    except (binascii.Error, ValueError):
        return None


def bearer_token(message: Message) -> str | None:
    """The token a client sent: the subprotocol after ``"bearer"`` in the ones it
    offered, else an ``Authorization: Bearer`` header, else ``?token=``. Only the
    connect event (and ``http.request``) has them. Prefer the subprotocol: a query
    string ends up in access logs and browser history."""
    offered = message.get("subprotocols") or []
    if BEARER in offered:
        position = offered.index(BEARER) + 1
        return offered[position] if position < len(offered) else None
    scheme, _, value = message.headers.get("authorization", "").partition(" ")
    if scheme.lower() == BEARER and value.strip():
        return value.strip()
    values = message.query.get("token")
    return values[0] if values and values[0] else None


def authenticate_token(message: Message, verify: Verifier) -> str | None:
    """Check the connection's bearer token with `verify` (token -> user id or None)
    and remember the user id in ``message.session`` for later events. On a later
    event (no token to see), the user id the connect event remembered."""
    if message.channel not in _HEADER_CHANNELS:
        return token_user(message)
    token = bearer_token(message)
    user_id = verify(token) if token else None
    if user_id is not None:
        if not isinstance(user_id, str):
            raise TypeError(f"a token verifier returns a user id (str) or None, not "
                            f"{type(user_id).__name__}")
        message.session[TOKEN_SESSION_KEY] = user_id
    return user_id


def token_user(message: Message) -> str | None:
    """The user id `authenticate_token` found for this connection, or None."""
    user_id = message.session.get(TOKEN_SESSION_KEY)
    return user_id if isinstance(user_id, str) else None


def require_token(message: Message, verify: Verifier) -> bool:
    """`require_login` for tokens: True if `authenticate_token` finds a user,
    otherwise refuse the same way and return False."""
    if authenticate_token(message, verify) is not None:
        return True
    _refuse(message)
    return False


def token_required(verify: Verifier) -> Callable[[routing.Consumer], routing.Consumer]:
    """Run the consumer only for a valid bearer token; refuse the others (HTTP 403
    at the handshake). `verify` maps a token to a user id, or None::

        @consumer("websocket.connect", path="/ws/api")
        @token_required(lambda token: verify_token(token, SECRET))
        def connect(message):
            log.info("user %s connected", token_user(message))

    A token offered as a subprotocol is answered with ``bearer`` when the consumer
    returns (a browser refuses a handshake that picks none of its subprotocols), so
    a consumer that calls ``accept()`` early must pass ``BEARER`` itself."""
    def decorate(func: routing.Consumer) -> routing.Consumer:
        _check_not_registered(func, "token_required")

        @functools.wraps(func)
        def authenticated(message: Message, **kwargs: Any) -> Any:
            if not require_token(message, verify):
                return None
            result = func(message, **kwargs)
            if message.channel == "websocket.connect" and message.reply_channel is not None \
                    and BEARER in (message.get("subprotocols") or []):
                message.reply_channel.accept(BEARER)  # no effect if already decided
            return result
        return authenticated
    return decorate
