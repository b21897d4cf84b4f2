"""Group history without sockets (runtime/broker/history.py): the config, which rule applies,
offsets and epochs, eviction by count, age, bytes and groups, the replay range of a
recovery and every reason it can fail, the position spliced into JSON payloads."""
import json
import os

import pytest

from zchannels.core import config as config_module
from zchannels.broker import history
from zchannels.core import history_rules
from zchannels.wire import positions
from zchannels.core.exceptions import ConfigError
from zchannels.core.history_rules import HistoryConfig, HistoryRule, Rules
from zchannels.api.results import Recovery
from zchannels.core.stats import counters
from history_rig import Clock, clean_counters  # noqa: F401 (an autouse fixture)
from history_rig import keeper

SEND = b'{"op":"send","kind":"text"}'
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "conf", "zchannels.toml")


def send(k, group, payload):
    """What the broker does with a group message: look up, stamp. The position, or None."""
    frames = [group, SEND, payload]
    stamped = k.stamp(frames, k.cache.get(group))
    assert stamped[:3] == frames
    return stamped[3].decode() if len(stamped) == 4 else None


def replayed(frames):
    return [(frames[i + 1], frames[i + 2].decode()) for i in range(0, len(frames), 3)]


# -- config ---------------------------------------------------------------------------------

def test_the_history_table_parses_rules_in_order_with_defaults():
    config = config_module.parse({"history": {"max_bytes": 1000, "groups": [
        {"pattern": "chat.bench-*"},
        {"pattern": "chat.*", "size": 10, "seconds": 60, "key": "_p"}]}}, environ={})
    assert config.history == HistoryConfig(
        groups=(HistoryRule("chat.bench-*"), HistoryRule("chat.*", 10, 60.0, "_p")),
        max_bytes=1000)
    assert config.history.enabled
    assert not config_module.parse({}, environ={}).history.enabled


@pytest.mark.parametrize("table, words", [
    ({"groups": [{"size": 1}]}, "needs pattern"),
    ({"groups": [{"pattern": "a", "size": -1}]}, "size"),
    ({"groups": [{"pattern": "a", "size": True}]}, "size"),
    ({"groups": [{"pattern": "a", "seconds": "1"}]}, "seconds"),
    ({"groups": [{"pattern": "a", "key": "a b"}]}, "key"),
    ({"groups": [{"pattern": "a", "sise": 3}]}, "sise"),
    ({"groups": {"pattern": "a"}}, "list of tables"),
    ({"max_bytes": 0}, "max_bytes"),
    ({"max_groups": 1.5}, "max_groups"),
    ({"keep": 1}, "keep"),
])
def test_mistakes_in_the_history_table_are_config_errors(table, words):
    with pytest.raises(ConfigError, match=words):
        config_module.parse({"history": table}, environ={})


def test_the_first_matching_rule_applies_and_one_that_keeps_nothing_is_an_exception():
    rules = Rules([HistoryRule("chat.bench-*"), HistoryRule("chat.*", size=5)])
    assert rules.rule_for(b"chat.bench-1") is None
    assert rules.rule_for(b"chat.lobby") == HistoryRule("chat.*", size=5)
    assert rules.rule_for(b"news") is None


def test_the_rule_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(history_rules, "MAX_CACHED_NAMES", 3)
    rules = Rules([HistoryRule("*", size=1)])
    for i in range(10):
        rules.rule_for(b"g%d" % i)
        assert len(rules.cache) <= 3


# -- positions ------------------------------------------------------------------------------

def test_offsets_count_up_per_group_within_one_epoch():
    k = keeper(HistoryRule("room.*", size=10))
    a1, b1, a2 = send(k, b"room.a", b"1"), send(k, b"room.b", b"1"), send(k, b"room.a", b"2")
    epoch_a, epoch_b = a1.split(":")[0], b1.split(":")[0]
    assert (a1, a2) == (f"{epoch_a}:1", f"{epoch_a}:2")
    assert b1 == f"{epoch_b}:1" and epoch_b != epoch_a
    assert counters["history_kept"] == 3


def test_a_group_without_history_keeps_nothing_and_costs_one_cached_lookup():
    k = keeper(HistoryRule("room.*", size=10))
    assert send(k, b"other", b"x") is None
    assert k.cache[b"other"] is False  # the broker skips stamp() from now on
    assert not k.rings and k.bytes == 0


def test_a_close_is_not_history():
    k = keeper(HistoryRule("*", size=10))
    frames = [b"g", b'{"op":"close","code":1000}', b""]
    assert k.stamp(frames, None) == frames
    assert k.ring_for(b"g").last == 0


def test_a_new_keeper_starts_new_epochs():
    rule = HistoryRule("*", size=10)
    assert send(keeper(rule), b"g", b"x").split(":")[0] != \
        send(keeper(rule), b"g", b"x").split(":")[0]


def test_parse_position():
    assert positions.parse_position("ab12:7") == ("ab12", 7)
    for bad in ("", "7", ":7", "ab:", "ab:-1", "ab:1.5", None, 7, "a" * 80 + ":1"):
        assert positions.parse_position(bad) is None


# -- bounds ---------------------------------------------------------------------------------

def test_a_group_keeps_its_last_size_messages():
    k = keeper(HistoryRule("*", size=3))
    for i in range(1, 6):
        send(k, b"g", b"m%d" % i)
    ring = k.ring_for(b"g")
    assert [e[0] for e in ring.entries] == [3, 4, 5] and ring.first == 3 and ring.last == 5
    assert counters["history_evicted"] == 2


def test_messages_older_than_seconds_go_on_the_next_message_and_on_the_sweep():
    clock = Clock()
    k = keeper(HistoryRule("*", seconds=10), clock=clock)
    send(k, b"g", b"old")
    clock.now += 6
    send(k, b"g", b"newer")
    clock.now += 5  # "old" is 11 s old now
    send(k, b"g", b"newest")
    assert [e[3] for e in k.ring_for(b"g").entries] == [b"newer", b"newest"]
    clock.now += 20
    k.sweep()
    ring = k.ring_for(b"g")
    assert not ring.entries and ring.last == 3 and k.bytes == 0
    assert counters["history_evicted"] == 3


def test_over_max_bytes_the_least_recently_written_group_loses_its_oldest_first():
    per = history.ENTRY_OVERHEAD + len(SEND) + 10
    k = keeper(HistoryRule("*", size=100), max_bytes=5 * per)
    for i in range(3):
        send(k, b"quiet", b"q%09d" % i)
    for i in range(2):
        send(k, b"busy", b"b%09d" % i)
    assert k.bytes == 5 * per
    send(k, b"busy", b"b%09d" % 2)  # one over: quiet's oldest goes
    assert [e[0] for e in k.ring_for(b"quiet").entries] == [2, 3]
    assert len(k.ring_for(b"busy").entries) == 3
    assert k.bytes <= 5 * per


def test_a_group_emptied_for_bytes_keeps_its_epoch_and_offsets():
    per = history.ENTRY_OVERHEAD + len(SEND) + 10
    k = keeper(HistoryRule("*", size=100), max_bytes=3 * per)
    first = send(k, b"big", b"x" * (10 + 2 * per))  # over its share (max_bytes / 2) alone
    second = send(k, b"small", b"s%09d" % 0)  # over max_bytes: big loses its only message
    assert not k.ring_for(b"big").entries and k.ring_for(b"small").entries
    assert counters.get("history_groups_dropped", 0) == 0
    epoch = first.split(":")[0]
    assert k.recover(b"big", first)[0]["ok"]  # it saw the last message: nothing missed
    assert k.recover(b"big", f"{epoch}:0")[0]["reason"] == positions.REASON_EVICTED
    assert send(k, b"big", b"b%09d" % 1) == f"{epoch}:2"
    assert second.endswith(":1")


def test_at_max_groups_the_least_recently_written_group_is_dropped_whole():
    k = keeper(HistoryRule("*", size=10), max_groups=2)
    send(k, b"a", b"1")
    send(k, b"b", b"1")
    send(k, b"a", b"2")
    send(k, b"c", b"1")
    assert list(k.rings) == [b"a", b"c"]
    assert counters["history_groups_dropped"] == 1


# -- recovery -------------------------------------------------------------------------------

def test_recovery_replays_exactly_what_came_after_the_position_in_order():
    k = keeper(HistoryRule("*", size=100))
    positions = [send(k, b"g", b"m%d" % i) for i in range(1, 8)]
    result, frames = k.recover(b"g", positions[2])
    assert result == {"ok": True, "missed": 4, "position": positions[-1], "key": "pos"}
    assert replayed(frames) == [(b"m%d" % i, positions[i - 1]) for i in range(4, 8)]
    assert frames[0] == SEND
    assert counters["history_replayed"] == 4 and counters["history_recovered"] == 1


def test_recovery_from_the_last_position_replays_nothing_and_from_zero_everything():
    k = keeper(HistoryRule("*", size=100))
    positions = [send(k, b"g", b"m%d" % i) for i in range(1, 4)]
    assert k.recover(b"g", positions[-1]) == (
        {"ok": True, "missed": 0, "position": positions[-1], "key": "pos"}, [])
    epoch = positions[0].split(":")[0]
    _, frames = k.recover(b"g", f"{epoch}:0")
    assert [p for _, p in replayed(frames)] == positions


def test_a_client_without_a_position_learns_where_it_joined():
    k = keeper(HistoryRule("*", size=100))
    result, frames = k.recover(b"new", "")
    assert result["ok"] and frames == [] and result["position"].endswith(":0")
    assert send(k, b"new", b"x") == result["position"][:-1] + "1"


def test_recovery_fails_when_messages_after_the_position_were_evicted():
    k = keeper(HistoryRule("*", size=3))
    positions = [send(k, b"g", b"m%d" % i) for i in range(1, 7)]  # keeps 4, 5, 6
    assert k.recover(b"g", positions[2])[0]["ok"]  # 3: nothing missing
    result, frames = k.recover(b"g", positions[1])  # 2: 3 was evicted
    assert result == {"ok": False, "reason": "evicted", "position": positions[-1],
                      "key": "pos"} and frames == []
    assert counters["history_recovery_failed"] == 1


def test_recovery_after_time_eviction_of_everything_still_works_for_an_up_to_date_client():
    clock = Clock()
    k = keeper(HistoryRule("*", seconds=5), clock=clock)
    positions = [send(k, b"g", b"m%d" % i) for i in range(3)]
    clock.now += 60
    assert k.recover(b"g", positions[-1])[0]["ok"]
    assert k.recover(b"g", positions[-2])[0]["reason"] == "evicted"


@pytest.mark.parametrize("since, reason", [
    ("other:1", "epoch"), ("garbage", "invalid"), ("{epoch}:99", "invalid")])
def test_recovery_fails_for_another_epoch_or_a_position_never_given(since, reason):
    k = keeper(HistoryRule("*", size=100))
    epoch = send(k, b"g", b"m").split(":")[0]
    result, frames = k.recover(b"g", since.format(epoch=epoch))
    assert (result["ok"], result["reason"], frames) == (False, reason, [])


def test_recovery_in_a_group_without_history_fails_plainly():
    k = keeper(HistoryRule("chat.*", size=100))
    result, frames = k.recover(b"news", "x:1")
    assert (result["ok"], result["reason"], frames) == (False, "no_history", [])


# -- what clients see -----------------------------------------------------------------------

@pytest.mark.parametrize("payload, spliced", [
    (b'{"a":1}', b'{"pos":"e:3","a":1}'),
    (b'{}', b'{"pos":"e:3"}'),
    (b' { "a": 1 }', b'{"pos":"e:3", "a": 1 }'),
    (b'{ }', b'{"pos":"e:3"}'),
    (b'[1]', b'[1]'),
    (b'hello', b'hello'),
    (b'', b''),
])
def test_the_position_is_spliced_into_json_objects_only(payload, spliced):
    assert positions.splice(payload, b"pos", b"e:3") == spliced
    if payload.strip().startswith(b"{"):
        assert json.loads(spliced)["pos"] == "e:3"


def test_the_notice_names_the_group_the_reason_and_where_to_go_on_from():
    text = positions.notice("chat.a", "x:4", {"ok": False, "reason": "epoch",
                                            "position": "y:9", "key": "pos"})
    assert json.loads(text) == {"pos": "y:9", "type": "recovery_failed", "group": "chat.a",
                                "since": "x:4", "reason": "epoch", "position": "y:9"}
    assert text.startswith(b'{"pos":"y:9"')


def test_the_recovery_a_consumer_sees():
    answer = {"ok": True, "history": {"ok": True, "missed": 3, "position": "e:9"}}
    assert Recovery.from_answer(answer) == Recovery(True, True, 3, "e:9", None)
    assert Recovery.from_answer(answer)
    failed = {"ok": True, "history": {"ok": False, "reason": "epoch", "position": "e:0"}}
    assert Recovery.from_answer(failed) == Recovery(True, False, 0, "e:0", "epoch")
    closed = {"ok": False, "history": {"ok": True, "missed": 0, "position": "e:9"}}
    assert not Recovery.from_answer(closed)
    assert Recovery.from_answer(closed).reason == "closed"
    bounced = Recovery.from_answer({"ok": False, "bounced": True})
    assert (bool(bounced), bounced.reason) == (False, "unreachable")


def test_the_bench_loads_a_room_with_history_beside_one_without():
    from benchkit import cli
    plain, kept = cli.endpoints("broadcast", "http://h:1", None, history=True)
    assert plain.startswith("ws://h:1/ws/chat/bench-")
    assert kept.startswith("ws://h:1/ws/chat/history-bench-")
    shipped = config_module.load(SHIPPED, environ={}).history
    rules = Rules(shipped.groups)
    assert rules.rule_for(b"chat." + plain.rpartition("/")[2].encode()) is None
    assert rules.rule_for(b"chat." + kept.rpartition("/")[2].encode()) is not None


class FakeClient:
    def __init__(self):
        self.delivered = []
        self.pipeline = type("P", (), {"closed": False})()

    def deliver(self, message):
        self.delivered.append(message)


def test_the_interface_delivers_the_missed_messages_with_positions_or_the_notice():
    from zchannels.interface.positions import Positions
    positions = Positions((HistoryRule("chat.*", size=10),))
    header = {"op": "group_add", "group": "chat.a", "since": "e:1"}
    ok = {"ok": True, "missed": 2, "position": "e:3", "key": "pos"}
    frames = [SEND, b'{"n":2}', b"e:2", SEND, b"plain", b"e:3"]
    client = FakeClient()
    assert positions.recovered(client, header, ok, frames) == ok
    assert [(m.payload, m.header["id"]) for m in client.delivered] == [
        (b'{"pos":"e:2","n":2}', "e:2"), (b"plain", "e:3")]
    member = FakeClient()  # already in the group: had them live
    assert positions.recovered(member, header, ok, frames, member=True)["missed"] == 0
    assert member.delivered == []
    failed = {"ok": False, "reason": "epoch", "position": "f:0", "key": "pos"}
    client = FakeClient()
    positions.recovered(client, header, failed, [])
    [notice] = client.delivered
    assert notice.header["event"] == "recovery_failed" and notice.header["id"] == "f:0"
    assert json.loads(notice.payload)["reason"] == "epoch"
    live = positions.message(b"chat.a", {"op": "send", "kind": "text"}, b'{"a":1}', b"e:4")
    assert live.payload == b'{"pos":"e:4","a":1}' and live.header["position"] == "e:4"
