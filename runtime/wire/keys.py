"""``zchannels keys``: the CURVE key pairs of a deployment on several hosts, and the
check of a host's key directory (``curve_dir``) that the config makes.

The keys are ``zmq.auth`` certificate files (``NAME.key`` public, ``NAME.key_secret``
public and secret). ``zchannels keys --dir keys --clients 2`` writes one directory per
host, each the ``curve_dir`` of that host::

    keys/layer/server.key            the layer host's public key
    keys/layer/server.key_secret     ... and its secret key (only ever on the layer host)
    keys/layer/allowed/app-1.key     the public keys of the app hosts it lets in
    keys/app-1/client.key            app-1's own key pair
    keys/app-1/client.key_secret
    keys/app-1/server.key            the layer host's public key, to check it is talking
                                     to the real layer host

Secret key files are 0600 and the directories 0700. Nothing secret ever leaves the
host it was made for: the layer host receives the app hosts' public keys only.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys

import zmq.auth

from zchannels.core.exceptions import ConfigError
from zchannels.core.config import CLIENT_PUBLIC, CLIENT_SECRET, SERVER_PUBLIC, SERVER_SECRET

from zchannels.core.config import Config

LAYER = "layer"  # the layer host's directory under --dir
ALLOWED = "allowed"


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _pair(directory: str, name: str) -> None:
    """``name.key`` and ``name.key_secret`` in `directory`, the secret one 0600."""
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(os.path.join(directory, f"{name}.key_secret"), 0o600)
    os.chmod(os.path.join(directory, f"{name}.key"), 0o644)


def valid_host_name(name: str) -> bool:
    return bool(name) and name != LAYER and name.isascii() \
        and name.replace("-", "").replace("_", "").replace(".", "").isalnum()


def create(base: str, clients: list[str]) -> list[str]:
    """The layer host's key pair and a client pair for each name; what to copy where."""
    layer = os.path.join(base, LAYER)
    if os.path.exists(os.path.join(layer, SERVER_SECRET)):
        raise ConfigError(f"{layer}/{SERVER_SECRET} exists: keys were made here already; "
                          "add an app host with --client NAME, or choose another --dir")
    _private_dir(base)
    _private_dir(layer)
    _private_dir(os.path.join(layer, ALLOWED))
    _pair(layer, "server")
    lines = [f"layer host: copy {layer}/ to it (keep it 0700; it holds the server's secret "
             "key) and set curve_dir to where it is"]
    for name in clients:
        lines += add_client(base, name, with_layer=True)
    return lines


def add_client(base: str, name: str, with_layer: bool = False) -> list[str]:
    """One more app host: its own key pair, the layer host's public key beside it, and
    its public key in the layer host's allow-list (`with_layer`: which goes to the layer
    host with the rest of its directory)."""
    if not valid_host_name(name):
        raise ConfigError(f"app host name {name!r}: use letters, digits, - _ . (not "
                          f"{LAYER!r})")
    layer = os.path.join(base, LAYER)
    server_public = os.path.join(layer, SERVER_PUBLIC)
    if not os.path.exists(server_public):
        raise ConfigError(f"no {server_public}: make the layer host's keys first "
                          f"(zchannels keys --dir {base})")
    host = os.path.join(base, name)
    if os.path.exists(os.path.join(host, CLIENT_SECRET)):
        raise ConfigError(f"{host}/{CLIENT_SECRET} exists: app host {name!r} has keys")
    _private_dir(host)
    _pair(host, "client")
    shutil.copyfile(server_public, os.path.join(host, SERVER_PUBLIC))
    allowed = os.path.join(layer, ALLOWED, f"{name}.key")
    shutil.copyfile(os.path.join(host, CLIENT_PUBLIC), allowed)
    lines = [f"app host {name}: copy {host}/ to it (it holds {name}'s secret key) and set "
             "curve_dir to where it is"]
    if not with_layer:
        lines.append(f"layer host: copy {allowed} into its allow-list (curve_allow_dir, "
                     f"default <curve_dir>/{ALLOWED}/), before starting {name}: it is read "
                     "within a second, no restart")
    return lines


def main(base: str, clients: int, client: str | None) -> int:
    """The ``zchannels keys`` command (runtime/ops/cli.py)."""
    try:
        if client is not None:
            lines = add_client(base, client)
        else:
            lines = create(base, [f"app-{i}" for i in range(1, clients + 1)])
    except ConfigError as e:
        print(f"zchannels keys: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print("Secret keys never leave the host they were made for; move them with scp -p or "
          "similar, and delete the copies here once they are in place.")
    return 0
