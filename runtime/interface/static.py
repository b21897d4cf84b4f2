"""Static files, and the access log, of the interface's Tornado application."""
from __future__ import annotations

import logging
from typing import Any

import tornado.web

access_log = logging.getLogger("zchannels.access")


class StaticFiles(tornado.web.StaticFileHandler):
    """Static files with caching headers: ``Cache-Control: max-age`` (static_max_age;
    ten years for ``?v=`` versioned URLs), plus ETag and Last-Modified, so a
    revalidation answers 304. The page at ``/`` is always revalidated."""

    def initialize(self, max_age: int = 0, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.max_age = max_age

    def parse_url_path(self, url_path: str) -> str:
        # A NUL (``%00``) names no file, and the os functions raise ValueError on one.
        if "\x00" in url_path:
            raise tornado.web.HTTPError(400, "static path with a NUL byte")
        return super().parse_url_path(url_path)

    def get_cache_time(self, path: str, modified: Any, mime_type: str) -> int:
        if "v" in self.request.arguments:
            return self.CACHE_MAX_AGE
        if self.default_filename is not None:
            self.set_header("Cache-Control", "no-cache")
            return 0
        return self.max_age


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Like Tornado's access log, but a 503 or 504 is a refusal the interface has
    already explained and counted: a warning, not an error."""
    status = handler.get_status()
    if status < 400:
        return  # successful requests (and every WebSocket upgrade) are not logged
    level = logging.INFO if status < 500 else logging.WARNING
    request = handler.request
    access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, request.uri,
                   request.remote_ip, 1000.0 * request.request_time())
