"""The interface server: Tornado HTTP and WebSocket in front, the broker behind.

Read it top-down, each module one job, each importing only the ones below it:

- `server`: the process -- its sockets, its Tornado application, start and stop;
- `link`: the ZeroMQ link to the broker -- what each wire operation does to a client;
- `websocket`, `http`: the two kinds of client, behind the one `clients.Client`
  protocol;
- `clients`: every client's events to the pools, groups, acknowledgements, timeouts;
- `pipeline`: one client's event pipeline as rules without I/O;
- beside them: `sweeps` (timers), `frames` (WebSocket frames), `groups` (the
  membership table), `static` (files), `publish` (the HTTP publish API), `zmqio`
  (ZeroMQ in the event loop), `compat` (everything borrowed from Tornado's internals);
- the operator's side: `scrape` (metrics) and `dashboard`, on `operator` (their
  Host check and refusals), `guard` (allowed hosts, wrong tokens per client, no
  I/O), and `redact` (no secret in any log line).
"""
from zchannels.interface.server import Interface, main

__all__ = ["Interface", "main"]
