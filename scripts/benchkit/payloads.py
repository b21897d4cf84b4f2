"""What the bench's clients send when `--payload chat` asks for realistic messages.

The default echo payload (``name:seq:xxxx...``) is right for measuring the message path,
but with permessage-deflate its run of ``x`` compresses to nothing and a 32-byte random one
not at all: neither is what a chat application sends. These are the chat demo's messages
(``consumers/chat.py``, ``consumers/static/index.html``): the page sends
``{"text":"..."}`` (``JSON.stringify``), the server broadcasts
``{"type": "message", "user": "ann", "text": "..."}`` (``json.dumps``). The lines are
made up but ordinary, short and long; everything is deterministic (seeded), so a payload
is the same in every run and on and off compression compare the very same bytes.
"""
from __future__ import annotations

import json
import random

CHAT_BYTES = 150  # default size of a chat-like payload (a typical chat event's JSON)
USERS = ("ann", "bob", "carla", "dmitri", "eve", "farid", "grace", "hiro", "ines", "jon")
LINES = (
    "hi all",
    "morning!",
    "ok",
    "lol",
    "thanks, that worked",
    "anyone around?",
    "brb, coffee",
    "did the deploy go out yet?",
    "yes, about ten minutes ago, no errors so far",
    "can someone review my pull request before lunch? it is the small one about the login page",
    "I think the bug is in the retry loop: it never resets the counter after a success",
    "meeting moved to 3pm, same room",
    "sounds good to me",
    "the build is red again, looking into it",
    "fixed, it was a flaky test that depends on the clock",
    "where do we keep the staging credentials these days?",
    "in the vault, ask Grace for access if you do not have it yet",
    "👍",
    "has anyone tried the new dashboard? the graphs load much faster now",
    "not yet, will have a look this afternoon",
    "the customer says the export times out when the report has more than ten thousand rows",
    "can you send me the request id from the logs?",
    "sure, one second",
    "here it is: 7f3c9a2e-41b0-4d8e-9c55-0a6f1e2d3b47",
    "thanks! I see it, the query does a full table scan",
    "should we add an index or paginate the export?",
    "both, probably; the index first because it is quick",
    "ok, I will open a ticket for the pagination",
    "lunch anyone?",
    "I am in, the usual place?",
    "see you in five",
    "back. what did I miss?",
    "nothing much, the release notes are in the shared folder if you want to proofread them",
    "will do",
    "quick question: do we still support Python 3.9 or can I use the new syntax?",
    "3.11 and up since last month",
    "great, thanks",
    "heads up: the office wifi will be down tonight between 10 and 11",
    "have a nice weekend everyone",
    "you too!",
)


def chat_text(rng: random.Random, chars: int) -> str:
    """`chars` characters of chat (Python characters, not bytes): lines picked at random
    and joined, the last one cut to fit."""
    parts: list[str] = []
    length = 0
    while length < chars:
        line = rng.choice(LINES)
        parts.append(line)
        length += len(line) + 1
    return " ".join(parts)[:chars]


def chat_event(user: str, text: str) -> str:
    """What the chat consumer broadcasts for a member's message (its `json.dumps`)."""
    return json.dumps({"type": "message", "user": user, "text": text})


def page_message(text: str) -> str:
    """What the chat page sends (``JSON.stringify({text: ...})``)."""
    return json.dumps({"text": text}, separators=(",", ":"), ensure_ascii=False)


def echo_chat(name: str, index: int, size: int) -> bytes:
    """A chat event of `size` bytes (or the shortest one, if `size` is smaller) that
    names its connection and index, so that no two connections' or indexes' differ."""
    head = f"#{index} "
    overhead = len(chat_event(name, head).encode())
    rng = random.Random(f"{name}/{index}")
    text = chat_text(rng, max(0, size - overhead))
    payload = chat_event(name, head + text).encode()
    while len(payload) > size and text:  # json.dumps escapes non-ASCII: trim to fit
        text = text[:-1]
        payload = chat_event(name, head + text).encode()
    return payload


def broadcast_chat_text(prefix: str, name: str, index: int, size: int) -> str:
    """A publisher's message text that starts with `prefix` (the bench's own
    ``B name seq sent``), padded with chat so the event every member receives is about
    `size` bytes."""
    overhead = len(chat_event(name, prefix + " ").encode())
    rng = random.Random(f"{name}/{index}")
    return prefix + " " + chat_text(rng, max(0, size - overhead))
