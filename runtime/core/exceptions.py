"""The exceptions a consumer or an operator can see."""


class ZChannelsError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ZChannelsError, ValueError):
    """The runtime configuration is invalid; the message names the key and what is allowed."""


class ChannelFull(ZChannelsError):
    """The channel (or the route to it) is at capacity; the message was not sent.

    Raised to a consumer instead of letting memory grow. Retry later, or give up
    and tell the client.
    """


class UnknownChannel(ZChannelsError):
    """No pool serves this channel: add a pattern for it to a pool in the runtime config."""


class GroupError(ZChannelsError):
    """A group membership change could not be confirmed by the interface that owns the socket."""


class InvalidName(ZChannelsError, ValueError):
    """A channel or group name that cannot be used: not a string, empty, longer than 200
    bytes of UTF-8 (``wire.MAX_NAME_BYTES``), or with a character that is not printable.
    Nothing was sent."""


class InvalidGroupName(GroupError, InvalidName):
    """A group name that cannot be used (see `InvalidName`), from ``group_add``,
    ``group_discard``, ``group_send``, ``group_members``, ``group_size`` or
    ``check_group_name``. A name made of what a client sent (a room in the path) is the
    client's mistake: refuse the client -- a `WebsocketConsumer` closes with 4400 for
    its ``groups``; an HTTP consumer answers 400 -- rather than let it become a
    consumer error."""


class NotInConsumer(ZChannelsError):
    """The channel layer API was used outside a worker process.

    `group_send`, `send` and friends need the worker's ZeroMQ sockets; call them
    from a consumer, or start a layer with `zchannels.api.connection.connect(config)`.
    """


class BadMessage(ZChannelsError, ValueError):
    """A ZeroMQ message did not follow the wire format; it is logged and dropped."""
