"""`LiveServerTestCase`: a Django ``TransactionTestCase`` with the project's real
processes on a free port, as Channels' ``ChannelsLiveServerTestCase`` and Django's
``LiveServerTestCase`` have a server.

The processes start once per class (as Django's ``LiveServerTestCase`` does) with the
test's Django settings on the test database, and see what the test has committed: a
``TransactionTestCase`` commits, a ``TestCase`` would keep its rows in a transaction
they cannot see. When a test fails, what the processes logged during it is attached to
its exception (a note under the traceback).
"""
from __future__ import annotations

import unittest
from typing import Any, Callable, ClassVar

from django.test import TransactionTestCase
from django.utils.functional import classproperty

from zchannels.testing.live import LiveServer

# unittest leaves the frames of modules that set this out of a failure's traceback, as
# it does its own: the traceback starts at the test's code, not at _callTestMethod below.
__unittest = True


class LiveServerMixin(unittest.TestCase):
    """For a ``django.test.TransactionTestCase`` subclass: ``class MyTests(LiveServerMixin,
    TransactionTestCase)``. `live_server_options`: the `LiveServer` arguments (default:
    the project in the current directory, as configured)."""

    live_server_options: ClassVar[dict[str, Any]] = {}
    live_server: ClassVar[LiveServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        server = LiveServer(**{"django": True, **cls.live_server_options})
        cls.addClassCleanup(server.close)  # runs even if something after this fails
        cls.live_server = server.start()

    @classproperty
    def live_server_url(cls) -> str:
        """``http://127.0.0.1:<port>``"""
        return cls.live_server.url

    @classproperty
    def live_server_ws_url(cls) -> str:
        """``ws://127.0.0.1:<port>``"""
        return cls.live_server.ws_url

    # unittest's own step that runs the test method: the one place that sees its
    # exception before the runner formats it, whichever runner that is.
    def _callTestMethod(self, method: Callable[[], object]) -> None:
        marks = self.live_server.log_marks()
        try:
            super()._callTestMethod(method)  # type: ignore[misc]  # not in typeshed
        except unittest.SkipTest:
            raise
        except Exception as e:
            e.add_note(self.live_server.log_report(since=marks))
            raise


class LiveServerTestCase(LiveServerMixin, TransactionTestCase):
    """A ``TransactionTestCase`` with the project's real processes:
    ``self.live_server_url``, ``self.live_server_ws_url``, ``self.live_server``."""
