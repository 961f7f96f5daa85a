"""CurveZMQ keys of the web → model hop: generate (`python -m services.keys DIR`), load and apply them.

A key directory (curve_keys_dir) holds one Z85 key (40 characters) per file:

    server.secret      the model server's secret key; its public key is derived from it
    server.public      optional: the model server's public key for the web tier (else from server.secret)
    client.secret      the web tier's secret key
    client*.secret     every client key the model server admits (public key derived) ...
    client*.public     ... and every client public key: the allow-list

Public keys are derived (zmq.curve_public) so that a directory of secret keys alone is complete: Helm cannot
compute X25519 public keys, but any 40 alphanumeric characters are a valid Z85 secret key. Stdlib and pyzmq
only: the web tier imports this and must never import a model runtime.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from services.config import ConfigError, ZmqLink

log = logging.getLogger(__name__)

SERVER_SECRET = "server.secret"
SERVER_PUBLIC = "server.public"
CLIENT_SECRET = "client.secret"
CLIENT_PUBLIC = "client.public"
KEY_CHARS = 40  # Z85 of a 32-byte key
# How to get out of a missing-keys error, in every such message.
FIX = (
    "generate keys with `python -m services.keys DIR` and set curve_keys_dir=DIR (both tiers), or set "
    "zmq_security=plaintext explicitly: any peer that reaches the model port can then use it"
)
MAX_DENIED_LOGGED = 256  # distinct refused keys logged per process; a flood of new keys logs no more


@dataclass(frozen=True)
class ServerKeys:
    """The model server's key pair and the client public keys it admits (all Z85)."""

    public: bytes
    secret: bytes
    clients: frozenset[bytes]


@dataclass(frozen=True)
class ClientKeys:
    """The web tier's key pair and the model server's public key (all Z85)."""

    public: bytes
    secret: bytes
    server: bytes


def read_key(path: Path) -> bytes:
    """The Z85 key in `path` (surrounding whitespace ignored). :raise ConfigError: unreadable or not a key."""
    try:
        text = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"curve_keys_dir: cannot read {path}: {exc.strerror}") from None
    try:
        if len(text) != KEY_CHARS or len(z85.decode(text)) != 32:
            raise ValueError
    except (ValueError, KeyError):
        raise ConfigError(
            f"curve_keys_dir: {path} is not a Z85 CurveZMQ key ({KEY_CHARS} characters, "
            f"as zmq.curve_keypair() writes)"
        ) from None
    return text


def public_key(secret: bytes) -> bytes:
    """The Z85 public key of a Z85 secret key."""
    return zmq.curve_public(secret)


def _key_dir(keys_dir: str | os.PathLike[str]) -> Path:
    if not str(keys_dir):
        raise ConfigError(f"zmq_security = 'curve' but curve_keys_dir is not set: {FIX}")
    path = Path(keys_dir)
    if not path.is_dir():
        raise ConfigError(f"curve_keys_dir = {str(keys_dir)!r} is not a directory: {FIX}")
    return path


def _required(directory: Path, name: str, what: str) -> bytes:
    path = directory / name
    if not path.exists():
        raise ConfigError(f"curve_keys_dir = {str(directory)!r} has no {name} ({what}): {FIX}")
    return read_key(path)


def _files(directory: Path, pattern: str) -> list[Path]:
    # Kubernetes mounts a Secret's keys as symlinks into a hidden ..data directory: follow them, skip it.
    return sorted(p for p in directory.glob(pattern) if p.is_file() and not p.name.startswith("."))


def load_server_keys(keys_dir: str | os.PathLike[str]) -> ServerKeys:
    """The model server's keys from keys_dir. :raise ConfigError: naming the missing or bad file."""
    directory = _key_dir(keys_dir)
    secret = _required(directory, SERVER_SECRET, "the model server's secret key")
    clients = {public_key(read_key(p)) for p in _files(directory, "client*.secret")}
    clients |= {read_key(p) for p in _files(directory, "client*.public")}
    if not clients:
        raise ConfigError(
            f"curve_keys_dir = {str(directory)!r} has no client*.secret or client*.public: the model server "
            f"would admit no one; {FIX}"
        )
    return ServerKeys(public=public_key(secret), secret=secret, clients=frozenset(clients))


def load_client_keys(keys_dir: str | os.PathLike[str]) -> ClientKeys:
    """The web tier's keys from keys_dir. :raise ConfigError: naming the missing or bad file."""
    directory = _key_dir(keys_dir)
    secret = _required(directory, CLIENT_SECRET, "the web tier's secret key")
    if (directory / SERVER_PUBLIC).exists():
        server = read_key(directory / SERVER_PUBLIC)
    elif (directory / SERVER_SECRET).exists():
        server = public_key(read_key(directory / SERVER_SECRET))
    else:
        raise ConfigError(
            f"curve_keys_dir = {str(directory)!r} has neither {SERVER_PUBLIC} nor {SERVER_SECRET} (the model "
            f"server's key): {FIX}"
        )
    return ClientKeys(public=public_key(secret), secret=secret, server=server)


def _plaintext_warning(role: str) -> None:
    log.warning(
        "%s: zmq_security=plaintext: the model port is neither authenticated nor encrypted; any peer that "
        "reaches it can use it",
        role,
    )


def server_keys(cfg: ZmqLink) -> ServerKeys | None:
    """The model server's keys for cfg, or None with zmq_security=plaintext (logged as a warning)."""
    if cfg.zmq_security == "plaintext":
        _plaintext_warning("model server")
        return None
    loaded = load_server_keys(cfg.curve_keys_dir)
    log.info("CurveZMQ on, %d client keys admitted (%s)", len(loaded.clients), cfg.curve_keys_dir)
    return loaded


_client_cache: dict[tuple[str, str], ClientKeys | None] = {}
_client_lock = threading.Lock()


def client_keys(cfg: ZmqLink) -> ClientKeys | None:
    """The web tier's keys for cfg, read once per process; None with zmq_security=plaintext (warned once).

    :raise ConfigError: the keys are missing or bad.
    """
    key = (cfg.zmq_security, cfg.curve_keys_dir)  # immutable: a forked worker may keep its parent's
    with _client_lock:
        if key not in _client_cache:
            if cfg.zmq_security == "plaintext":
                _plaintext_warning("web tier")
                _client_cache[key] = None
            else:
                _client_cache[key] = load_client_keys(cfg.curve_keys_dir)
        return _client_cache[key]


def make_server(sock: zmq.Socket, keys: ServerKeys) -> None:
    """Make `sock` a CurveZMQ server with `keys`; call before bind()."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True  # must come before bind: libzmq fixes the mechanism when the socket binds


def make_client(sock: zmq.Socket, keys: ClientKeys) -> None:
    """Make `sock` a CurveZMQ client with `keys`; call before connect()."""
    sock.curve_serverkey = keys.server
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


class AllowList:
    """ZAP credentials provider: admits only the listed client public keys (Z85), logs whom it refuses."""

    def __init__(self, clients: Iterable[bytes]) -> None:
        self.clients = frozenset(clients)
        self._denied: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.clients:
            return True
        if key not in self._denied and len(self._denied) < MAX_DENIED_LOGGED:
            self._denied.add(key)
            log.warning("frontend: refused a CurveZMQ client with an unknown key %s", key.decode())
        return False


def generate(keys_dir: str | os.PathLike[str], overwrite: bool = False) -> list[Path]:
    """Write a new server and client key pair into keys_dir (created, 0700), each file 0600; the paths.

    :raise FileExistsError: a key file exists and overwrite is False (nothing is written then).
    """
    directory = Path(keys_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    files = {
        SERVER_SECRET: server_secret,
        SERVER_PUBLIC: server_public,
        CLIENT_SECRET: client_secret,
        CLIENT_PUBLIC: client_public,
    }
    existing = [directory / name for name in files if (directory / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, existing))} exist; pass --force to replace them")
    written = []
    for name, key in files.items():
        path = directory / name
        path.unlink(missing_ok=True)
        # O_EXCL with mode 0600: the secret is never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.keys",
        description="Write a CurveZMQ key pair for the model server and one for the web tier into DIR "
        "(server.secret, server.public, client.secret, client.public; mode 0600).",
    )
    parser.add_argument("dir", help="key directory (curve_keys_dir of both tiers)")
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    args = parser.parse_args(argv)
    try:
        written = generate(args.dir, overwrite=args.force)
    except (FileExistsError, OSError) as exc:
        print(f"services.keys: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
