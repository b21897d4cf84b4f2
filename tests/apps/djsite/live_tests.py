"""zchannels.testing.LiveServerTestCase on the test site, run by Django's test runner
(tests/test_live_server_django.py runs ``python -m django test djsite.live_tests``
with the settings djsite.live_settings): a user the test creates logs in through the
site's Django view on the live server, and a WebSocket with the session's cookie
reaches a consumer (tests/consumers/auth.py) that reads that user from the database.

With DJSITE_LIVE_FAIL set, one more test fails on purpose after a consumer raised;
DJSITE_LIVE_RECORD names a file where each test writes the server's PIDs and run
directory, for the caller to check that nothing is left.
"""
import asyncio
import json
import os
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

from django.contrib.auth.models import User
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from zchannels.testing import LiveServerTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
TIMEOUT = 10.0  # seconds for any answer of the live server


async def first_message(request, send=None):
    """The first message on a new WebSocket (after sending `send`, if given)."""
    ws = await websocket_connect(request)
    try:
        if send is not None:
            await ws.write_message(send)
        return await asyncio.wait_for(ws.read_message(), TIMEOUT)
    finally:
        ws.close()


class LiveSiteTests(LiveServerTestCase):
    live_server_options = {
        "project": ROOT,
        "consumers": [os.path.join(ROOT, "consumers"), os.path.join(ROOT, "tests", "consumers")],
        "server": {"wsgi_app": "djsite.wsgi:application"},
    }

    def setUp(self):
        record = os.environ.get("DJSITE_LIVE_RECORD")
        if record:
            with open(record, "a") as f:
                f.write(json.dumps({"run_dir": self.live_server.run_dir, "pids": [
                    proc.pid for proc in self.live_server.processes.values()]}) + "\n")

    def log_in(self, username, password):
        """Log in through the site's Django view: the session's cookie header."""
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(self.live_server_url + "/django/form", timeout=TIMEOUT).read()
        token = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
        form = urllib.parse.urlencode({"username": username, "password": password})
        request = urllib.request.Request(self.live_server_url + "/django/login",
                                         data=form.encode(), headers={"X-CSRFToken": token})
        with opener.open(request, timeout=TIMEOUT) as response:
            self.assertEqual(response.read().decode(), username)
        return "; ".join(f"{cookie.name}={cookie.value}" for cookie in jar)

    def test_a_user_made_in_the_test_is_seen_by_the_view_and_the_consumer(self):
        User.objects.create_user("ada", password="lovelace")
        cookie = self.log_in("ada", "lovelace")
        request = HTTPRequest(self.live_server_ws_url + "/test/auth/whoami",
                              headers={"Cookie": cookie})
        answer = json.loads(asyncio.run(first_message(request)))
        self.assertEqual((answer["event"], answer["user"]), ("websocket.connect", "ada"))

    if os.environ.get("DJSITE_LIVE_FAIL"):
        def test_fails_after_a_consumer_raised(self):
            answer = asyncio.run(first_message(self.live_server_ws_url + "/test/fail", "boom"))
            self.assertEqual(answer, "the consumer's answer")  # it closed (1011) instead
