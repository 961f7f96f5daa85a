"""CurveZMQ key files: generation, loading, derivation of public keys, and the errors a user sees."""

from __future__ import annotations

import logging
import math
import secrets
import stat
import string
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from services import config, keys
from services.config import ConfigError, ModelConfig, WebConfig

ALPHANUMERIC = string.ascii_letters + string.digits


def helm_key() -> bytes:
    """What the chart's `randAlphaNum 40` writes."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(40)).encode()


def write(directory: Path, name: str, key: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(key + b"\n")


def test_generate_writes_two_key_pairs_readable_by_the_owner_only(tmp_path: Path) -> None:
    written = keys.generate(tmp_path / "curve")
    assert sorted(p.name for p in written) == [
        "client.public",
        "client.secret",
        "server.public",
        "server.secret",
    ]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "curve").stat().st_mode) == 0o700
    server, client = keys.load_server_keys(tmp_path / "curve"), keys.load_client_keys(tmp_path / "curve")
    assert server.public == keys.read_key(tmp_path / "curve" / "server.public")
    assert client.server == server.public
    assert server.clients == {client.public} == {keys.read_key(tmp_path / "curve" / "client.public")}


def test_generate_refuses_to_overwrite_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert keys.main([str(tmp_path)]) == 0
    before = (tmp_path / "server.secret").read_bytes()
    assert keys.main([str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "server.secret").read_bytes() == before
    assert keys.main([str(tmp_path), "--force"]) == 0
    assert (tmp_path / "server.secret").read_bytes() != before


def test_any_40_alphanumerics_are_a_secret_key_with_238_bits() -> None:
    # Helm can generate such strings but cannot compute X25519 public keys: both tiers derive them instead.
    assert math.log2(len(ALPHANUMERIC)) * 40 > 238
    # Z85 maps each 5 characters to 4 bytes; the largest alphanumeric group stays below 2**32, so every
    # string decodes, and to a different key.
    assert z85.decode(b"Z" * 40) and len({z85.decode(helm_key()) for _ in range(1000)}) == 1000
    for _ in range(200):
        secret = helm_key()
        assert len(z85.decode(secret)) == 32
        assert len(keys.public_key(secret)) == 40


def test_keys_as_the_chart_generates_them_agree_on_both_sides(tmp_path: Path) -> None:
    write(tmp_path, "server.secret", helm_key())
    write(tmp_path, "client.secret", helm_key())
    server, client = keys.load_server_keys(tmp_path), keys.load_client_keys(tmp_path)
    assert client.server == server.public == keys.public_key(server.secret)  # derived from server.secret
    assert server.clients == {client.public}


def test_the_allow_list_is_every_client_key_in_the_directory(tmp_path: Path) -> None:
    current, previous, other_public = helm_key(), helm_key(), zmq.curve_keypair()[0]
    write(tmp_path, "server.secret", helm_key())
    write(tmp_path, "client.secret", current)
    write(tmp_path, "client-previous.secret", previous)
    write(tmp_path, "client-batch.public", other_public)
    write(tmp_path, "unrelated.secret", helm_key())  # not a client key
    # Kubernetes' Secret volume: the keys are symlinks into a hidden, timestamped directory.
    (tmp_path / "..data").mkdir()
    write(tmp_path / "..data", "client.secret", helm_key())
    server = keys.load_server_keys(tmp_path)
    assert server.clients == {keys.public_key(current), keys.public_key(previous), other_public}
    assert keys.load_client_keys(tmp_path).secret == current  # the web tier uses client.secret only


def test_a_mounted_secret_is_read_through_its_symlinks(tmp_path: Path) -> None:
    data = tmp_path / "..2026_12_01_00_00_00.123"
    write(data, "server.secret", helm_key())
    write(data, "client.secret", helm_key())
    (tmp_path / "..data").symlink_to(data.name)
    for name in ("server.secret", "client.secret"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    assert keys.load_server_keys(tmp_path).clients == {keys.load_client_keys(tmp_path).public}


def test_the_web_tier_prefers_server_public_and_needs_no_server_secret(tmp_path: Path) -> None:
    server_public, _ = zmq.curve_keypair()
    write(tmp_path, "server.public", server_public)
    write(tmp_path, "client.secret", helm_key())
    assert keys.load_client_keys(tmp_path).server == server_public
    with pytest.raises(ConfigError, match="has no server.secret"):
        keys.load_server_keys(tmp_path)


@pytest.mark.parametrize(
    ("files", "loader", "message"),
    [
        ({}, keys.load_client_keys, "has no client.secret"),
        ({"client.secret": b""}, keys.load_client_keys, "has neither server.public nor server.secret"),
        ({"server.secret": b""}, keys.load_server_keys, "has no client\\*.secret or client\\*.public"),
        ({"server.secret": b"", "client.secret": b"x" * 39}, keys.load_server_keys, "not a Z85 CurveZMQ key"),
        ({"server.secret": b"~" * 40, "client.secret": b""}, keys.load_server_keys, "not a Z85 CurveZMQ key"),
    ],
)
def test_missing_or_bad_keys_name_the_file_and_the_fix(tmp_path: Path, files, loader, message) -> None:
    for name, key in files.items():
        write(tmp_path, name, key or helm_key())
    with pytest.raises(ConfigError, match=message) as raised:
        loader(tmp_path)
    text = str(raised.value)
    assert "curve_keys_dir" in text
    if "Z85" not in text:
        assert "python -m services.keys DIR" in text and "zmq_security=plaintext" in text


@pytest.mark.parametrize("tier", [WebConfig, ModelConfig])
def test_curve_is_the_default_and_needs_a_key_directory(tier: type, tmp_path: Path) -> None:
    cfg = config.load(tier, environ={})
    assert cfg.zmq_security == "curve" and cfg.curve_keys_dir == ""
    loader = keys.client_keys if tier is WebConfig else keys.server_keys
    with pytest.raises(ConfigError, match="curve_keys_dir is not set: generate keys") as raised:
        loader(cfg)
    assert "\n" not in str(raised.value)  # one line in the log
    missing = config.load(tier, environ={"ZEROLENS_CURVE_KEYS_DIR": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="is not a directory"):
        loader(missing)


def test_plaintext_must_be_chosen_and_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="zmq_security = 'none': must be one of curve, plaintext"):
        config.load(ModelConfig, environ={"ZEROLENS_ZMQ_SECURITY": "none"})
    cfg = config.load(ModelConfig, environ={"ZEROLENS_ZMQ_SECURITY": "plaintext"})
    with caplog.at_level(logging.WARNING, logger="services.keys"):
        assert keys.server_keys(cfg) is None
    assert "any peer that reaches it can use it" in caplog.text


def test_the_web_tier_reads_its_keys_once_per_process(tmp_path: Path, monkeypatch) -> None:
    keys.generate(tmp_path)
    cfg = config.load(WebConfig, overrides={"curve_keys_dir": str(tmp_path)}, environ={})
    monkeypatch.setattr(keys, "_client_cache", {})
    first = keys.client_keys(cfg)
    (tmp_path / "client.secret").unlink()  # a rotation takes a restart: the process keeps what it read
    assert keys.client_keys(cfg) is first


def test_the_allow_list_admits_listed_keys_and_logs_each_stranger_once(caplog) -> None:
    known, stranger = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    allow = keys.AllowList([known])
    with caplog.at_level(logging.WARNING, logger="services.keys"):
        assert allow.callback("*", known)
        assert not any(allow.callback("*", stranger) for _ in range(5))
    assert caplog.text.count(stranger.decode()) == 1


def test_socket_options_make_a_curve_server_and_client() -> None:
    server_keys = keys.ServerKeys(*zmq.curve_keypair(), clients=frozenset())
    public, secret = zmq.curve_keypair()
    client_keys = keys.ClientKeys(public, secret, server=server_keys.public)
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router, ctx.socket(zmq.DEALER) as dealer:
        keys.make_server(router, server_keys)
        keys.make_client(dealer, client_keys)
        assert router.curve_server and router.mechanism == zmq.CURVE
        assert dealer.mechanism == zmq.CURVE and not dealer.curve_server
