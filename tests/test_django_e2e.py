"""A real Django project (tests/apps/djsite) behind zchannels: every request goes
through the interface, the broker and a worker running Django's WSGI handler."""
import os
import re
import subprocess
import sys
import tempfile
from urllib.parse import urlencode

import pytest

from harness import (ROOT, checked_system, cookie_header, cookies_of, http_request,
                     read_gated_stream, wait_until)

APPS = os.path.join(ROOT, "tests", "apps")


@pytest.fixture(scope="module")
def site():
    static_root = tempfile.mkdtemp(prefix="djstatic")
    env = {"PYTHONPATH": APPS, "DJSITE_STATIC_ROOT": static_root,
           "DJANGO_SETTINGS_MODULE": "djsite.settings"}
    # Django's own deployment step: collect the static files where the interface
    # serves them.
    subprocess.run([sys.executable, "-m", "django", "collectstatic", "--noinput"],
                   env=dict(os.environ, **env), check=True, capture_output=True, timeout=60)
    server = {"wsgi_app": "djsite.wsgi:application", "static_dir": static_root}
    with checked_system(server=server, env=env) as system:
        yield system


def test_form_post_with_csrf_token_and_cookie(site):
    status, headers, body = http_request(site.port, "GET", "/django/form")
    assert status == 200
    cookies = cookies_of(headers)
    assert "csrftoken" in cookies
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    form = urlencode({"csrfmiddlewaretoken": token, "name": "Zoë <b>"})
    status, _, body = http_request(
        site.port, "POST", "/django/submit", body=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Cookie": cookie_header(cookies)})
    assert (status, body.decode()) == (200, "got Zoë &lt;b&gt;")


def test_post_without_csrf_token_is_refused_by_django(site):
    status, _, _ = http_request(site.port, "POST", "/django/submit", body=b"name=x",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403


def test_session_cookie_round_trips(site):
    cookies = {}
    for expected in ("1", "2", "3"):
        status, headers, body = http_request(site.port, "GET", "/django/count",
                                             headers={"Cookie": cookie_header(cookies)})
        assert (status, body.decode()) == (200, expected)
        cookies.update(cookies_of(headers))
    assert "sessionid" in cookies


def test_streaming_response_streams_and_close_is_called(site):
    # The view's generator waits for the gate: its first part came before the rest.
    response, first, rest = read_gated_stream(site, "/django/stream", "django")
    assert (response.status, first, rest) == (200, b"first\n", b"second\n")
    wait_until(lambda: ["django-stream-closed"] in site.records(), 5,
               "the response's close()")


def test_collected_static_files_are_served_by_the_interface(site):
    status, headers, body = http_request(site.port, "GET", "/static/djsite/site.css")
    assert (status, body) == (200, b"body { color: #123456; }\n")
    assert headers["Cache-Control"] == "max-age=3600"
    assert headers["Content-Type"].startswith("text/css")


def test_django_404_and_consumers_keep_their_paths(site):
    assert http_request(site.port, "GET", "/django/nope")[0] == 404
    assert http_request(site.port, "GET", "/hello")[2] == b"hello\n"
    assert http_request(site.port, "HEAD", "/django/count")[2] == b""
