"""zchannels: realtime Python with synchronous consumers.

Everything a consumer author needs is importable from here::

    from runtime import consumer, group_add, group_send

    @consumer("websocket.receive", path="/ws/echo")
    def echo(message):
        message.reply_channel.send(text=message.text, bytes=message.bytes)
"""
from .auth import (DjangoNotConfigured, login_required, sign_token, token_required,
                   token_user, verify_token)
from .exceptions import (BadMessage, ChannelFull, ConfigError, GroupError, InvalidGroupName,
                         InvalidName, NotInConsumer, UnknownChannel, ZChannelsError)
from .generic import (HttpConsumer, JsonWebsocketConsumer, WebsocketConsumer,
                      WebsocketDemultiplexer)
from .history import Recovery
from .layer import (check_group_name, group_add, group_discard, group_members, group_send,
                    group_size, reply_channel, send)
from .message import Message, ReplyChannel, Session
from .presence import Member
from .routing import consumer

__all__ = [
    "consumer",
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
