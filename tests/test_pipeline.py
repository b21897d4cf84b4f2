"""The per-connection event pipeline (runtime/pipeline.py), driven without sockets."""
from hypothesis import given, settings
from hypothesis import strategies as st

from zchannels.interface.pipeline import AckResult, Limits, Overdue, Overrun, Pipeline, Refusal

LIMITS = Limits(max_queued_events=3, event_timeout=10.0)
CONNECT = ("websocket.connect", "", b"", b'{"channel":"websocket.connect"}')
REQUEST = ("http.request", "", b"body", b'{"channel":"http.request"}')
DISCONNECT = ("websocket.disconnect", "", b"", None)


def receive(n):
    return ("websocket.receive", "text", b"%d" % n, None)


class Pool:
    """Stands in for the pool sockets: records what it is handed; refuses the channels
    in `full`, and the next `refuse` events whatever their channel (a pool whose
    buffer was full for a moment)."""

    def __init__(self):
        self.sent = []  # (event, sequence) it took
        self.offered = 0
        self.full = set()
        self.refuse = 0

    def __call__(self, event, sequence):
        self.offered += 1
        if self.refuse:
            self.refuse -= 1
            return False
        if event[0] in self.full:
            return False
        self.sent.append((event, sequence))
        return True

    def channels(self):
        return [event[0] for event, _ in self.sent]


def connected(now=0.0):
    """A pipeline whose connect event has been dispatched and acknowledged."""
    pipeline, pool = Pipeline(), Pool()
    pipeline.push(CONNECT, LIMITS)
    pipeline.dispatch(pool, now, LIMITS)
    assert pipeline.ack(1, 0, False, None) is not None
    return pipeline, pool


def test_a_pipeline_has_no_instance_dict():
    assert not hasattr(Pipeline(), "__dict__")  # one per connection: memory matters


def test_events_reach_the_pool_in_push_order_connect_first_disconnect_last():
    pipeline, pool = Pipeline(), Pool()
    pipeline.push(CONNECT, LIMITS)
    pipeline.dispatch(pool, 0.0, LIMITS)
    pipeline.push(receive(1), LIMITS)
    pipeline.push(receive(2), LIMITS)
    assert pipeline.close("websocket.disconnect", 1.0)
    for seq in (1, 2, 3, 4):
        assert pipeline.ack(seq, 0, False, None) is not None
        pipeline.dispatch(pool, 1.0, LIMITS)
    assert pool.sent == [(CONNECT, 1), (receive(1), 2), (receive(2), 3), (DISCONNECT, 4)]
    assert pipeline.finished()


def test_at_most_one_event_in_flight():
    pipeline, pool = Pipeline(), Pool()
    pipeline.push(CONNECT, LIMITS)
    assert pipeline.dispatch(pool, 5.0, LIMITS) is None
    assert (pipeline.in_flight, pipeline.sequence, pipeline.in_flight_since) == \
        ("websocket.connect", 1, 5.0)
    assert pipeline.connect_delivered
    pipeline.push(receive(1), LIMITS)
    pipeline.dispatch(pool, 6.0, LIMITS)
    assert pool.offered == 1 and pipeline.queue == [receive(1)]
    pipeline.ack(1, 0, False, None)
    pipeline.dispatch(pool, 7.0, LIMITS)
    assert pool.sent[-1] == (receive(1), 2) and pipeline.in_flight_since == 7.0


def test_an_ack_naming_an_older_sequence_is_late_and_releases_nothing():
    pipeline, pool = connected()
    pipeline.push(receive(1), LIMITS)
    pipeline.push(receive(2), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)  # receive 1 is event 2
    assert pipeline.ack(1, 0, False, None) is None
    assert pipeline.in_flight == "websocket.receive"
    pipeline.dispatch(pool, 1.0, LIMITS)
    assert pool.sent[-1] == (receive(1), 2)
    assert pipeline.ack(2, 0, False, None) == AckResult("websocket.receive", 0, False)
    pipeline.dispatch(pool, 1.0, LIMITS)
    assert pool.sent[-1] == (receive(2), 3)


def test_an_ack_with_nothing_in_flight_is_late():
    pipeline, _ = connected()
    assert pipeline.ack(1, 0, False, None) is None
    assert Pipeline().ack(0, 0, False, None) is None


def test_refused_connect_is_dropped_and_answered_503():
    pipeline, pool = Pipeline(), Pool()
    pool.full.add("websocket.connect")
    pipeline.push(CONNECT, LIMITS)
    assert pipeline.dispatch(pool, 0.0, LIMITS) is Refusal.CONNECT
    assert pipeline.queue == [] and pipeline.in_flight is None
    assert not pipeline.connect_delivered and pipeline.sequence == 0


def test_refused_receive_drops_the_receives_behind_it():
    pipeline, pool = connected()
    for n in (1, 2, 3):
        pipeline.push(receive(n), LIMITS)
    pool.refuse = 1  # the pool would take receive 2: it must not get it without receive 1
    assert pipeline.dispatch(pool, 1.0, LIMITS) is Refusal.RECEIVE
    assert pipeline.queue == [] and pipeline.in_flight is None
    assert pool.offered == 2  # the connect, then receive 1


def test_refused_receive_keeps_a_queued_disconnect_and_dispatches_it():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    for n in (1, 2):
        pipeline.push(receive(n), LIMITS)
    pipeline.close("websocket.disconnect", 2.0)
    pool.refuse = 1
    pipeline.ack(2, 0, False, None)
    assert pipeline.dispatch(pool, 2.0, LIMITS) is Refusal.RECEIVE
    assert pool.sent[-1] == (DISCONNECT, 3)  # numbered after the last event dispatched
    assert pipeline.queue == []


def test_refused_receive_then_refused_disconnect_returns_the_disconnects_refusal():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    pipeline.push(receive(1), LIMITS)
    pipeline.close("websocket.disconnect", 2.0)
    pool.full.update(("websocket.receive", "websocket.disconnect"))
    pipeline.ack(2, 0, False, None)
    # The client is gone: what matters is that the disconnect is offered again.
    assert pipeline.dispatch(pool, 2.0, LIMITS) is Refusal.RETRY_LATER
    assert pipeline.queue == [DISCONNECT]


def test_refused_request_is_dropped_and_answered_503():
    pipeline, pool = Pipeline(), Pool()
    pool.full.add("http.request")
    pipeline.push(REQUEST, LIMITS)
    assert pipeline.dispatch(pool, 0.0, LIMITS) is Refusal.REQUEST
    assert pipeline.queue == [] and not pipeline.connect_delivered
    assert pipeline.close("http.disconnect", 0.0)
    assert pipeline.queue == [] and pipeline.finished()


def test_refused_disconnect_within_event_timeout_is_kept_and_redispatched_later():
    for channel in ("websocket.disconnect", "http.disconnect"):
        pipeline, pool = connected()
        pool.full.add(channel)
        pipeline.close(channel, 100.0)
        assert pipeline.dispatch(pool, 100.0, LIMITS) is Refusal.RETRY_LATER
        assert pipeline.dispatch(pool, 109.9, LIMITS) is Refusal.RETRY_LATER
        assert pipeline.queue == [(channel, "", b"", None)] and not pipeline.finished()
        pool.full.clear()
        assert pipeline.dispatch(pool, 109.95, LIMITS) is None
        assert pool.sent[-1] == ((channel, "", b"", None), 2)
        assert pipeline.ack(2, 0, False, None) is not None
        assert pipeline.finished()


def test_refused_disconnect_after_event_timeout_is_lost():
    pipeline, pool = connected()
    pool.full.add("websocket.disconnect")
    pipeline.close("websocket.disconnect", 100.0)
    assert pipeline.dispatch(pool, 110.0, LIMITS) is Refusal.DISCONNECT_LOST
    assert pipeline.queue == [] and pipeline.finished()


def test_refused_disconnect_while_stopping_is_lost():
    pipeline, pool = connected()
    pool.full.add("websocket.disconnect")
    pipeline.close("websocket.disconnect", 100.0)
    assert pipeline.dispatch(pool, 100.0, LIMITS, stopping=True) is Refusal.DISCONNECT_LOST
    assert pipeline.finished()


def test_reading_pauses_at_max_queued_events_and_resumes_below_it():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)  # in flight; the next ones wait
    assert not pipeline.push(receive(1), LIMITS)
    assert not pipeline.push(receive(2), LIMITS)
    assert pipeline.push(receive(3), LIMITS)  # 3 queued: max_queued_events
    assert not pipeline.should_resume(LIMITS)
    pipeline.ack(2, 0, False, None)
    pipeline.dispatch(pool, 2.0, LIMITS)
    assert len(pipeline.queue) == 2 and pipeline.should_resume(LIMITS)


def test_event_timeout_drops_queued_receives_but_the_disconnect_waits_for_the_ack():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 100.0, LIMITS)
    pipeline.push(receive(1), LIMITS)
    pipeline.push(receive(2), LIMITS)
    assert pipeline.sweep(110.0, LIMITS) is None  # not past event_timeout yet
    assert pipeline.sweep(110.5, LIMITS) == Overrun(Overdue.TIMED_OUT, "websocket.receive", 2)
    assert pipeline.overdue and pipeline.queue == []
    assert pipeline.sweep(111.5, LIMITS) is None  # reported once
    pipeline.close("websocket.disconnect", 112.0)
    pipeline.dispatch(pool, 112.0, LIMITS)
    assert pool.sent[-1] == (receive(0), 2) and pipeline.queue == [DISCONNECT]
    assert pipeline.ack(2, 0, False, None) == AckResult("websocket.receive", 0, False)
    assert not pipeline.overdue
    pipeline.dispatch(pool, 113.0, LIMITS)
    assert pool.sent[-1] == (DISCONNECT, 3)


def test_an_event_unanswered_for_twice_event_timeout_is_abandoned_and_the_disconnect_released():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 100.0, LIMITS)
    assert pipeline.sweep(111.0, LIMITS).stage is Overdue.TIMED_OUT
    pipeline.close("websocket.disconnect", 112.0)
    assert pipeline.sweep(119.0, LIMITS) is None
    assert pipeline.sweep(120.5, LIMITS) == Overrun(Overdue.ABANDONED, "websocket.receive", 0)
    assert pipeline.in_flight is None and not pipeline.overdue
    assert pipeline.dispatch(pool, 120.5, LIMITS) is None
    assert pool.sent[-1] == (DISCONNECT, 3)


def test_a_late_ack_after_abandoned_releases_nothing():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 100.0, LIMITS)
    pipeline.sweep(111.0, LIMITS)
    pipeline.sweep(121.0, LIMITS)
    assert pipeline.ack(2, 0, False, None) is None  # nothing in flight
    pipeline.close("websocket.disconnect", 122.0)
    pipeline.dispatch(pool, 122.0, LIMITS)
    assert pipeline.ack(2, 0, False, None) is None  # the disconnect (3) is in flight
    assert pipeline.in_flight == "websocket.disconnect"


def test_a_redelivered_events_first_ack_releases_and_its_duplicate_is_late():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.push(receive(1), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    # Its worker died; the pool queue ran event 2 again on another, and both ack it.
    assert pipeline.ack(2, 0, False, None) is not None
    pipeline.dispatch(pool, 2.0, LIMITS)
    assert pipeline.ack(2, 0, False, None) is None
    assert pipeline.in_flight == "websocket.receive" and pool.sent[-1] == (receive(1), 3)


def test_lost_replies_are_reported():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    pipeline.note_arrival()
    assert pipeline.ack(2, 3, False, None) == AckResult("websocket.receive", 2, False)


def test_replies_that_all_arrived_are_not_lost():
    pipeline, pool = connected()
    pipeline.note_arrival()  # a reply to the connect, after its done: not this event's
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    assert pipeline.arrived == 0
    pipeline.note_arrival()
    pipeline.note_arrival()
    assert pipeline.ack(2, 2, False, None).lost == 0
    pipeline.push(receive(1), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    assert pipeline.ack(3, "3", False, None).lost == 0  # garbage: not a count


def test_a_consumer_error_is_reported():
    pipeline, pool = Pipeline(), Pool()
    pipeline.push(CONNECT, LIMITS)
    pipeline.dispatch(pool, 0.0, LIMITS)
    assert pipeline.ack(1, 0, True, None) == AckResult("websocket.connect", 0, True)


def test_the_session_is_stored_from_the_ack():
    pipeline, pool = connected()
    pipeline.push(receive(0), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    pipeline.ack(2, 0, False, {"user": "ann"})
    assert pipeline.session == {"user": "ann"}
    pipeline.push(receive(1), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    pipeline.ack(3, 0, False, None)  # no session in the done: the stored one stays
    assert pipeline.session == {"user": "ann"}
    pipeline.push(receive(2), LIMITS)
    pipeline.dispatch(pool, 1.0, LIMITS)
    pipeline.ack(4, 0, False, ["not", "a", "dict"])
    assert pipeline.session == {"user": "ann"}


def test_a_late_acks_session_is_not_stored():
    pipeline, _ = connected()
    assert pipeline.ack(1, 0, False, {"user": "ann"}) is None
    assert pipeline.session is None


def test_close_before_the_connect_reached_a_pool_queues_no_disconnect():
    pipeline = Pipeline()
    pipeline.push(CONNECT, LIMITS)  # not dispatched yet
    assert pipeline.close("websocket.disconnect", 1.0)
    assert pipeline.queue == [] and pipeline.finished()


def test_close_after_the_connect_reached_a_pool_queues_the_disconnect_last():
    pipeline, pool = Pipeline(), Pool()
    pipeline.push(CONNECT, LIMITS)
    pipeline.dispatch(pool, 0.0, LIMITS)
    assert pipeline.close("websocket.disconnect", 1.0)
    assert pipeline.queue == [DISCONNECT] and pipeline.closed_at == 1.0
    assert not pipeline.push(receive(1), LIMITS)  # nothing may follow the disconnect
    assert pipeline.queue == [DISCONNECT]


def test_an_ended_http_response_queues_no_disconnect():
    pipeline, pool = Pipeline(), Pool()
    pipeline.push(REQUEST, LIMITS)
    pipeline.dispatch(pool, 0.0, LIMITS)
    pipeline.close(None, 1.0)
    assert pipeline.queue == [] and not pipeline.finished()  # the request is in flight
    pipeline.ack(1, 1, False, None)
    assert pipeline.finished()


def test_close_is_idempotent():
    pipeline, _ = connected()
    assert pipeline.close("websocket.disconnect", 1.0)
    assert not pipeline.close("websocket.disconnect", 2.0)
    assert pipeline.queue == [DISCONNECT] and pipeline.closed_at == 1.0


def test_finished_only_when_closed_with_nothing_queued_or_in_flight():
    pipeline, pool = Pipeline(), Pool()
    assert not pipeline.finished()
    pipeline.push(CONNECT, LIMITS)
    pipeline.dispatch(pool, 0.0, LIMITS)
    pipeline.close("websocket.disconnect", 1.0)
    assert not pipeline.finished()  # connect in flight, disconnect queued
    pipeline.ack(1, 0, False, None)
    pipeline.dispatch(pool, 1.0, LIMITS)
    assert not pipeline.finished()  # disconnect in flight
    pipeline.ack(2, 0, False, None)
    assert pipeline.finished()


def test_drop_receives_keeps_everything_else():
    pipeline = Pipeline()
    for event in (CONNECT, receive(1), receive(2)):
        pipeline.push(event, LIMITS)
    assert pipeline.drop_receives() == 2
    assert pipeline.drop_receives() == 0
    assert pipeline.queue == [CONNECT]


def test_sweep_with_nothing_in_flight_does_nothing():
    pipeline, _ = connected()
    assert pipeline.sweep(1000.0, LIMITS) is None


# -- properties -----------------------------------------------------------------

OPERATIONS = st.lists(st.one_of(
    st.just(("push",)),
    st.just(("ack",)),  # acknowledges the event in flight, if any
    st.integers(-3, 3).map(lambda offset: ("stale ack", offset)),
    st.sets(st.sampled_from(["websocket.receive", "websocket.disconnect"])).map(
        lambda full: ("pool full", full)),
    st.integers(1, 2).map(lambda n: ("refuse", n)),  # the next n offers, whatever they are
    st.just(("close",)),
    st.floats(0.0, 15.0).map(lambda seconds: ("wait", seconds)),
    st.just(("stop",)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_events_reach_the_pool_in_order_numbered_and_one_at_a_time(operations):
    pipeline, pool_full, refuse = Pipeline(), set(), 0
    now, stopping, pushed = 0.0, False, 0
    in_flight = None  # the model's (sequence, channel) of the event a consumer runs
    taken = []  # (push order, sequence) of every event the pool took
    dropped_up_to = 0  # receives pushed up to here were dropped: never to be offered

    def send(event, sequence):
        nonlocal refuse, dropped_up_to
        assert in_flight is None, "two events in flight"
        assert sequence == (taken[-1][1] if taken else 0) + 1
        order = float("inf") if event[0] == "websocket.disconnect" else int(event[2])
        assert not taken or order > taken[-1][0], "out of order, or again after taken"
        assert event[0] != "websocket.receive" or order > dropped_up_to, "a dropped receive"
        if refuse or event[0] in pool_full:
            refuse = max(0, refuse - 1)
            if event[0] == "websocket.receive":
                dropped_up_to = pushed  # it, and every receive queued behind it
            return False
        taken.append((order, sequence))
        return True

    def dispatch():
        nonlocal in_flight
        before = len(taken)
        pipeline.dispatch(send, now, LIMITS, stopping)
        if len(taken) > before:
            in_flight = (taken[-1][1], pipeline.in_flight)

    pipeline.push(("websocket.connect", "", b"0", b"{}"), LIMITS)
    dispatch()
    for operation in operations:
        name = operation[0]
        if name == "push":
            pushed += 1
            pipeline.push(("websocket.receive", "bytes", b"%d" % pushed, None), LIMITS)
        elif name == "ack" and in_flight is not None:
            assert pipeline.ack(in_flight[0], 0, False, None) == (in_flight[1], 0, False)
            in_flight = None
        elif name == "stale ack" and (in_flight is None or operation[1] != 0):
            seq = (in_flight[0] if in_flight else pipeline.sequence) + operation[1]
            assert pipeline.ack(seq, 0, False, None) is None
        elif name == "pool full":
            pool_full = operation[1]
        elif name == "refuse":
            refuse = operation[1]
        elif name == "close":
            pipeline.close("websocket.disconnect", now)
        elif name == "wait":
            now += operation[1]
            overrun = pipeline.sweep(now, LIMITS)
            if overrun is not None and overrun.stage is Overdue.TIMED_OUT:
                dropped_up_to = pushed
            elif overrun is not None and overrun.stage is Overdue.ABANDONED:
                assert in_flight is not None and overrun.channel == in_flight[1]
                in_flight = None  # presumed lost: the next event may go
        elif name == "stop":
            stopping = True
        dispatch()
        assert (pipeline.in_flight is None) == (in_flight is None)
        assert pipeline.sequence == (taken[-1][1] if taken else 0)
    assert all(order != float("inf") for order, _ in taken[:-1]), "disconnect not last"
