"""Echo and chat-room consumers, sync and async, written the way the Channels 4
tutorial writes them."""
import itertools
import json
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer

guests = itertools.count(1)


class SyncEcho(WebsocketConsumer):
    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=text_data, bytes_data=bytes_data)


class AsyncEcho(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


def _name(scope):
    query = parse_qs(scope.get("query_string", b"").decode())
    return (query.get("name") or [""])[0].strip()[:32] or f"guest-{next(guests)}"


def _text(text_data):
    """The chat text of a frame, or None if it is broken JSON (closed with 1007)."""
    if text_data.lstrip().startswith("{"):
        try:
            text = json.loads(text_data)["text"]
            return text if isinstance(text, str) else None
        except (ValueError, KeyError, TypeError):
            return None
    return text_data


class SyncChat(WebsocketConsumer):
    def connect(self):
        self.room = "chat." + self.scope["url_route"]["kwargs"]["room"]
        self.name = _name(self.scope)
        self.accept()
        async_to_sync(self.channel_layer.group_add)(self.room, self.channel_name)
        self.broadcast(type="join", user=self.name, text=f"{self.name} joined")

    def disconnect(self, code):
        async_to_sync(self.channel_layer.group_discard)(self.room, self.channel_name)
        self.broadcast(type="leave", user=self.name, text=f"{self.name} left")

    def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            self.close(1003)
            return
        text = _text(text_data)
        if text is None:
            self.close(1007)
            return
        self.broadcast(type="message", user=self.name, text=text)

    def broadcast(self, **event):
        async_to_sync(self.channel_layer.group_send)(
            self.room, {"type": "chat.event", "text": json.dumps(event)})

    def chat_event(self, event):
        self.send(text_data=event["text"])


class AsyncChat(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = "chat." + self.scope["url_route"]["kwargs"]["room"]
        self.name = _name(self.scope)
        await self.accept()
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.broadcast(type="join", user=self.name, text=f"{self.name} joined")

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room, self.channel_name)
        await self.broadcast(type="leave", user=self.name, text=f"{self.name} left")

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            await self.close(1003)
            return
        text = _text(text_data)
        if text is None:
            await self.close(1007)
            return
        await self.broadcast(type="message", user=self.name, text=text)

    async def broadcast(self, **event):
        await self.channel_layer.group_send(
            self.room, {"type": "chat.event", "text": json.dumps(event)})

    async def chat_event(self, event):
        await self.send(text_data=event["text"])
