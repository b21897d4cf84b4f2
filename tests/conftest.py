"""Shared fixtures. End-to-end tests get a real system (see harness.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# The benchmark (scripts/benchkit) is not installed with zchannels; its tests import it here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))

from harness import checked_system  # noqa: E402
from browser import browser  # noqa: E402,F401 (the headless Chromium fixture, for any test)


@pytest.fixture(scope="module")
def system():
    """One real system per test module: the broker, 2 workers, 2 interfaces.

    At the end, any ERROR line or traceback in any process's log that a test did
    not declare with ``system.expect_error(...)`` fails the module's last test.
    """
    with checked_system() as running:
        yield running
