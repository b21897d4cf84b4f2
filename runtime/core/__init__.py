"""What every process shares, with no I/O of its own beyond files:

- `config`: the settings (``conf/zchannels.toml`` and ``ZCHANNELS_*``) and their checks;
- `history_rules`: which groups keep history (the ``[history]`` table);
- `exceptions`: the exception hierarchy;
- `stats`: counters, histograms and the stats files every process writes;
- `metrics`: those files as Prometheus metrics and as the operator's summary;
- `status`: the ``zchannels status`` table and the samples the dashboard shows.

May import: nothing of zchannels outside this room.
"""
