"""The demo chat page (consumers/static/index.html) in a real headless Chromium: it
reconnects by itself after its connection is killed, and shows every message another
tab sent meanwhile, in order, once each (the room keeps history; the page comes back
with ``?since=<the last position it showed>``)."""
import time

import pytest

from harness import checked_system, wait_until

pytestmark = pytest.mark.e2e

HISTORY = [{"pattern": "chat.*", "size": 1000}]
ROOM = "browser"
MESSAGES = 20  # sent by the other tab while the first one is away
TIMEOUT_MS = 15_000  # any wait on a page
MAX_TRIES = 20  # tabs opened until one lands on the other interface (SO_REUSEPORT is random)


@pytest.fixture(scope="module")
def system():
    with checked_system(history=HISTORY, interfaces=2) as running:
        yield running


def connections(system):
    return [system.settled_counters(f"interface-{i}").get("connections", 0) for i in range(2)]


def open_chat(context, system, name):
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"http://127.0.0.1:{system.port}/")
    page.fill("#room", ROOM)
    page.fill("#name", name)
    page.click("#join button")
    page.wait_for_function(f"document.getElementById('status').textContent"
                           f" === 'connected to room {ROOM}'")
    return page


def lines_from(page, user):
    return page.eval_on_selector_all(
        "#log div", f"ds => ds.map(d => d.textContent).filter(t => t.startsWith('{user}: '))")


def test_the_chat_page_shows_everything_sent_while_its_connection_was_killed(system, browser):
    context = browser.new_context()
    try:
        alice = open_chat(context, system, "alice")
        wait_until(lambda: sorted(connections(system)) == [0, 1], 10, "alice's connection")
        home = connections(system).index(1)
        for _ in range(MAX_TRIES):  # bob on the other interface, which stays up
            bob = open_chat(context, system, "bob")
            if wait_until(lambda: sum(connections(system)) == 2 and connections(system),
                          10, "bob's connection")[home] == 1:
                break
            bob.close()
            wait_until(lambda: sum(connections(system)) == 1, 10, "bob to be gone")
        else:
            raise AssertionError(f"{MAX_TRIES} tabs, all on alice's interface")
        bob.evaluate("document.getElementById('text').value = 'before';"
                     "document.getElementById('say').requestSubmit()")
        alice.wait_for_function("[...document.querySelectorAll('#log div')]"
                                ".some(d => d.textContent === 'bob: before')")

        system.kill(f"interface-{home}")  # its TCP connections die with it
        alice.wait_for_function("document.getElementById('status').textContent"
                                ".includes('reconnecting in')")
        sent = [f"while away {i}" for i in range(MESSAGES)]
        bob.evaluate("""(texts) => {
            const input = document.getElementById('text');
            const form = document.getElementById('say');
            for (const t of texts) { input.value = t; form.requestSubmit(); }
        }""", sent)
        bob.wait_for_function(f"[...document.querySelectorAll('#log div')]"
                              f".filter(d => d.textContent.startsWith('bob: ')).length"
                              f" === {MESSAGES + 1}")
        # Bob has them all back while alice is still away: she missed them live.
        assert "reconnecting in" in alice.text_content("#status")

        alice.wait_for_function(f"document.getElementById('status').textContent"
                                f" === 'connected to room {ROOM}'")
        expected = ["bob: before"] + [f"bob: {t}" for t in sent]
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while lines_from(alice, "bob") != expected:
            assert time.monotonic() < deadline, lines_from(alice, "bob")
            time.sleep(0.1)
        assert "could not be recovered" not in alice.text_content("#log")
    finally:
        context.close()
        for i in range(2):
            if system.processes[f"interface-{i}"].poll() is not None:
                system.restart(f"interface-{i}")
