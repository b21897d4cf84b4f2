"""A Flask application (tests/apps/flaskapp.py) behind zchannels, through real processes."""
import json
import os

import pytest

from harness import ROOT, checked_system, http_request, read_gated_stream, wait_until


@pytest.fixture(scope="module")
def site():
    env = {"PYTHONPATH": os.path.join(ROOT, "tests", "apps")}
    with checked_system(server={"wsgi_app": "flaskapp:app"}, env=env) as system:
        yield system


def closed(site, path):
    return [r for r in site.records() if r == ["flask-closed", path]]


def test_hello_and_close_is_called(site):
    assert http_request(site.port, "GET", "/flask/hello")[::2] == (200, b"hello from flask")
    wait_until(lambda: closed(site, "/flask/hello"), 5, "the WSGI iterable's close()")


def test_json_post(site):
    status, headers, body = http_request(
        site.port, "POST", "/flask/json", body=json.dumps({"a": [1, 2]}).encode(),
        headers={"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"got": {"a": [1, 2]}, "method": "POST"}
    assert http_request(site.port, "POST", "/flask/json", body=b"{not json",
                        headers={"Content-Type": "application/json"})[0] == 400


def test_cookies(site):
    status, headers, _ = http_request(site.port, "GET", "/flask/cookie?v=mint")
    assert status == 200
    cookie = headers["Set-Cookie"].split(";")[0]
    assert cookie == "flavour=mint"
    assert http_request(site.port, "GET", "/flask/whoami",
                        headers={"Cookie": cookie})[2] == b"flavour=mint"


def test_streaming(site):
    response, first, rest = read_gated_stream(site, "/flask/stream", "flask")
    assert (response.status, first, rest) == (200, b"a\n", b"b\n")
    wait_until(lambda: closed(site, "/flask/stream"), 5, "close() after the stream")


def test_flask_404(site):
    assert http_request(site.port, "GET", "/flask/missing")[0] == 404
