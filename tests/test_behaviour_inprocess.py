"""The shared behaviour scenarios (tests/behaviour.py) in-process: zchannels.testing's
TestServer is the backend, with the demo and test consumers."""
import pytest

from behaviour import SCENARIOS
from harness import DEMO_CONSUMERS, TEST_CONSUMERS
from zchannels.testing import TestServer


@pytest.fixture
def backend():
    # The with-block fails the test if a consumer raised and the scenario did not
    # declare it with expect_error, as checked_system does end to end.
    with TestServer(consumers=[DEMO_CONSUMERS, TEST_CONSUMERS]) as server:
        yield server


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_behaviour(scenario, backend):
    scenario(backend)
