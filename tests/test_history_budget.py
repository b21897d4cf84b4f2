"""History budgets without sockets (runtime/broker/history.py): no sender can take another
group's history. A budget per group (bytes and messages); over the global `max_bytes`
only the groups over their share lose messages, the least recently written first; what
one connection may add per second; messages too large to keep. The attack of issue 21
(one client floods its own room) leaves every other room recoverable."""
import logging
import random

import pytest

from zchannels.core import config as config_module
from zchannels.broker import history
from zchannels.core.exceptions import ConfigError
from zchannels.core.history_rules import HistoryRule
from zchannels.core.stats import counters
from history_rig import Clock, clean_counters  # noqa: F401 (an autouse fixture)
from history_rig import keeper as history_keeper

SEND = b'{"op":"send","kind":"text"}'
PER = history.ENTRY_OVERHEAD + len(SEND) + 10  # what a 10-byte message costs
ALL = HistoryRule("*", size=1000)
UNLIMITED = {"connection_bytes_per_second": 0.0, "connection_messages_per_second": 0.0}


def keeper(*rules, clock=None, **limits):
    return history_keeper(*(rules or (ALL,)), clock=clock, **limits)


def send(k, group, payload=b"m%09d" % 0, origin=None):
    """What the broker does with a group message: the position it went out with."""
    frames = [group, SEND, payload]
    stamped = k.stamp(frames, k.cache.get(group), *([] if origin is None else [origin]))
    assert len(stamped) == 4 and stamped[:3] == [group, SEND, payload]
    return stamped[3].decode()


def kept(k, group):
    return [entry[0] for entry in k.ring_for(group).entries]


def check_invariants(k):
    """Within max_bytes; each ring's and the total's bytes add up; `over` is exactly the
    rings over their share, in the order they were last written."""
    assert k.bytes <= k.config.max_bytes
    assert k.bytes == sum(ring.bytes for ring in k.rings.values())
    for ring in k.rings.values():
        assert ring.bytes == sum(history.entry_bytes(e) for e in ring.entries)
        assert len(ring.entries) <= ring.max_messages
    if not k.stale:
        assert list(k.over) == [g for g, r in k.rings.items() if r.bytes > k.share]


# -- config ---------------------------------------------------------------------------------

def test_the_budget_keys_parse_with_their_defaults():
    parsed = config_module.parse({"history": {"groups": [{"pattern": "*", "size": 5}]}},
                                 environ={}).history
    assert (parsed.group_max_bytes, parsed.group_max_messages, parsed.message_max_bytes,
            parsed.connection_bytes_per_second, parsed.connection_messages_per_second) == (
        1024 * 1024, 10_000, 64 * 1024, 128 * 1024, 100.0)
    parsed = config_module.parse({"history": {
        "group_max_bytes": 5000, "group_max_messages": 7, "message_max_bytes": 5000,
        "connection_bytes_per_second": 0, "connection_messages_per_second": 0.5}},
        environ={}).history
    assert (parsed.group_max_bytes, parsed.group_max_messages, parsed.message_max_bytes,
            parsed.connection_bytes_per_second, parsed.connection_messages_per_second) == (
        5000, 7, 5000, 0.0, 0.5)


@pytest.mark.parametrize("table, words", [
    ({"group_max_bytes": 0}, "group_max_bytes must be a whole number"),
    ({"group_max_messages": 2.5}, "group_max_messages must be a whole number"),
    ({"message_max_bytes": True}, "message_max_bytes must be a whole number"),
    ({"connection_bytes_per_second": -1}, "connection_bytes_per_second must be a number"),
    ({"connection_messages_per_second": "9"}, "connection_messages_per_second must be a"),
    ({"connection_messages_per_second": float("inf")}, "connection_messages_per_second must"),
    ({"message_max_bytes": 2000, "group_max_bytes": 1000}, "could never be kept"),
    ({"group_max_messages": 10, "groups": [{"pattern": "a", "size": 11}]},
     "#1 size \\(11\\) is larger than \\[history\\] group_max_messages \\(10\\)"),
])
def test_mistakes_in_the_budget_keys_are_config_errors(table, words):
    with pytest.raises(ConfigError, match=words):
        config_module.parse({"history": table}, environ={})


# -- a budget per group ---------------------------------------------------------------------

def test_a_group_without_a_size_keeps_at_most_group_max_messages():
    k = keeper(HistoryRule("*", seconds=3600), group_max_messages=3)
    for i in range(5):
        send(k, b"g", b"m%09d" % i)
    assert kept(k, b"g") == [3, 4, 5] and counters["history_evicted"] == 2


def test_a_group_over_group_max_bytes_loses_its_own_oldest_and_no_other_group_anything():
    k = keeper(group_max_bytes=3 * PER, message_max_bytes=3 * PER)
    send(k, b"other")
    for i in range(6):
        send(k, b"flood", b"f%09d" % i)
    assert kept(k, b"flood") == [4, 5, 6] and k.ring_for(b"flood").bytes == 3 * PER
    assert kept(k, b"other") == [1]
    big = b"x" * (3 * PER - PER + 10)  # alone, it fills the group's budget
    send(k, b"flood", big)
    assert kept(k, b"flood") == [7]
    check_invariants(k)


# -- over max_bytes: only groups over their share lose ------------------------------------

def test_over_max_bytes_a_group_within_its_share_loses_nothing_however_old():
    k = keeper(max_bytes=6 * PER)
    send(k, b"quiet")  # the least recently written from now on, and within its share
    for i in range(20):
        send(k, b"busy", b"b%09d" % i)
        check_invariants(k)
    assert kept(k, b"quiet") == [1]
    assert kept(k, b"busy") == list(range(16, 21))  # the rest of max_bytes
    assert counters.get("history_groups_dropped", 0) == 0


def test_among_the_groups_over_their_share_the_least_recently_written_loses_first():
    k = keeper(max_bytes=9 * PER)  # three groups: a share of 3 messages each
    send(k, b"quiet")
    for i in range(4):
        send(k, b"old", b"o%09d" % i)
    for i in range(4):
        send(k, b"new", b"n%09d" % i)  # 9 messages now: exactly max_bytes
    assert k.bytes == 9 * PER
    send(k, b"new", b"n%09d" % 4)  # one over: "old" is over its share and written longer ago
    assert kept(k, b"old") == [2, 3, 4] and kept(k, b"new") == [1, 2, 3, 4, 5]
    send(k, b"new", b"n%09d" % 5)  # "old" is within its share now: "new" loses its own
    assert kept(k, b"old") == [2, 3, 4] and kept(k, b"new") == [2, 3, 4, 5, 6]
    assert kept(k, b"quiet") == [1]
    check_invariants(k)


def test_the_share_is_max_bytes_divided_among_the_groups_with_history_now():
    k = keeper(max_bytes=12 * PER)
    for i in range(6):
        send(k, b"a", b"a%09d" % i)  # 6: within a share of 12 (one group), then of 6 (two)
    for i in range(6):
        send(k, b"b", b"b%09d" % i)
    assert len(kept(k, b"a")) == 6 and k.bytes == 12 * PER
    for group in (b"c", b"d"):  # four groups: a share of 3 each; a and b are over it
        send(k, group)
    assert len(kept(k, b"a")) == 4 and len(kept(k, b"b")) == 6  # a, written first, lost 2
    assert k.share == 3 * PER
    check_invariants(k)


def test_the_attack_one_sender_floods_its_room_and_every_other_room_still_recovers():
    """Issue 21: 70 messages of 1 MB to one room emptied every other room's history.
    Scaled down: rooms with a little history each, then a flood of large messages, and
    of many small ones, into one room; every other room recovers exactly."""
    k = keeper(HistoryRule("chat.*", size=1000, seconds=3600), max_bytes=50 * PER,
               group_max_bytes=40 * PER, message_max_bytes=5 * PER)
    seen = {}
    for room in range(5):
        group = b"chat.victim%d" % room
        seen[group] = send(k, group, b'{"n":0}')
        for n in range(1, 4):
            send(k, group, b'{"n":%d}' % n)
    for i in range(70):  # too large: none kept
        send(k, b"chat.attacker1", b"x" * (6 * PER), origin=b"i1!9")
    for i in range(1000):  # small enough, and the connection's allowance is off
        send(k, b"chat.attacker1", b"y" * (PER // 2), origin=b"i1!9")
        check_invariants(k)
    assert counters["history_too_large"] == 70
    for group, since in seen.items():
        result, frames = k.recover(group, since)
        assert result["ok"] and result["missed"] == 3, (group, result)
        assert [frames[i + 1] for i in range(0, len(frames), 3)] == [
            b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert counters.get("history_groups_dropped", 0) == 0


def test_many_groups_random_traffic_keeps_every_bound_and_the_share_promise():
    rng = random.Random(21)
    k = keeper(HistoryRule("*", size=50), max_bytes=200 * PER, group_max_bytes=60 * PER,
               message_max_bytes=20 * PER)
    for step in range(3000):
        group = b"g%d" % rng.randrange(12)
        before = {g: (r.bytes, kept(k, g)) for g, r in k.rings.items() if g != group}
        share_before = k.config.max_bytes // max(1, len(k.rings) + (group not in k.rings))
        send(k, group, b"z" * rng.choice((1, 10, 100, 400, 30 * PER)))
        check_invariants(k)
        for g, (size, offsets) in before.items():
            if size <= share_before:  # within its share: another's message took nothing
                assert kept(k, g) == offsets, (step, g)


def test_groups_dropped_at_max_groups_keep_the_share_bookkeeping_right():
    rng = random.Random(7)
    k = keeper(HistoryRule("*", size=50), max_bytes=40 * PER, max_groups=6)
    for _ in range(3000):
        send(k, b"g%d" % rng.randrange(20), b"z" * rng.choice((1, 10, 100, 400)))
        check_invariants(k)
    assert counters["history_groups_dropped"] > 100 and len(k.rings) == 6


# -- what one connection may add per second ----------------------------------------------

def test_a_connection_over_its_messages_per_second_is_kept_out_then_allowed_again():
    clock = Clock()
    k = keeper(clock=clock, connection_messages_per_second=5,
               connection_bytes_per_second=0)
    positions = [send(k, b"room", origin=b"i1!1") for _ in range(8)]
    assert positions[-1].endswith(":8")  # every one went out, with its position
    assert counters["history_kept"] == 5 and counters["history_over_rate"] == 3
    assert kept(k, b"room") == []  # no gaps: the older ones went with the first kept out
    send(k, b"room", origin=b"i2!1")  # another connection is not limited by it
    assert kept(k, b"room") == [9]
    send(k, b"room")  # nor is a message not sent for a connection
    clock.now += 0.2  # one more message's worth
    send(k, b"room", origin=b"i1!1")
    assert kept(k, b"room") == [9, 10, 11]
    send(k, b"room", origin=b"i1!1")
    assert kept(k, b"room") == [] and counters["history_over_rate"] == 4


def test_a_connection_over_its_bytes_per_second_may_overdraw_once_then_waits():
    clock = Clock()
    k = keeper(clock=clock, connection_bytes_per_second=1000,
               connection_messages_per_second=0, message_max_bytes=4000)
    send(k, b"room", b"a" * 900, origin=b"i1!1")
    send(k, b"room", b"b" * 900, origin=b"i1!1")  # 100 left: kept, 800 overdrawn
    send(k, b"room", b"c" * 10, origin=b"i1!1")
    assert counters["history_kept"] == 2 and counters["history_over_rate"] == 1
    clock.now += 0.5  # 500 earned: still 300 overdrawn (and 10 + 27 not taken)
    send(k, b"room", b"d" * 10, origin=b"i1!1")
    assert counters["history_over_rate"] == 2
    clock.now += 0.5
    send(k, b"room", b"e" * 10, origin=b"i1!1")
    assert kept(k, b"room") == [5]


def test_the_connection_table_forgets_full_allowances_and_is_bounded(monkeypatch):
    clock = Clock()
    k = keeper(clock=clock, connection_messages_per_second=10)
    for conn in range(20):
        send(k, b"room", origin=b"i1!%d" % conn)
    assert len(k.allowances.left) == 20
    clock.now += 0.05
    k.swept = -1e9
    k.sweep()  # not full yet: 0.05 s earned half a message
    assert len(k.allowances.left) == 20
    clock.now += 1
    k.swept = -1e9
    k.sweep()
    assert k.allowances.left == {}
    monkeypatch.setattr(history, "MAX_SENDERS", 3)
    for conn in range(10):
        send(k, b"room", origin=b"i1!%d" % conn)
        assert len(k.allowances.left) <= 3


def test_rates_of_zero_mean_no_limit():
    k = keeper(**UNLIMITED)
    for _ in range(1000):
        send(k, b"room", origin=b"i1!1")
    assert counters.get("history_over_rate", 0) == 0 and not k.allowances.left


# -- messages too large to keep -------------------------------------------------------------

def test_a_message_larger_than_message_max_bytes_goes_out_but_is_kept_out():
    k = keeper(message_max_bytes=100)
    first = send(k, b"room", b"a")
    send(k, b"room", b"b")
    big = send(k, b"room", b"x" * (101 - len(SEND)))
    assert big.endswith(":3") and counters["history_too_large"] == 1
    assert kept(k, b"room") == [] and k.bytes == 0
    result, _ = k.recover(b"room", first)  # it would miss the large one: told so
    assert (result["ok"], result["reason"]) == (False, history.REASON_EVICTED)
    after = send(k, b"room", b"x" * (100 - len(SEND)))  # exactly the limit: kept
    result, frames = k.recover(b"room", big)
    assert result["ok"] and frames[2].decode() == after


def test_a_close_is_never_kept_out():
    k = keeper(message_max_bytes=100, connection_messages_per_second=1)
    for _ in range(3):
        frames = [b"room", b'{"op":"close","code":1000}', b""]
        assert k.stamp(frames, None, b"i1!1") == frames
    assert counters.get("history_over_rate", 0) == 0


# -- visible ----------------------------------------------------------------------------------

def test_messages_kept_out_are_logged_at_most_once_per_interval(caplog):
    clock = Clock()
    k = keeper(clock=clock, connection_messages_per_second=1, message_max_bytes=100)
    caplog.set_level(logging.WARNING, "zchannels.history")
    for _ in range(500):
        send(k, b"chat.flood", origin=b"i1!7")
    send(k, b"chat.flood", b"x" * 200)
    warnings = [r for r in caplog.records if r.name == "zchannels.history"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "i1!7" in warnings[0].getMessage() and "chat.flood" in warnings[0].getMessage()
    clock.now += history.REPORT_INTERVAL / 2
    k.swept = -1e9
    k.sweep()
    assert len([r for r in caplog.records if r.name == "zchannels.history"]) == 1
    clock.now += history.REPORT_INTERVAL / 2
    k.swept = -1e9
    k.sweep()  # the rest, in one line: 498 over the rate, 1 too large
    second = [r for r in caplog.records if r.name == "zchannels.history"][1].getMessage()
    assert "kept 499 group message(s)" in second
    assert "history_over_rate 498" in second and "history_too_large 1" in second
    assert "a process (not for a connection)" in second
    assert counters["history_over_rate"] == 499 and counters["history_too_large"] == 1
