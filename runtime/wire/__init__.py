"""How processes meet:

- `frames`: the wire format (multipart frames, a ujson header, raw payloads), names
  and limits;
- `positions`: positions in a group's history as they travel;
- `transport`: endpoints, socket options, CURVE on tcp://;
- `keys`: the ``zchannels keys`` command's key files;
- `process`: the service loop every ZeroMQ process runs, run dir, logging, signals.

May import: `zchannels.core`.
"""
