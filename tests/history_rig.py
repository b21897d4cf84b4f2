"""What the history unit tests share: a fake clock, clean counters, a Keeper."""
import pytest

from zchannels.broker.history import Keeper
from zchannels.core.history_rules import HistoryConfig
from zchannels.core.stats import counters


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def clean_counters():
    counters.clear()
    yield
    counters.clear()


def keeper(*rules, clock=None, **limits):
    return Keeper(HistoryConfig(groups=tuple(rules), **limits), clock=clock or Clock())
