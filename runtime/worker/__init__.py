"""A worker process: takes events from its pool and runs consumers, one at a time.

- `worker`: the process: its loop, credit and shutdown, around `dispatch`;
- `dispatch`: one message without sockets (`Dispatcher`: routes, 4404, the WSGI
  fallback, 404, isolation, the done), shared with `zchannels.testing`;
- `link`: its link to the broker (`WorkerLink`: events in; replies, done, credit out);
- `hosts`: Django's ALLOWED_HOSTS on WebSocket handshakes, when Django is set up;
- `wsgi`: a WSGI application (Django, Flask) behind HTTP requests no consumer claims;
- `reloader`: restarts the workers when the project's code changes (development), with
  `watching` (what the files look like, inotify), `reloading` (a worker's side: what it
  imported) and `standby` (the check and the stand-in worker started ahead).

May import: `zchannels.core`, `zchannels.wire`, `zchannels.api`.
"""
