"""Every zerolens setting, typed, with its default and unit: one frozen dataclass per tier.

Values are layered: the defaults below, then a YAML file (path in ZEROLENS_CONFIG), then environment
variables `ZEROLENS_<NAME>` (the field name in upper case), then explicit overrides (tests). Unknown keys
and values of the wrong type fail at start with an error that names the key. Stdlib and PyYAML only.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from services.protocol import MAX_DEADLINE_AHEAD_MS

ENV_PREFIX = "ZEROLENS_"
CONFIG_FILE_ENV = "ZEROLENS_CONFIG"


class ConfigError(ValueError):
    """A bad setting; the message names the key and where it came from."""


@dataclass(frozen=True)
class ImageLimits:
    """Limits on untrusted uploads, shared by both tiers."""

    max_upload_bytes: int = 20 * 1024 * 1024  # request body limit (HTTP 413 / TOO_LARGE above it)
    max_image_pixels: int = 50_000_000  # decompression-bomb guard: width × height of the encoded image
    # Longest side: an image thin in one dimension (49,000,000 × 1) passes the area limit. 30,000 admits
    # any phone panorama.
    max_image_side: int = 30_000
    # Memory one decode may take, estimated from the header before decoding (services/imaging.py has the
    # table per format): PNGs and progressive JPEGs decode at full size, baseline JPEGs at up to 1/8.
    max_decode_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class ZmqSecurity:
    """The web → model ZeroMQ hop, shared by both tiers: CurveZMQ keys (services/keys.py) or plaintext."""

    # curve: the model server admits only clients whose key is in curve_keys_dir, and the hop is encrypted.
    # plaintext must be chosen explicitly: any peer that reaches the model port can then use it.
    zmq_security: str = "curve"
    curve_keys_dir: str = ""  # server.secret, client.secret, ... (`python -m services.keys DIR` writes them)


@dataclass(frozen=True)
class WebConfig(ImageLimits, ZmqSecurity):
    """The Flask/gunicorn web tier."""

    # Where the model servers are: "host:port" (a host name is resolved to ALL its addresses, e.g. a headless
    # Service) or a comma-separated list of "tcp://addr:port" endpoints.
    model_server: str = "127.0.0.1:5576"
    resolve_interval_s: float = 5.0  # how often a host name is re-resolved to follow pods coming and going
    request_timeout_ms: int = 10_000  # whole-request deadline, carried to the model server (504 after it)
    attempt_timeout_ms: int = 4_000  # one Lazy Pirate try; then the socket is rebuilt and the request resent
    retries: int = 2  # extra tries after the first, within request_timeout_ms
    ready_timeout_ms: int = 1_000  # /readyz ping budget
    heartbeat_ivl_ms: int = 1_000  # ZMTP heartbeats: a silent network cut is noticed in ~3 intervals
    top_k: int = 5  # predictions returned when the caller does not ask
    # Decode, crop and resize in the web workers and send the model server 224×224 pixels (150 KB) instead
    # of the upload: decoding then scales with the web pods, and a GPU pod's few cores only run the model.
    decode_in_web: bool = True
    retry_after_s: int = 1  # Retry-After header on 503
    # Slow clients (services/web/front.py): the request head must arrive within client_header_timeout_s of
    # its first byte's connection, and the body may pause at most client_body_timeout_s; else 408.
    client_header_timeout_s: float = 10.0
    client_body_timeout_s: float = 10.0
    # A request that waited longer than this for a gunicorn thread (counted from its first byte, or from a
    # proxy's X-Request-Start) is answered 503 at once. Under overload a FIFO queue makes every answer as late
    # as the queue is long: this bounds that wait, and the uploads held meanwhile.
    max_queue_wait_ms: int = 1_000


@dataclass(frozen=True)
class ModelConfig(ImageLimits, ZmqSecurity):
    """The model server."""

    host: str = "0.0.0.0"  # frontend and health interfaces
    port: int = 5576  # ZeroMQ ROUTER frontend
    health_port: int = 8081  # HTTP /livez, /readyz, /metrics
    # The model: artifacts come from `make model` (python -m services.model.export).
    model_name: str = "efficientnet_lite0"
    model_runtime: str = "tflite"  # "tflite" (fast on CPU) or "keras" (TensorFlow; uses a GPU when visible)
    model_dir: str = "build/models/efficientnet_lite0"  # holds model.keras, model.tflite, labels.json
    # Instead of model_dir: a keras.applications model with weights="imagenet" (needs the internet once).
    keras_application: str = ""
    input_size: int = 224
    preprocessing: str = "raw"  # raw (model normalises), tf ([-1,1]), torch (ImageNet mean/std), caffe (BGR)
    crop_fraction: float = 0.875  # centre crop before resizing (224/256, as in the reference pipeline)
    inference_threads: int = 2  # TFLite threads for a lone image while nothing else runs: answers fastest
    # TFLite threads for everything else (batches, or several inference workers busy), i.e. under load, when
    # decoders and web workers want the cores too: a multi-threaded invoke stalls whenever one of its threads
    # is descheduled, one single-threaded invoke per core wastes nothing.
    batch_inference_threads: int = 1
    # Pin the lone image's interpreter threads to CPUs of their own (services/model/affinity.py): an invoke
    # after an idle spell otherwise shares one core with its own worker. auto: only when the CPU quota covers
    # every CPU the process may run on (not in a shared pool of CPUs); on; off.
    pin_inference_threads: str = "auto"
    # Batches run at once, each on its own thread with its own interpreters (TFLite; memory × this).
    inference_workers: int = 2
    # Dynamic batching: a batch closes when full or max_batch_delay_ms after its first request. On a CPU the
    # cost per image rises with the batch (cache), so batches stay small; GPUs want 32+ (helm ci/gpu.yaml).
    max_batch_size: int = 4
    max_batch_delay_ms: float = 2.0
    allowed_batch_sizes: str = "1,2,4"  # TFLite shapes kept ready; a batch runs as chunks of these
    max_queue_size: int = 256  # requests admitted but unanswered; over it → OVERLOADED at once
    # Of those, how many one client connection (ROUTER routing id) may hold: a peer that floods requests
    # and never reads the replies gets OVERLOADED and leaves the rest of the queue to everyone else. A web
    # worker thread has one request in flight (two around a Lazy Pirate retry).
    max_in_flight_per_client: int = 32
    workers: int = 2  # inproc workers behind the proxy (socket I/O only; cheap)
    decode_threads: int = 2  # JPEG/PNG decode + resize, in parallel with inference
    drain_timeout_s: float = 25.0  # SIGTERM: time to finish in-flight work before exiting
    # An inference call running longer than this makes /readyz fail (traffic goes to other pods); six times
    # longer it is taken as hung: /livez fails and the process exits, so the orchestrator restarts it.
    inference_timeout_s: float = 5.0

    def batch_sizes(self) -> list[int]:
        """allowed_batch_sizes as a sorted list that always ends at max_batch_size."""
        sizes = sorted({int(s) for s in self.allowed_batch_sizes.split(",") if s.strip()})
        sizes = [s for s in sizes if 0 < s < self.max_batch_size]
        return [*sizes, self.max_batch_size]


_CHOICES = {
    "zmq_security": ("curve", "plaintext"),
    "model_runtime": ("tflite", "keras"),
    "preprocessing": ("raw", "tf", "torch", "caffe"),
    "pin_inference_threads": ("auto", "on", "off"),
}
_POSITIVE = {
    "max_upload_bytes", "max_image_pixels", "request_timeout_ms", "attempt_timeout_ms",
    "max_image_side", "max_decode_bytes",
    "ready_timeout_ms", "heartbeat_ivl_ms", "top_k", "input_size", "inference_threads",
    "batch_inference_threads", "inference_workers", "max_batch_size", "max_queue_size",
    "max_in_flight_per_client", "workers",
    "decode_threads", "resolve_interval_s", "client_header_timeout_s", "client_body_timeout_s",
    "inference_timeout_s", "max_queue_wait_ms",
}  # fmt: skip

C = TypeVar("C", WebConfig, ModelConfig)


def _coerce(key: str, raw: Any, kind: type, source: str) -> Any:
    """Convert a YAML or environment value to the field's type, or raise ConfigError naming the key."""
    if isinstance(raw, str) and kind is not str:
        text = raw.strip()
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
        else:
            try:
                return kind(text)
            except ValueError:
                pass
        raise ConfigError(f"{key} = {raw!r} from {source}: expected {kind.__name__}")
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if kind is str and isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    if type(raw) is not kind:
        raise ConfigError(f"{key} = {raw!r} from {source}: expected {kind.__name__}")
    return raw


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        out[f.name] = kind
    return out


def _validate(cfg: WebConfig | ModelConfig) -> None:
    for key, choices in _CHOICES.items():
        value = getattr(cfg, key, None)
        if value is not None and value not in choices:
            raise ConfigError(f"{key} = {value!r}: must be one of {', '.join(choices)}")
    for key in _POSITIVE:
        value = getattr(cfg, key, None)
        if value is not None and value <= 0:
            raise ConfigError(f"{key} = {value!r}: must be greater than 0")
    if isinstance(cfg, ModelConfig):
        for key in ("port", "health_port"):  # 0 means any free port (tests)
            if not 0 <= getattr(cfg, key) <= 65535:
                raise ConfigError(f"{key} = {getattr(cfg, key)}: must be a TCP port (0-65535)")
        if cfg.max_batch_delay_ms < 0:
            raise ConfigError(f"max_batch_delay_ms = {cfg.max_batch_delay_ms}: must be 0 or more")
        if not 0 < cfg.crop_fraction <= 1:
            raise ConfigError(f"crop_fraction = {cfg.crop_fraction}: must be in (0, 1]")
        try:
            cfg.batch_sizes()
        except ValueError:
            raise ConfigError(
                f"allowed_batch_sizes = {cfg.allowed_batch_sizes!r}: integers, comma-separated"
            ) from None
    if isinstance(cfg, WebConfig) and cfg.attempt_timeout_ms > cfg.request_timeout_ms:
        raise ConfigError("attempt_timeout_ms must not exceed request_timeout_ms")
    if isinstance(cfg, WebConfig) and cfg.request_timeout_ms > MAX_DEADLINE_AHEAD_MS:
        # the model server refuses a deadline further ahead than this (BAD_REQUEST)
        raise ConfigError(f"request_timeout_ms = {cfg.request_timeout_ms}: at most {MAX_DEADLINE_AHEAD_MS}")


def load(
    cls: type[C],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Build a config of type `cls` from defaults, the YAML file, the environment and `overrides`.

    :raise ConfigError: on an unknown key, a value of the wrong type or out of range.
    """
    environ = os.environ if environ is None else environ
    kinds = _field_types(cls)
    values: dict[str, Any] = {}

    path = environ.get(CONFIG_FILE_ENV)
    if path:
        import yaml  # only needed when a file is given

        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        for key, raw in data.items():
            if key not in kinds:
                raise ConfigError(f"unknown setting {key!r} in {path}; known: {', '.join(sorted(kinds))}")
            values[key] = _coerce(key, raw, kinds[key], path)

    for key, kind in kinds.items():
        env_key = ENV_PREFIX + key.upper()
        if env_key in environ:
            values[key] = _coerce(key, environ[env_key], kind, f"${env_key}")

    for key, raw in (overrides or {}).items():
        if key not in kinds:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(kinds))}")
        values[key] = _coerce(key, raw, kinds[key], "overrides")

    cfg = cls(**values)
    _validate(cfg)
    return cfg
