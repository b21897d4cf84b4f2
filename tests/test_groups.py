"""The interface's table of group memberships (pure logic)."""
from zchannels.interface.groups import GroupTable


class Conn:
    def __init__(self, name):
        self.name = name
        self.groups = set()

    def __repr__(self):
        return self.name


def test_add_and_discard_keep_both_sides_in_step():
    table, a, b = GroupTable(), Conn("a"), Conn("b")
    table.add(b"room", a)
    table.add(b"room", b)
    table.add(b"other", a)
    assert table.members(b"room") == {a, b} and a.groups == {b"room", b"other"}
    assert (len(table), table.member_count()) == (2, 3)
    assert table.discard(b"room", a) is True
    assert table.members(b"room") == {b} and a.groups == {b"other"}
    assert table.discard(b"room", a) is False  # not a member any more
    assert table.discard(b"nowhere", a) is False


def test_an_empty_group_disappears():
    table, a = GroupTable(), Conn("a")
    table.add(b"room", a)
    table.discard(b"room", a)
    assert table.members(b"room") is None and len(table) == 0 and list(table) == []


def test_leave_all_removes_a_closed_connection_from_every_group():
    table, a, b = GroupTable(), Conn("a"), Conn("b")
    for group in (b"g1", b"g2", b"g3"):
        table.add(group, a)
    table.add(b"g2", b)
    table.leave_all(a)
    assert a.groups == set()
    assert sorted(table) == [b"g2"] and table.members(b"g2") == {b}
    assert table.member_count() == 1


def test_adding_twice_is_one_membership():
    table, a = GroupTable(), Conn("a")
    table.add(b"room", a)
    table.add(b"room", a)
    assert table.member_count() == 1
    table.discard(b"room", a)
    assert len(table) == 0
