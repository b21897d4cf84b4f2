"""A real headless Chromium for the tests that drive pages (Debian's chromium, driven
by Playwright's Python API; Playwright's own browser download is never used).

``scripts/bootstrap test`` installs chromium with apt-get when it runs as root (CI
does); elsewhere, install it (``apt-get install chromium``) or set
``ZCHANNELS_CHROMIUM`` to a Chromium binary. A missing browser fails the test that
needs it, with that advice: it is never a skip.
"""
from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest

# What the tests need of the browser, and nothing that reaches outside the machine.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str:
    path = os.environ.get("ZCHANNELS_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium: install it (apt-get install chromium; scripts/bootstrap "
                    "test does it when run as root) or set ZCHANNELS_CHROMIUM", pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator["object"]:
    """One headless Chromium per test module, closed at the end."""
    from playwright.sync_api import sync_playwright
    path = chromium_path()
    with sync_playwright() as p:  # Playwright gives the browser a new, temporary profile
        launched = p.chromium.launch(executable_path=path, args=FLAGS, timeout=30_000)
        try:
            yield launched
        finally:
            launched.close()
