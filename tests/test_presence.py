"""The broker's presence bookkeeping (pure logic)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from zchannels.wire.frames import MAX_INFO_BYTES, check_info
from zchannels.broker.presence import Presence, notice

A, B = b"iface-a", b"iface-b"


def told(raw: bytes | None) -> dict | None:
    return None if raw is None else json.loads(raw)


def test_members_across_interfaces_with_their_info():
    p = Presence()
    p.joined(A, "room", "a!1", {"user": "ann"}, announce=False)
    p.joined(B, "room", "b!1", {"user": "bob"}, announce=False)
    p.joined(B, "room", "b!1", {"user": "bobby"}, announce=False)  # again: new info
    assert sorted(p.members("room")) == [("a!1", {"user": "ann"}), ("b!1", {"user": "bobby"})]
    assert p.size("room") == 2 and p.size("nowhere") == 0 and p.members("nowhere") == []


def test_announced_members_are_told_once_on_joining_and_on_leaving():
    p = Presence()
    assert told(p.joined(A, "room", "a!1", "ann", announce=True)) == {
        "type": "join", "group": "room", "member": "a!1", "info": "ann"}
    assert p.joined(A, "room", "a!1", "ann", announce=True) is None  # not new
    assert told(p.left(A, "room", "a!1")) == {
        "type": "leave", "group": "room", "member": "a!1", "info": "ann"}
    assert p.left(A, "room", "a!1") is None  # no longer a member
    assert p.groups == {} and p.interfaces == {}


def test_members_that_did_not_ask_are_not_announced():
    p = Presence()
    assert p.joined(A, "room", "a!1", "ann", announce=False) is None
    assert p.left(A, "room", "a!1") is None
    assert p.size("room") == 0


def test_a_snapshot_is_quiet_but_remembers_who_asked_to_be_announced():
    p = Presence()
    assert p.joined(A, "room", "a!1", "ann", announce=True, quiet=True) is None
    assert told(p.left(A, "room", "a!1"))["type"] == "leave"


def test_an_interface_that_goes_takes_its_members_and_only_them():
    p = Presence()
    p.joined(A, "room", "a!1", "ann", announce=True)
    p.joined(A, "other", "a!1", "ann", announce=False)
    p.joined(B, "room", "b!1", "bob", announce=True)
    gone = p.forget_interface(A)
    assert [(group, told(n)["member"]) for group, n in gone] == [("room", "a!1")]
    assert p.members("room") == [("b!1", "bob")] and p.size("other") == 0
    assert p.forget_interface(A) == []
    p.joined(A, "room", "a!2", "cy", announce=True)
    assert p.forget_interface(A, quiet=True) == [] and p.size("room") == 1


def test_info_must_be_small_json():
    assert check_info({"user": "ann", "roles": [1, 2]}) == {"user": "ann", "roles": [1, 2]}
    with pytest.raises(TypeError):
        check_info(object())
    with pytest.raises(ValueError):
        check_info("x" * MAX_INFO_BYTES)


def test_notice_is_json_text():
    assert json.loads(notice("join", "g", "a!1", None)) == {
        "type": "join", "group": "g", "member": "a!1", "info": None}


changes = st.lists(st.tuples(st.booleans(), st.sampled_from([A, B]),
                             st.sampled_from(["g1", "g2"]), st.integers(0, 4)), max_size=60)


@given(changes)
def test_the_view_is_the_set_of_joins_not_followed_by_leaves(steps):
    p = Presence()
    model: dict[str, set[str]] = {}
    for joined, iface, group, n in steps:
        channel = f"{iface.decode()}!{n}"
        if joined:
            p.joined(iface, group, channel, None, announce=True)
            model.setdefault(group, set()).add(channel)
        else:
            p.left(iface, group, channel)
            model.get(group, set()).discard(channel)
    for group in ("g1", "g2"):
        assert {c for c, _ in p.members(group)} == model.get(group, set())
    assert p.total() == sum(map(len, model.values()))
