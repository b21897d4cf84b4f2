"""The operator endpoints' rules without I/O: which Host they answer to, how wrong
tokens are limited per client address, what a log line may not hold, and which
tokens the configuration accepts."""
import logging

import pytest

from zchannels.core import config as config_module
from zchannels.core.exceptions import ConfigError
from zchannels.interface.dashboard import cookie_value, without_token
from zchannels.interface.guard import FailureLimiter, OperatorHosts, client_key, forwarded_hosts
from zchannels.interface.redact import REDACTED, Redactor, redact
from zchannels.core.stats import counters

STRONG = "Zq3-vN8_xT1pL6wR0sK4yH7cJ2mB5dF9"  # 32 characters, random


def hosts(*configured):
    return OperatorHosts(config_module.parse({"server": {"operator_hosts": list(configured)}}))


# -- Host -----------------------------------------------------------------------------

@pytest.mark.parametrize("host", [
    "localhost", "localhost:8401", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:8000",
    "[::1]", "[::1]:8000",
])
def test_loopback_names_are_operator_hosts_on_any_port(host):
    assert hosts().refusal({"Host": host}) is None


@pytest.mark.parametrize("host", [
    "attacker.example:8401", "attacker.example", "localhost.attacker.example",
    "127.0.0.1.nip.io:8000", "127.0.0.2", "[::2]:8000", "localhost:99999", "localhost:x",
    "[::1", "", "local host", "localhost.",
])
def test_other_hosts_are_refused(host):
    why = hosts().refusal({"Host": host})
    assert why is not None and "is not an operator host" in why


def test_a_request_without_a_host_is_refused():
    assert hosts().refusal({}) == "the request has no Host header"


def test_configured_hosts_with_and_without_a_port():
    allowed = hosts("ops.example.com", "metrics.internal:9100", "[fd00::5]", "10.0.0.5")
    for host in ("ops.example.com", "OPS.example.com:443", "metrics.internal:9100",
                 "[fd00::5]:8000", "10.0.0.5:8000", "localhost"):
        assert allowed.refusal({"Host": host}) is None, host
    for host in ("metrics.internal", "metrics.internal:9101", "example.com", "10.0.0.6"):
        assert allowed.refusal({"Host": host}) is not None, host


@pytest.mark.parametrize("headers", [
    {"Host": "attacker.example:8401", "X-Forwarded-Host": "localhost"},
    {"Host": "attacker.example:8401", "X-Forwarded-Proto": "https",
     "X-Forwarded-For": "127.0.0.1"},
    {"Host": "127.0.0.1:8000", "X-Forwarded-Host": "attacker.example:8401"},
    {"Host": "127.0.0.1:8000", "X-Forwarded-Host": "localhost, attacker.example"},
    {"Host": "127.0.0.1:8000", "Forwarded": 'for=1.2.3.4;host="attacker.example"'},
])
def test_forwarding_headers_only_refuse_more(headers):
    assert hosts().refusal(headers) is not None


def test_forwarded_hosts_that_are_allowed_pass():
    assert hosts().refusal({"Host": "127.0.0.1:8000", "X-Forwarded-Host": "localhost:80",
                            "Forwarded": "for=127.0.0.1;host=localhost;proto=http",
                            "X-Forwarded-Proto": "https"}) is None
    assert forwarded_hosts({"Forwarded": 'for=a;host="x:1", host=y',
                            "X-Forwarded-Host": " z , "}) == ["z", "x:1", "y"]


@pytest.mark.parametrize("entry", ["http://ops.example.com", "ops example", "ops/x", "[::g]",
                                   "ops.example.com:0", "ops.example.com:65536", "*",
                                   "ops..example.com", ""])
def test_operator_hosts_entries_are_validated(entry):
    with pytest.raises(ConfigError) as raised:
        config_module.parse({"server": {"operator_hosts": [entry]}})
    assert "operator_hosts" in str(raised.value)


# -- wrong tokens per client address --------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_limit_blocks_an_address_after_its_failures_and_forgives_at_its_rate():
    clock = Clock()
    limiter = FailureLimiter(5, 60.0, clock=clock)
    for _ in range(4):
        limiter.failed("10.0.0.1", "publish API")
        assert limiter.blocked("10.0.0.1") is None
    limiter.failed("10.0.0.1", "publish API")
    assert limiter.blocked("10.0.0.1") == 12  # one failure is forgiven every 60/5 s
    assert limiter.blocked("10.0.0.2") is None  # another address is not concerned
    clock.now += 6.0
    assert limiter.blocked("10.0.0.1") == 6
    clock.now += 6.0
    assert limiter.blocked("10.0.0.1") is None  # one more try...
    limiter.failed("10.0.0.1", "publish API")
    assert limiter.blocked("10.0.0.1") == 12  # ...and blocked again at once


def test_failures_and_refusals_are_counted_and_the_block_is_logged_once(caplog):
    before = dict(counters)
    limiter = FailureLimiter(2, 10.0, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="zchannels.interface.guard"):
        for _ in range(2):
            limiter.failed("192.0.2.7", "dashboard")
        assert limiter.blocked("192.0.2.7") and limiter.blocked("192.0.2.7")
    assert counters.get("token_failures", 0) - before.get("token_failures", 0) == 2
    assert counters.get("token_rate_limited", 0) - \
        before.get("token_rate_limited", 0) == 2
    warnings = [r for r in caplog.records if "wrong tokens from 192.0.2.7" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_ipv6_clients_are_counted_by_64_and_mapped_ipv4_as_ipv4():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") \
        == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    limiter = FailureLimiter(1, 60.0, clock=Clock())
    limiter.failed("2001:db8:1:2::1", "metrics")
    assert limiter.blocked("2001:db8:1:2::99") is not None
    assert limiter.blocked("2001:db8:1:3::1") is None


def test_a_limit_of_zero_counts_and_limits_nothing():
    limiter = FailureLimiter(0, 60.0, clock=Clock())
    for _ in range(100):
        limiter.failed("10.0.0.1", "publish API")
    assert limiter.blocked("10.0.0.1") is None and not limiter.buckets


def test_the_table_of_addresses_is_bounded_and_forgets_refilled_ones():
    clock = Clock()
    before = counters.get("token_failures_forgotten", 0)
    limiter = FailureLimiter(3, 30.0, clock=clock, max_addresses=100)
    for n in range(150):
        limiter.failed(f"10.1.{n // 256}.{n % 256}", "publish API")
    assert len(limiter.buckets) == 100
    assert counters.get("token_failures_forgotten", 0) - before == 50
    clock.now += 31.0  # every bucket is full again
    limiter.failed("10.9.9.9", "publish API")
    assert list(limiter.buckets) == ["10.9.9.9"]


# -- the dashboard's token exchange -----------------------------------------------------

def test_the_cookie_is_derived_from_the_token_and_the_url_loses_only_the_token():
    assert cookie_value(STRONG) != STRONG and STRONG not in cookie_value(STRONG)
    assert cookie_value(STRONG) == cookie_value(STRONG) != cookie_value(STRONG[::-1])
    assert without_token("/_zchannels/dashboard", f"token={STRONG}") == "/_zchannels/dashboard"
    assert without_token("/d", f"a=1&token={STRONG}&b=x+y") == "/d?a=1&b=x+y"


# -- no secret in a log line -------------------------------------------------------------

HMAC_TOKEN = "YWxpY2U.1767225600.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


@pytest.mark.parametrize("line", [
    f"405 HEAD /_zchannels/dashboard?token={STRONG} (127.0.0.1) 0.41ms",
    f"401 POST /_zchannels/publish?x=1&token={STRONG}&y=2 (127.0.0.1) 0.30ms",
    f"403 GET /test/auth/token?access_token={HMAC_TOKEN} (127.0.0.1) 3.10ms",
    f"404 GET /static/x?%74oken={HMAC_TOKEN} (127.0.0.1) 1.00ms",
    f"Uncaught exception GET /x?token={HMAC_TOKEN} (127.0.0.1)\nHTTPServerRequest("
    f"protocol='http', host='h', method='GET', uri='/x?token={HMAC_TOKEN}', "
    "version='HTTP/1.1', remote_ip='127.0.0.1')",
    f"Malformed HTTP message from 127.0.0.1: Invalid header value 'Bearer {HMAC_TOKEN}\\x01'",
    f"headers {{'Authorization': 'Bearer {HMAC_TOKEN}', 'Cookie': 'sessionid={HMAC_TOKEN}'}}",
    f"subprotocols ['bearer', '{HMAC_TOKEN}'] offered; Sec-WebSocket-Protocol: bearer, "
    f"{HMAC_TOKEN}",
    f"the configured token {STRONG} anywhere",
    f"Invalid header value 'Bearer {STRONG}\\x01'",
])
def test_secrets_are_redacted_from_a_line(line):
    clean = redact(line, (STRONG,))
    assert STRONG not in clean and HMAC_TOKEN not in clean and REDACTED in clean, clean
    assert "[redacted]]" not in clean


@pytest.mark.parametrize("line", [
    "metrics refused to 127.0.0.1: missing bearer token",
    "dashboard refused to 127.0.0.1: wrong token",
    'WWW-Authenticate: Bearer realm="zchannels"',
    "404 GET /chat/lobby?page=2&sort=new (127.0.0.1) 1.00ms",
    "interface i3f9a01bc listening on 127.0.0.1:8000",
])
def test_lines_without_secrets_are_left_alone(line):
    assert redact(line, (STRONG,)) == line


def test_the_filter_redacts_messages_arguments_and_tracebacks():
    redactor = Redactor((STRONG, ""))
    record = logging.LogRecord("zchannels.access", logging.INFO, __file__, 1,
                               "%d %s %s", (405, "HEAD", f"/d?token={STRONG}"), None)
    assert redactor.filter(record)
    assert record.getMessage() == "405 HEAD /d?token=[redacted]"
    try:
        raise ValueError(f"bad {STRONG}")
    except ValueError:
        import sys
        record = logging.LogRecord("tornado.application", logging.ERROR, __file__, 1,
                                   "Uncaught exception", (), sys.exc_info())
    redactor.filter(record)
    text = logging.Formatter().format(record)
    assert "ValueError: bad [redacted]" in text and STRONG not in text


# -- tokens the configuration accepts ----------------------------------------------------

@pytest.mark.parametrize("key", ["publish_token", "metrics_token", "dashboard_token"])
@pytest.mark.parametrize("token, fragment", [
    ("a", "is 1 bytes; a token needs at least 32"),
    (STRONG[:31], "is 31 bytes; a token needs at least 32"),
    ("x" * 64, "is one character repeated"),
])
def test_weak_tokens_are_refused(key, token, fragment):
    with pytest.raises(ConfigError) as raised:
        config_module.parse({"server": {key: token}})
    message = str(raised.value)
    assert f"{key} (or ZCHANNELS_{key.upper()})" in message and fragment in message
    assert "secrets.token_urlsafe" in message
    with pytest.raises(ConfigError):  # from the environment too
        config_module.parse({}, environ={f"ZCHANNELS_{key.upper()}": token})


def test_a_strong_token_and_the_limit_keys_are_accepted():
    config = config_module.parse({"server": {
        "publish_token": STRONG, "metrics_token": STRONG, "dashboard_token": STRONG,
        "token_failure_limit": 0, "token_failure_window": 5}})
    assert (config.token_failure_limit, config.token_failure_window) == (0, 5.0)
    defaults = config_module.parse({})
    assert (defaults.token_failure_limit, defaults.token_failure_window,
            defaults.operator_hosts) == (10, 60.0, ())
    for server, fragment in (({"token_failure_limit": -1}, "token_failure_limit must be 0"),
                             ({"token_failure_window": 0}, "token_failure_window must be")):
        with pytest.raises(ConfigError) as raised:
            config_module.parse({"server": server})
        assert fragment in str(raised.value)
