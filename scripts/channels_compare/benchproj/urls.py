"""GET /hello and /app/hello answer ``hello\\n`` like zchannels' HTTP consumer
(consumers/hello.py) and the demo WSGI app: a plain Django view, sync or async as
BENCH_FLAVOUR says, served by Daphne through Channels' ProtocolTypeRouter."""
import os

from django.http import HttpResponse
from django.urls import path


def hello(request):
    return HttpResponse(b"hello\n", content_type="text/plain")


async def async_hello(request):
    return HttpResponse(b"hello\n", content_type="text/plain")


view = async_hello if os.environ.get("BENCH_FLAVOUR", "sync") == "async" else hello
urlpatterns = [path("hello", view)]
