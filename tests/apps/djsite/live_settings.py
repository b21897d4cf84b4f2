"""The test site for zchannels.testing.LiveServerTestCase (djsite/live_tests.py): the
test database in a file, DJSITE_TEST_DB, which the live server's processes open too
(Django's test database for SQLite is otherwise in memory, the test process's own)."""
import os

from djsite.settings import *  # noqa: F401,F403
from djsite.settings import DATABASES, LOGGING

DATABASES = {"default": {**DATABASES["default"],
                         "TEST": {"NAME": os.environ["DJSITE_TEST_DB"]}}}
# As Django's logging docs advise: the site's LOGGING (disable_existing_loggers True by
# default) would otherwise silence the zchannels loggers of a worker that sets Django up
# after them, and the consumer's traceback a failed test shows with them.
LOGGING = {**LOGGING, "disable_existing_loggers": False}
