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


class NotInConsumer(ZChannelsError):
    """The channel layer API was used outside a worker process.

    `group_send`, `send` and friends need the worker's ZeroMQ sockets; call them
    from a consumer, or start a layer with `zchannels.api.connection.connect(config)`.
    """


class BadMessage(ZChannelsError, ValueError):
    """A ZeroMQ message did not follow the wire format; it is logged and dropped."""
