"""Django's ALLOWED_HOSTS on WebSocket handshakes (runtime/worker/hosts.py), through the
worker's own dispatch in `zchannels.testing`. Each case runs in a fresh Python: Django's
settings are configured once per process."""
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_TIMEOUT = 60  # seconds

# Opens /ws with the headers of each case and prints what came of it, as JSON lines.
HANDSHAKES = """
    import json, logging, sys
    from zchannels.api.routing import Registry
    from zchannels.core.config import parse
    from zchannels.testing import TestServer

    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="LOG %(levelname)s %(name)s %(message)s")
    connects, receives = [], []
    registry = Registry()
    registry.add("websocket.connect", lambda m: connects.append(m.headers.get("host")), "/ws")
    registry.add("websocket.receive", lambda m: receives.append(m.text), "/ws")
    config = parse({"server": {"allowed_origins": ["http://evil.example", "null",
                                                   "http://example.com"]}})

    def handshakes(server, cases):
        for headers in cases:
            ws = server.websocket("/ws", headers=headers)
            if ws.accepted:
                ws.send(text="after")
            print(json.dumps({"headers": headers, "status": ws.status}))
"""


def child(script):
    """Run `script` in a fresh Python: (exit status, output lines that are JSON, the rest)."""
    environ = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(HANDSHAKES)
                             + textwrap.dedent(script)], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    lines = result.stdout.splitlines()
    found = [json.loads(line) for line in lines if line.startswith("{")]
    rest = "\n".join(line for line in lines if not line.startswith("{")) + result.stderr
    assert result.returncode == 0, rest
    return found, rest


def statuses(found):
    return [(case["headers"].get("Host"), case["headers"].get("Origin"), case["status"])
            for case in found]


def test_hosts_and_origins_are_checked_against_allowed_hosts_once_django_is_set_up():
    found, rest = child("""
        with TestServer(registry, config=config) as server:
            # No Django: nothing is checked, nothing of Django imported.
            handshakes(server, [{"Host": "evil.example"}])
            assert "django" not in sys.modules, "imported Django"
            assert "disallowed_host" not in server.layer.counters

            from django.conf import settings
            settings.configure(ALLOWED_HOSTS=["example.com", ".example.org"])
            handshakes(server, [
                {"Host": "example.com"},
                {"Host": "EXAMPLE.com:8000"},
                {"Host": "chat.example.org"},
                {"Host": "example.org."},
                {"Host": "evil.example"},
                {"Host": "example.com.evil.example"},
                {"Host": "example.com,evil.example"},
                {"Host": "example.com", "Origin": "http://example.com"},
                {"Host": "example.com", "Origin": "http://evil.example"},
                {"Host": "example.com", "Origin": "null"},
            ])
            print("COUNT", server.layer.counters["disallowed_host"])
            print("CONNECTS", connects)
            print("RECEIVES", len(receives))
    """)
    assert statuses(found) == [
        ("evil.example", None, 101),
        ("example.com", None, 101),
        ("EXAMPLE.com:8000", None, 101),
        ("chat.example.org", None, 101),
        ("example.org.", None, 101),
        ("evil.example", None, 403),
        ("example.com.evil.example", None, 403),
        ("example.com,evil.example", None, 403),
        ("example.com", "http://example.com", 101),
        # The interface's allowed_origins lets these through; ALLOWED_HOSTS does not.
        ("example.com", "http://evil.example", 403),
        ("example.com", "null", 403),
    ]
    assert "COUNT 5" in rest
    # Refused handshakes ran no connect consumer.
    assert ("CONNECTS ['evil.example', 'example.com', 'EXAMPLE.com:8000', 'chat.example.org', "
            "'example.org.', 'example.com']") in rest
    assert "RECEIVES 6" in rest
    assert ("LOG WARNING zchannels.worker refused WebSocket handshake to /ws from 127.0.0.1: "
            "Host 'evil.example' is not in ALLOWED_HOSTS; answering 403") in rest
    assert ("LOG WARNING zchannels.worker refused WebSocket handshake to /ws from 127.0.0.1: "
            "Origin 'http://evil.example' is not in ALLOWED_HOSTS; answering 403") in rest
    assert rest.count("LOG ") == 5, rest


def test_debug_localhost_wildcard_and_forwarded_host_as_django_reads_them():
    found, rest = child("""
        from django.conf import settings
        from django.test.utils import override_settings
        settings.configure(DEBUG=True, ALLOWED_HOSTS=[])
        with TestServer(registry, config=config) as server:
            # DEBUG with no ALLOWED_HOSTS: Django's localhost names.
            handshakes(server, [{"Host": "localhost:8000"}, {"Host": "app.localhost"},
                                {"Host": "127.0.0.1"}, {"Host": "[::1]:80"},
                                {"Host": "example.com"}])
            with override_settings(DEBUG=False):
                handshakes(server, [{"Host": "localhost"}])  # an empty list allows nothing
            with override_settings(ALLOWED_HOSTS=["*"]):
                handshakes(server, [{"Host": "anything.example",
                                     "Origin": "http://evil.example"}])
            with override_settings(ALLOWED_HOSTS=["example.com"], USE_X_FORWARDED_HOST=True):
                handshakes(server, [{"Host": "example.com", "X-Forwarded-Host": "evil.example"},
                                    {"Host": "evil.example", "X-Forwarded-Host": "example.com"}])
            print("COUNT", server.layer.counters["disallowed_host"])
    """)
    assert statuses(found) == [
        ("localhost:8000", None, 101), ("app.localhost", None, 101), ("127.0.0.1", None, 101),
        ("[::1]:80", None, 101), ("example.com", None, 403),
        ("localhost", None, 403),
        ("anything.example", "http://evil.example", 101),
        ("example.com", None, 403), ("evil.example", None, 101),
    ]
    assert "COUNT 3" in rest
    assert "X-Forwarded-Host 'evil.example' is not in ALLOWED_HOSTS" in rest
