"""Properties of config parsing (runtime/core/config.py), checked with hypothesis: any TOML
document gives a Config or a ConfigError that names what is wrong, never another error."""
import json
import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from zchannels.core import config as config_module
from zchannels.core.config import _ENDPOINTS, _LISTS, _POOL_KEYS, _SCALARS, Config
from zchannels.core.exceptions import ConfigError

FAST = settings(max_examples=150, deadline=None)

NAMES = st.text("abcdefghijklmnopqrstuvwxyz_-.0123456789 ", min_size=1, max_size=12)
TOML_SCALARS = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats()
                | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
                | st.sampled_from(["*", "ws.*", "tcp://127.0.0.1:5555", "ipc:///tmp/x",
                                   "/tmp", "", "127.0.0.1", "http://a.example"]))
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(NAMES, inner, max_size=3), max_leaves=6)
SERVER_KEYS = st.sampled_from(sorted([*_SCALARS, *_LISTS])) | NAMES
SERVER = st.dictionaries(SERVER_KEYS, TOML_VALUES, max_size=6)
ENDPOINTS = st.dictionaries(st.sampled_from(_ENDPOINTS) | NAMES, TOML_VALUES, max_size=3)
POOL = st.dictionaries(st.sampled_from(_POOL_KEYS) | NAMES, TOML_VALUES, max_size=4)
POOLS = st.dictionaries(NAMES, POOL | TOML_VALUES, max_size=3)
DOCUMENTS = st.fixed_dictionaries({}, optional={
    "server": SERVER | TOML_VALUES, "endpoints": ENDPOINTS | TOML_VALUES,
    "pools": POOLS | TOML_VALUES, "extra": TOML_VALUES})
ENVIRON = st.fixed_dictionaries({}, optional={
    "ZCHANNELS_PORT": st.text("0123456789x- ", max_size=6),
    "ZCHANNELS_HOST": st.text(max_size=10), "ZCHANNELS_RUN_DIR": st.sampled_from(
        ["/tmp/zcprop", "", "/tmp/" + "d" * 120]),
    "ZCHANNELS_CONSUMERS": st.text("ab:/", max_size=8)})


def names_in(document, environ):
    """Every key and table name the document and environment contain."""
    found = {"pools", "server", "endpoints", "port", "ping_timeout", "consumers"}
    found.update(environ)
    for table, content in document.items():
        found.add(table)
        if isinstance(content, dict):
            for key, value in content.items():
                found.add(key)
                if isinstance(value, dict):
                    found.update(value)
    return found


@FAST
@given(DOCUMENTS, ENVIRON)
def test_any_document_gives_a_config_or_a_config_error_naming_a_key(document, environ):
    try:
        config = config_module.parse(document, source="prop.toml", environ=environ)
    except ConfigError as e:
        message = str(e)
        assert any(name in message for name in names_in(document, environ)), message
        return
    assert isinstance(config, Config) and config.pools
    assert all(pool.endpoint_in and pool.endpoint_out for pool in config.pools)


def toml_line(key, value):
    # JSON scalars and arrays of them are TOML too, except null and floats like NaN.
    return f"{json.dumps(key)} = {json.dumps(value)}"


JSONISH = (st.booleans() | st.integers(-2**31, 2**31) | st.floats(-1e6, 1e6)
           | st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
           | st.lists(st.text("ab*.", max_size=4), max_size=3))
LINES = st.lists(st.one_of(
    st.tuples(SERVER_KEYS, JSONISH).map(lambda kv: toml_line(*kv)),
    st.sampled_from(["[server]", "[endpoints]", "[pools.default]", "[pools.x]",
                     'channels = ["*"]', "capacity = 0", "capacity = 5", "[[pools]]",
                     "port = 1e3", "= 1", "[server", "port = 80\nport = 81", "\x00"]),
    st.text(max_size=20)), max_size=12)


@FAST
@given(LINES)
def test_any_file_gives_a_config_or_a_config_error(lines):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        config = config_module.load(f.name, environ={})
    except ConfigError as e:
        assert str(e)
    else:
        assert isinstance(config, Config)
    finally:
        os.unlink(f.name)
