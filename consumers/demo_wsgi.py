"""Demo WSGI application: answers every HTTP path no consumer claims.

``conf/zchannels.toml`` mounts it with ``wsgi_app = "demo_wsgi:application"``; any
WSGI callable (a Django or Flask project's) mounts the same way. ``GET /app/hello``
answers ``hello from WSGI``; the bench's ``http`` mode uses it, and its baseline
runs this same callable under gunicorn.
"""
import json


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/app/hello":
        body = b"hello from WSGI\n"
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/app/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", environ.get("CONTENT_TYPE") or
                                   "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    body = json.dumps({"error": "not found", "path": path}).encode()
    start_response("404 Not Found", [("Content-Type", "application/json"),
                                     ("Content-Length", str(len(body)))])
    return [body]
