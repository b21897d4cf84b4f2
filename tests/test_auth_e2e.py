"""Login on connect, end to end: a user logs in through the Django test site
(tests/apps/djsite, mounted as the WSGI fallback), and a WebSocket carrying its
session cookie reaches consumers (tests/consumers/auth.py) that see that user;
other sockets are refused at the handshake. Also bearer tokens, without Django."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from harness import (ROOT, checked_system, cookie_header, cookies_of, http_request, read,
                     refused_status, run)
from zchannels.api.auth import BEARER, sign_token

APPS = os.path.join(ROOT, "tests", "apps")
TOKEN_SECRET = "test-token-secret"  # as in tests/consumers/auth.py
MANAGE_TIMEOUT = 60  # seconds for one `python -m django ...` command

USERS = "\n".join([
    "from django.contrib.auth.models import User",
    "User.objects.create_user('ada', password='lovelace')",
    "User.objects.create_user('grace', password='hopper')",
])


@pytest.fixture(scope="module")
def site():
    directory = tempfile.mkdtemp(prefix="zcauth")
    env = {"PYTHONPATH": APPS, "DJANGO_SETTINGS_MODULE": "djsite.settings",
           "DJSITE_DB": os.path.join(directory, "db.sqlite3")}
    try:
        for command in (["migrate", "--noinput"], ["shell", "-c", USERS]):
            subprocess.run([sys.executable, "-m", "django", *command], env=dict(os.environ, **env),
                           check=True, capture_output=True, timeout=MANAGE_TIMEOUT)
        with checked_system(server={"wsgi_app": "djsite.wsgi:application"}, env=env) as system:
            yield system
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def post(site, path, cookies, fields):
    """A form POST through Django's CSRF check, with the csrftoken cookie as the token."""
    return http_request(site.port, "POST", path, body=urlencode(fields).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": cookie_header(cookies), "X-CSRFToken": cookies["csrftoken"]})


def log_in(site, username, password, color=""):
    """Log in through the Django site: its cookies (the session among them)."""
    status, headers, _ = http_request(site.port, "GET", "/django/form")
    assert status == 200
    cookies = cookies_of(headers)
    status, headers, body = post(site, "/django/login", cookies,
                                 {"username": username, "password": password, "color": color})
    assert (status, body.decode()) == (200, username)
    cookies.update(cookies_of(headers))
    assert "sessionid" in cookies
    return cookies


def request(site, path, cookies=None, **kwargs):
    headers = {"Cookie": cookie_header(cookies)} if cookies else {}
    return HTTPRequest(site.url(path), headers=headers, **kwargs)


async def ask(ws, text="?"):
    ws.write_message(text)
    return json.loads(await read(ws))


def test_the_user_of_the_session_cookie_on_connect_and_later_events(site):
    cookies = log_in(site, "ada", "lovelace", color="blue")
    assert http_request(site.port, "GET", "/django/whoami",
                        headers={"Cookie": cookie_header(cookies)})[2] == b"ada"

    async def scenario():
        ws = await websocket_connect(request(site, "/test/auth/whoami", cookies))
        on_connect = json.loads(await read(ws))
        later = [await ask(ws), await ask(ws)]
        ws.close()
        return on_connect, later
    on_connect, later = run(scenario())
    assert on_connect == {"event": "websocket.connect", "user": "ada", "color": "blue"}
    # Receive events carry no cookie: they see what the connect event found.
    assert later == [{"event": "websocket.receive", "user": "ada", "color": "blue"}] * 2


@pytest.mark.parametrize("cookies", [None, {"sessionid": "not-a-signed-session"}],
                         ids=["no cookie", "forged cookie"])
def test_without_a_valid_session_the_user_is_anonymous(site, cookies):
    async def scenario():
        ws = await websocket_connect(request(site, "/test/auth/whoami", cookies))
        answers = [json.loads(await read(ws)), await ask(ws)]
        ws.close()
        return answers
    connect, receive = run(scenario())
    assert (connect["user"], connect["color"]) == (None, None)
    assert (receive["user"], receive["color"]) == (None, None)


@pytest.mark.parametrize("cookies", [None, {"sessionid": "not-a-signed-session"}],
                         ids=["no cookie", "forged cookie"])
@pytest.mark.parametrize("path", ["/test/auth/private", "/test/auth/private-class"],
                         ids=["decorator", "class attribute"])
def test_login_required_refuses_anonymous_handshakes_with_403(site, cookies, path):
    assert run(refused_status(request(site, path, cookies))) == 403


@pytest.mark.parametrize("path", ["/test/auth/private", "/test/auth/private-class"],
                         ids=["decorator", "class attribute"])
def test_login_required_lets_a_logged_in_user_in(site, path):
    cookies = log_in(site, "ada", "lovelace")

    async def scenario():
        ws = await websocket_connect(request(site, path, cookies))
        answer = await ask(ws)
        ws.close()
        return answer
    assert run(scenario())["user"] == "ada"


def test_a_password_change_logs_open_sockets_out(site):
    cookies = log_in(site, "grace", "hopper")

    async def scenario():
        private = await websocket_connect(request(site, "/test/auth/private", cookies))
        whoami = await websocket_connect(request(site, "/test/auth/whoami", cookies))
        await read(whoami)  # its connect answer
        before = [(await ask(private))["user"], (await ask(whoami))["user"]]
        status, _, _ = post(site, "/django/password", cookies, {"password": "new-password"})
        assert status == 200
        after = (await ask(whoami))["user"]
        private.write_message("?")
        closed = await read(private)
        whoami.close()
        return before, after, closed, private.close_code
    before, after, closed, close_code = run(scenario())
    assert before == ["grace", "grace"]
    # The session's password hash no longer verifies: anonymous, and the
    # login_required receive consumer closes the socket with 4403.
    assert (after, closed, close_code) == (None, None, 4403)


def token(user_id="42", **kwargs):
    return sign_token(user_id, TOKEN_SECRET, **kwargs)


async def token_session(target, subprotocols=None):
    ws = await websocket_connect(target, subprotocols=subprotocols)
    subprotocol = ws.selected_subprotocol
    hello = await read(ws)
    ws.write_message("ping")
    echo = await read(ws)
    ws.close()
    return hello, echo, subprotocol


def test_a_valid_token_in_the_query_string_logs_in(site):
    hello, echo, subprotocol = run(token_session(site.url(f"/test/auth/token?token={token()}")))
    assert (hello, echo, subprotocol) == ("hello 42", "42: ping", None)


def test_a_valid_token_as_a_bearer_subprotocol_logs_in(site):
    hello, echo, subprotocol = run(token_session(site.url("/test/auth/token"),
                                                 subprotocols=[BEARER, token("ada")]))
    assert (hello, echo, subprotocol) == ("hello ada", "ada: ping", BEARER)


def test_a_valid_token_in_an_authorization_header_logs_in(site):
    target = HTTPRequest(site.url("/test/auth/token"),
                         headers={"Authorization": f"Bearer {token('7')}"})
    assert run(token_session(target))[:2] == ("hello 7", "7: ping")


@pytest.mark.parametrize("query", [
    "", "?token=", "?token=garbage",
    "?token=" + sign_token("42", "another-secret"),
    "?token=" + token(now=time.time() - 7200),  # expired an hour ago
], ids=["none", "empty", "garbage", "wrong secret", "expired"])
def test_a_missing_or_bad_token_is_refused_with_403(site, query):
    assert run(refused_status(site.url("/test/auth/token" + query))) == 403


def test_a_tampered_bearer_subprotocol_token_is_refused_with_403(site):
    user, expiry, signature = token().split(".")
    forged = ".".join([user, str(int(expiry) + 10**6), signature])
    target = HTTPRequest(site.url("/test/auth/token"),
                         headers={"Sec-WebSocket-Protocol": f"{BEARER}, {forged}"})
    assert run(refused_status(target)) == 403
