"""/ws/echo and /ws/chat/<room>, speaking the same protocol as zchannels' demo
(consumers/echo.py, consumers/chat.py), and GET /hello (urls.py). BENCH_FLAVOUR=sync|async
picks the consumer (and view) flavour served there; /ws/echo-sync and /ws/echo-async are
always both served."""
import os

import django
from django.core.asgi import get_asgi_application
from django.urls import path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproj.settings")
django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from . import consumers  # noqa: E402

flavour = os.environ.get("BENCH_FLAVOUR", "sync")
if flavour not in ("sync", "async"):
    raise SystemExit(f"BENCH_FLAVOUR must be sync or async, not {flavour!r}")
echo = consumers.SyncEcho if flavour == "sync" else consumers.AsyncEcho
chat = consumers.SyncChat if flavour == "sync" else consumers.AsyncChat

application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": URLRouter([
        path("ws/echo", echo.as_asgi()),
        path("ws/echo-sync", consumers.SyncEcho.as_asgi()),
        path("ws/echo-async", consumers.AsyncEcho.as_asgi()),
        path("ws/chat/<str:room>", chat.as_asgi()),
    ]),
})
