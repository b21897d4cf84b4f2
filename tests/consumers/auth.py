"""/test/auth/...: login on connect, for tests/test_auth_e2e.py.

Imported by every test system, most without Django: zchannels.api.auth imports Django
only when a consumer here asks for ``message.user``.
"""
import json

from zchannels import (WebsocketConsumer, consumer, login_required, token_required, token_user,
                       verify_token)

TOKEN_SECRET = "test-token-secret"  # tests/test_auth_e2e.py signs with the same


def describe(message):
    """Who the message says is there, and a value from their Django session."""
    user = message.user
    session = message.django_session
    return json.dumps({"event": message.channel,
                       "user": user.get_username() if user.is_authenticated else None,
                       "color": session.get("color") if session is not None else None})


@consumer("websocket.connect", path="/test/auth/whoami")
def whoami_connect(message):
    message.reply_channel.send(text=describe(message))


@consumer("websocket.receive", path="/test/auth/whoami")
def whoami_receive(message):
    message.reply_channel.send(text=describe(message))


@consumer("websocket.connect", path="/test/auth/private")
@login_required
def private_connect(message):
    pass  # returning accepts


@consumer("websocket.receive", path="/test/auth/private")
@login_required
def private_receive(message):
    message.reply_channel.send(text=describe(message))


class PrivateClass(WebsocketConsumer):
    """The same as /test/auth/private, as a class-based consumer."""

    login_required = True

    def receive(self, text=None, bytes=None):
        self.send(text=describe(self.message))


PrivateClass.register("/test/auth/private-class")


@consumer("websocket.connect", path="/test/auth/token")
@token_required(lambda token: verify_token(token, TOKEN_SECRET))
def token_connect(message):
    message.reply_channel.send(text=f"hello {token_user(message)}")


@consumer("websocket.receive", path="/test/auth/token")
def token_receive(message):
    message.reply_channel.send(text=f"{token_user(message)}: {message.text}")
