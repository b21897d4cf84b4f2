"""Unit tests for zchannels.api.auth: signed tokens, cookie parsing, bearer tokens and the
decorators, against a fake layer; and message.user with a real Django in a child
process (Django's settings are global, and this process must stay without them)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
from django.http.cookie import parse_cookie as django_parse_cookie
from hypothesis import given
from hypothesis import strategies as st

from harness import ROOT
from zchannels.api import auth, routing
from zchannels.wire import frames as wire
from zchannels.api.auth import (BEARER, CLOSE_LOGIN_REQUIRED, TOKEN_SESSION_KEY, bearer_token,
                                cookie_header, login_required, parse_cookie, require_login,
                                sign_token, token_required, token_user, verify_token)
from zchannels.api.message import Message

SECRET = "a-test-secret"
NOW = 1_700_000_000.0
CHILD_TIMEOUT = 60  # seconds for a child Python process


class FakeLayer:
    """Records `to_interface` calls instead of sending them."""

    def __init__(self):
        self.calls = []

    def to_interface(self, reply_channel, header, payload=None):
        self.calls.append(header)

    def ops(self):
        return [(h["op"], h.get("code", h.get("status", h.get("subprotocol"))))
                for h in self.calls]


class UserMessage(Message):
    """A Message whose user is given, so the decorators run without Django."""

    def __init__(self, *args, user=None):
        super().__init__(*args)
        self.given_user = user

    @property
    def user(self):
        return self.given_user


def message(channel="websocket.connect", layer=None, **content):
    return Message({"channel": channel, "reply_channel": "i3f9a!17", "path": "/p", **content},
                   b"", layer or FakeLayer())


def user_message(channel="websocket.connect", layer=None, user=None):
    return UserMessage({"channel": channel, "reply_channel": "i3f9a!17", "path": "/p"},
                       b"", layer or FakeLayer(), user=user)


# -- signed tokens -------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["42", "ada@example.com", "a.b.c", "Zoë ✓", "x" * 200])
def test_a_token_verifies_to_its_user_until_it_expires(user_id):
    token = sign_token(user_id, SECRET, expires_in=60, now=NOW)
    assert verify_token(token, SECRET, now=NOW) == user_id
    assert verify_token(token, SECRET, now=NOW + 59) == user_id
    assert verify_token(token, SECRET, now=NOW + 60) is None
    assert verify_token(token, SECRET.encode(), now=NOW) == user_id  # str or bytes secret


def test_a_token_fits_a_subprotocol_a_query_string_and_a_header():
    token = sign_token("Zoë ✓ <&>", SECRET)
    tchar = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert set(token) <= tchar - set("%&+")


def test_a_token_with_another_secret_or_changed_does_not_verify():
    token = sign_token("42", SECRET, expires_in=60, now=NOW)
    user, expiry, signature = token.split(".")
    assert verify_token(token, "another-secret", now=NOW) is None
    other_user = sign_token("43", SECRET, expires_in=60, now=NOW).split(".")[0]
    for forged in (f"{other_user}.{expiry}.{signature}",
                   f"{user}.{int(expiry) + 3600}.{signature}",
                   f"{user}.{expiry}.{signature[:-2]}AA",
                   f"{user}.{expiry}.",
                   f"{user}.{expiry}.{signature}.",
                   f"{user}.{expiry}"):
        assert verify_token(forged, SECRET, now=NOW) is None, forged


@pytest.mark.parametrize("garbage", ["", ".", "..", "a.b.c", "é.1.x", "a.-1.b", "a.1e9.b",
                                     "x" * 5000, None, 42, b"a.b.c"])
def test_garbage_is_no_token_and_raises_nothing(garbage):
    assert verify_token(garbage, SECRET) is None


def test_only_the_signer_can_choose_the_expiry_format():
    # A signed body whose expiry is not digits (only a signer could make one) is refused.
    body = f"{auth._b64(b'42')}.soon"
    assert verify_token(f"{body}.{auth._signature(SECRET, body)}", SECRET) is None


@pytest.mark.parametrize("user_id, secret, expires_in", [
    ("", SECRET, 60), (42, SECRET, 60), ("42", "", 60), ("42", b"", 60), ("42", SECRET, 0),
    ("42", SECRET, -1)])
def test_sign_token_refuses_what_would_make_a_useless_token(user_id, secret, expires_in):
    with pytest.raises(ValueError):
        sign_token(user_id, secret, expires_in)


@given(st.text(min_size=1, max_size=50), st.binary(min_size=1, max_size=40),
       st.floats(min_value=1, max_value=10**8))
def test_every_signed_user_id_comes_back(user_id, secret, expires_in):
    assert verify_token(sign_token(user_id, secret, expires_in, now=NOW), secret,
                        now=NOW) == user_id


# -- cookies ---------------------------------------------------------------------


@pytest.mark.parametrize("header, expected", [
    ("sessionid=abc", {"sessionid": "abc"}),
    (" a=1 ; sessionid = abc ;", {"a": "1", "sessionid": "abc"}),
    ('sessionid="a\\"b"', {"sessionid": 'a"b'}),
    ("sessionid=a=b=c", {"sessionid": "a=b=c"}),
    ("sessionid=old; sessionid=new", {"sessionid": "new"}),
    ("novalue; =empty", {"": "empty"}),
    ("", {}),
])
def test_parse_cookie(header, expected):
    assert parse_cookie(header) == expected


@given(st.text(alphabet=st.sampled_from('ab=; "\\\t,é0'), max_size=40))
def test_parse_cookie_reads_like_django(header):
    assert parse_cookie(header) == django_parse_cookie(header)


def test_several_cookie_headers_are_joined_with_semicolons():
    m = message(headers=[["Cookie", "a=1"], ["Host", "x"], ["cookie", "sessionid=abc"]])
    assert cookie_header(m) == "a=1; sessionid=abc"
    assert parse_cookie(cookie_header(m))["sessionid"] == "abc"
    assert cookie_header(message("websocket.receive")) == ""


# -- bearer tokens -------------------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    ({"subprotocols": [BEARER, "tok"]}, "tok"),
    ({"subprotocols": ["chat", BEARER, "tok", "x"]}, "tok"),
    ({"subprotocols": [BEARER], "query_string": "token=q"}, None),  # offered, but empty
    ({"headers": [["Authorization", "Bearer  tok "]]}, "tok"),
    ({"headers": [["authorization", "Basic dXNlcg=="]]}, None),
    ({"query_string": "a=1&token=tok&token=other"}, "tok"),
    ({"query_string": "token="}, None),
    ({"subprotocols": [BEARER, "sub"], "headers": [["Authorization", "Bearer head"]],
      "query_string": "token=query"}, "sub"),
    ({"headers": [["Authorization", "Bearer head"]], "query_string": "token=query"}, "head"),
    ({}, None),
])
def test_bearer_token(content, expected):
    assert bearer_token(message(**content)) == expected


def verify(token):
    return verify_token(token, SECRET)


def connect_with(token, via="query"):
    layer = FakeLayer()
    content = ({"subprotocols": [BEARER, token]} if via == "subprotocol"
               else {"query_string": f"token={token}"})
    return message(layer=layer, **content), layer


def test_token_required_runs_the_consumer_and_remembers_the_user_for_later_events():
    seen = []

    @token_required(verify)
    def connect(m, room):
        seen.append((token_user(m), room))
    m, layer = connect_with(sign_token("42", SECRET))
    connect(m, room="lobby")
    assert seen == [("42", "lobby")]
    assert layer.ops() == []  # a query-string token: no subprotocol to choose
    assert m.session[TOKEN_SESSION_KEY] == "42" and m.session.modified
    later = message("websocket.receive", session=dict(m.session))
    assert token_user(later) == "42"
    assert token_user(message("websocket.receive")) is None


def test_token_required_answers_a_bearer_subprotocol_after_the_consumer():
    @token_required(verify)
    def connect(m):
        m.reply_channel.send(text="hi")
    m, layer = connect_with(sign_token("42", SECRET), via="subprotocol")
    connect(m)
    assert layer.ops() == [(wire.OP_SEND, None), (wire.OP_ACCEPT, BEARER)]


@pytest.mark.parametrize("token", ["", "garbage", sign_token("42", "other-secret"),
                                   sign_token("42", SECRET, 60, now=time.time() - 120)])
@pytest.mark.parametrize("via", ["query", "subprotocol"])
def test_token_required_rejects_a_bad_token_without_running_the_consumer(token, via):
    @token_required(verify)
    def connect(m):
        raise AssertionError("ran")
    m, layer = connect_with(token, via)
    connect(m)
    assert layer.ops() == [(wire.OP_REJECT, None)]
    assert TOKEN_SESSION_KEY not in m.session


# -- login_required ----------------------------------------------------------------


ANONYMOUS = SimpleNamespace(is_authenticated=False)
ADA = SimpleNamespace(is_authenticated=True, username="ada")


@pytest.mark.parametrize("channel, refusal", [
    ("websocket.connect", [(wire.OP_REJECT, None)]),
    ("websocket.receive", [(wire.OP_CLOSE, CLOSE_LOGIN_REQUIRED)]),
    ("http.request", [(wire.OP_START, 403)]),
    ("websocket.disconnect", []),
])
def test_login_required_refuses_anonymous_users_for_each_kind_of_event(channel, refusal):
    calls = []

    @login_required
    def handle(m, **kwargs):
        calls.append((m.user.username, kwargs))
    layer = FakeLayer()
    handle(user_message(channel, layer, ANONYMOUS), room="r")
    assert (calls, layer.ops()) == ([], refusal)
    handle(user_message(channel, layer, ADA), room="r")
    assert calls == [("ada", {"room": "r"})]
    assert layer.ops() == refusal  # nothing more
    assert handle.__name__ == "handle"


def test_require_login_is_the_check_class_based_consumers_call():
    layer = FakeLayer()
    assert require_login(user_message(layer=layer, user=ADA))
    assert layer.ops() == []
    assert not require_login(user_message(layer=layer, user=ANONYMOUS))
    assert layer.ops() == [(wire.OP_REJECT, None)]


@pytest.mark.parametrize("decorator", [login_required, token_required(verify)])
def test_a_decorator_above_consumer_is_an_error_not_an_open_door(decorator):
    def connect(m):
        pass
    routing.consumer("websocket.connect", path="/test/auth/unit")(connect)
    try:
        with pytest.raises(TypeError, match="below @consumer"):
            decorator(connect)
    finally:
        routing.registry.routes[:] = [r for r in routing.registry.routes
                                      if r.func is not connect]


# -- Django ----------------------------------------------------------------------


def child(script, **env):
    """Run `script` in a fresh Python: (exit status, stdout + stderr)."""
    environ = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                            env=dict(environ, **env), capture_output=True, text=True,
                            timeout=CHILD_TIMEOUT)
    return result.returncode, result.stdout + result.stderr


def test_the_runtime_does_not_import_django_until_message_user_and_then_says_what_is_missing():
    status, output = child("""
        import sys
        import zchannels, zchannels.api.auth, zchannels.api.message
        assert "django" not in sys.modules, "imported Django early"
        m = zchannels.api.message.Message({"channel": "websocket.connect", "headers": []}, b"", None)
        m.user
    """)
    assert status == 1
    assert "zchannels.api.auth.DjangoNotConfigured: message.user needs Django settings: mount " \
           "the project with wsgi_app" in output, output


DJANGO_SCRIPT = """
    import django
    from django.conf import settings
    settings.configure(
        SECRET_KEY="old-secret", INSTALLED_APPS=["django.contrib.auth",
        "django.contrib.contenttypes", "django.contrib.sessions"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        SESSION_ENGINE="django.contrib.sessions.backends.db", ALLOWED_HOSTS=["*"],
        USE_TZ=True)
    django.setup()
    from django.contrib.auth.models import User
    from django.contrib.sessions.models import Session as DjangoSession
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from zchannels.api.auth import DJANGO_SESSION_KEY
    from zchannels.api.message import Message

    call_command("migrate", verbosity=0)
    ada = User.objects.create_user("ada", password="lovelace")
    client = Client()
    assert client.login(username="ada", password="lovelace")
    key = client.cookies["sessionid"].value
    store = client.session
    store["color"] = "blue"
    store.save()

    class Layer:
        calls = []
        def to_interface(self, reply_channel, header, payload=None):
            self.calls.append(header)

    def event(channel, cookie=None, session=None):
        content = {"channel": channel, "reply_channel": "i3f9a!17", "path": "/p"}
        if channel in ("websocket.connect", "http.request"):
            content["headers"] = [["Host", "x"]] + ([["Cookie", cookie]] if cookie else [])
        if session:
            content["session"] = session
        return Message(content, b"", Layer())

    # The connect event reads the cookie, once per message.
    connect = event("websocket.connect", f"other=1; sessionid={key}")
    with CaptureQueriesContext(connection) as queries:
        assert connect.user.username == "ada" and connect.user is connect.user
    assert len(queries) == 2, queries.captured_queries  # the session, then the user
    assert connect.django_session["color"] == "blue"
    cached = connect.session[DJANGO_SESSION_KEY]
    assert cached["key"] == key
    assert cached["user"][:2] == [str(ada.pk), "django.contrib.auth.backends.ModelBackend"]
    assert connect.session.modified

    # A later event, in any process: the user from what connect stored.
    session = dict(connect.session)
    receive = event("websocket.receive", session=session)
    with CaptureQueriesContext(connection) as queries:
        assert receive.user.username == "ada"
    assert len(queries) == 1  # just the user: the session is not read again
    assert receive.django_session["color"] == "blue"
    assert not receive.session.modified
    assert event("websocket.disconnect", session=session).user.is_authenticated

    # Only connect events write the session; HTTP requests just read the cookie.
    http = event("http.request", f"sessionid={key}")
    assert http.user.username == "ada" and DJANGO_SESSION_KEY not in http.session

    # No cookie, a forged one, a connect that never looked: anonymous, nothing stored.
    for anonymous in (event("websocket.connect"), event("websocket.connect", "sessionid=forged"),
                      event("websocket.receive")):
        assert not anonymous.user.is_authenticated
    assert event("websocket.connect").django_session is None
    for nobody in (event("websocket.connect"), event("websocket.connect", "sessionid=forged")):
        assert not nobody.user.is_authenticated and DJANGO_SESSION_KEY not in nobody.session

    # A rotated SECRET_KEY still verifies through SECRET_KEY_FALLBACKS, and the
    # browser's session is not cycled (a WebSocket cannot send it a new cookie).
    with override_settings(SECRET_KEY="new-secret", SECRET_KEY_FALLBACKS=["old-secret"]):
        assert event("websocket.connect", f"sessionid={key}").user.username == "ada"
        assert event("websocket.receive", session=session).user.username == "ada"
    assert DjangoSession.objects.filter(session_key=key).exists()

    # A backend no longer configured, or a changed password: anonymous.
    remote = "django.contrib.auth.backends.RemoteUserBackend"
    with override_settings(AUTHENTICATION_BACKENDS=[remote]):
        assert not event("websocket.receive", session=session).user.is_authenticated
    ada.set_password("new-password")
    ada.save()
    assert not event("websocket.receive", session=session).user.is_authenticated
    assert not event("websocket.connect", f"sessionid={key}").user.is_authenticated
    assert DjangoSession.objects.filter(session_key=key).exists()  # read, never flushed
    print("django ok")
"""


def test_message_user_with_a_database_session_engine():
    status, output = child(DJANGO_SCRIPT)
    assert (status, output.strip()) == (0, "django ok"), output


def test_a_short_lived_token_is_valid_for_its_whole_life():
    token = sign_token("42", SECRET, expires_in=0.5, now=NOW)
    assert verify_token(token, SECRET, now=NOW + 0.4) == "42"


def test_a_verifier_that_returns_no_str_is_a_clear_error():
    m, _ = connect_with("tok")
    with pytest.raises(TypeError, match="user id"):
        token_required(lambda token: 42)(lambda m: None)(m)
