"""Helpers for the test consumers: append a line to the file the test reads.

The file comes from ZCHANNELS_TEST_RECORD, which the test harness sets for
every process it starts. Each line is one write() to a file opened with
O_APPEND, so lines from both workers interleave but never mix.
"""
import os

RECORD = os.environ.get("ZCHANNELS_TEST_RECORD")


def record(*fields):
    if RECORD is None:
        return
    fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())
    finally:
        os.close(fd)
