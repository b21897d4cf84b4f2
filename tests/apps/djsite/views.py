import os
import time

from django.http import HttpResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.utils.html import escape
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from zchannels.api.client import group_send

RECORD = os.environ.get("ZCHANNELS_TEST_RECORD")


def record(*fields):
    if RECORD:
        with open(RECORD, "a") as f:
            f.write(" ".join(str(x) for x in fields) + "\n")


class RecordedClose(StreamingHttpResponse):
    def close(self):
        # The WSGI server must call close() on what the application returned.
        record("django-stream-closed")
        super().close()


def form(request):
    token = get_token(request)
    return HttpResponse(
        '<form method="post" action="/django/submit">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
        '<input name="name"></form>')


@require_POST
def submit(request):
    return HttpResponse(f"got {escape(request.POST.get('name', ''))}",
                        content_type="text/plain")


def count(request):
    request.session["count"] = request.session.get("count", 0) + 1
    return HttpResponse(str(request.session["count"]), content_type="text/plain")


def stream(request):
    gate = os.path.join(os.path.dirname(RECORD), "gate-django")

    def parts():
        yield b"first\n"
        deadline = time.monotonic() + 15
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield b"second\n"

    return RecordedClose(parts(), content_type="text/plain")


@csrf_exempt
@require_POST
def notify(request):
    """Send the request's body to a group, from inside a Django view."""
    group_send(request.GET["group"], text=request.body.decode())
    return HttpResponse("sent", content_type="text/plain")
