"""End to end: a real system whose workers run a Django project (tests/apps/djsite,
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]) checks the Host and Origin of every
WebSocket handshake against ALLOWED_HOSTS (runtime/worker/hosts.py)."""
import os

import pytest
from tornado.httpclient import HTTPRequest

from harness import ROOT, checked_system, echo_once, refused_status, run

pytestmark = pytest.mark.e2e

APPS = os.path.join(ROOT, "tests", "apps")


@pytest.fixture(scope="module")
def site():
    env = {"PYTHONPATH": APPS, "DJANGO_SETTINGS_MODULE": "djsite.settings"}
    # The interface lets these origins through; ALLOWED_HOSTS has the last say.
    server = {"wsgi_app": "djsite.wsgi:application",
              "allowed_origins": ["http://evil.example", "http://localhost"]}
    with checked_system(server=server, env=env) as system:
        yield system


def request(site, **headers):
    return HTTPRequest(site.url("/ws/echo"), headers=headers)


def test_a_host_not_in_allowed_hosts_is_refused_with_403_and_one_in_it_is_accepted(site):
    port = site.port
    before = site.settled_counters("worker").get("disallowed_host", 0)

    async def scenario():
        assert await echo_once(request(site), "plain") == "plain"  # Host: 127.0.0.1:port
        assert await echo_once(request(site, Host=f"localhost:{port}"), "local") == "local"
        assert await refused_status(request(site, Host="evil.example")) == 403
        assert await refused_status(request(site, Host=f"evil.example:{port}")) == 403
        # An Origin the interface allows but ALLOWED_HOSTS does not: refused too.
        assert await refused_status(request(site, Origin="http://evil.example")) == 403
        assert await echo_once(request(site, Origin="http://localhost"), "o") == "o"

    run(scenario())
    counts = site.settled_counters("worker")
    assert counts.get("disallowed_host", 0) - before == 3
    logs = "\n".join(text for name, text in site.logs().items() if name.startswith("worker"))
    assert "Host 'evil.example' is not in ALLOWED_HOSTS; answering 403" in logs
    assert f"Host 'evil.example:{port}' is not in ALLOWED_HOSTS; answering 403" in logs
    assert "Origin 'http://evil.example' is not in ALLOWED_HOSTS; answering 403" in logs
