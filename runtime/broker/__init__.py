"""The broker process: the meeting point of interfaces, workers and other processes.

- `broker`: the process -- its sockets, relaying, group fan-out, delayed messages;
- `pools`: one pool's queue, credit-based dispatch and redelivery;
- `presence`: who is in each group, and each interface's open sockets;
- `history`: the last messages of groups that keep history (`Keeper`).

May import: `zchannels.core`, `zchannels.wire`.
"""
