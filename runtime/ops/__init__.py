"""Operations: the ``zchannels`` command (`cli`) and running zchannels in a project
of your own (`project`, with the supervisord and config `templates`).

May import: every other room (it starts them all).
"""
