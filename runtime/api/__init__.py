"""What a consumer imports: the consumer API, re-exported by the package's top.

- `message`: `Message`, `ReplyChannel`, `Session`;
- `routing`: the `consumer` decorator, the route registry, Django's path converters
  (`register_converter`) and nested route tables (`Router`, `path`, `include`);
- `generic`: the class-based consumers;
- `sender`: the `Sender` protocol a consumer sends through, and the module functions
  (`send`, `group_add`, `group_send`, ...) that reach this process's sender;
- `connection`: `BrokerConnection`, a synchronous process's sender (ZeroMQ);
- `client`: sending from any process, thread- and fork-safe;
- `auth`: login on connect (Django sessions, signed tokens);
- `results`: `Recovery` and `Member`.

May import: `zchannels.core`, `zchannels.wire`. Nothing of the process roles.
"""
from zchannels.api.auth import (DjangoNotConfigured, login_required, sign_token,
                                token_required, token_user, verify_token)
from zchannels.api.generic import (HttpConsumer, JsonWebsocketConsumer, WebsocketConsumer,
                                   WebsocketDemultiplexer)
from zchannels.api.message import Message, ReplyChannel, Session, reply_channel
from zchannels.api.results import Member, Recovery
from zchannels.api.routing import consumer
from zchannels.api.routing import Router, include, path, register_converter
from zchannels.api.sender import (check_group_name, group_add, group_discard, group_members,
                                  group_send, group_size, send)
from zchannels.core.exceptions import (BadMessage, ChannelFull, ConfigError, GroupError,
                                       InvalidGroupName, InvalidName, NotInConsumer,
                                       UnknownChannel, ZChannelsError)

__all__ = [
    "consumer",
    "Router", "path", "include", "register_converter",
    "WebsocketConsumer",
    "JsonWebsocketConsumer",
    "WebsocketDemultiplexer",
    "HttpConsumer",
    "login_required",
    "token_required",
    "token_user",
    "sign_token",
    "verify_token",
    "Message",
    "ReplyChannel",
    "Session",
    "Recovery",
    "send",
    "group_add",
    "group_discard",
    "group_send",
    "group_members",
    "group_size",
    "check_group_name",
    "Member",
    "reply_channel",
    "ZChannelsError",
    "ChannelFull",
    "ConfigError",
    "GroupError",
    "InvalidGroupName",
    "InvalidName",
    "NotInConsumer",
    "UnknownChannel",
    "BadMessage",
    "DjangoNotConfigured",
]
