"""Every zerolens setting, typed, with its default, unit, meaning and range: one frozen dataclass per tier.

Values are layered: the defaults below, then the image's own defaults (a YAML file named by
ZEROLENS_IMAGE_CONFIG: where the image keeps its model, which runtime it has), then a YAML file (path in
ZEROLENS_CONFIG), then environment variables `ZEROLENS_<NAME>` (the field name in upper case), then explicit
overrides (tests). Unknown keys
and values of the wrong type fail at start with an error that names the key. Stdlib and PyYAML only.

This module is the one source of the settings: the chart's values schema and settings files, the k8s/
settings files and the README's table are generated from it (`make settings`; a test fails when they are
stale). A setting's chart value is the `helm/zerolens/values.yaml` line whose `@param` names it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from services.protocol import MAX_DEADLINE_AHEAD_MS, MAX_TOP_K

ENV_PREFIX = "ZEROLENS_"
CONFIG_FILE_ENV = "ZEROLENS_CONFIG"
# Set by an image for the settings it must default differently; below the settings file, so a Deployment's
# settings file can still change them (an ENV default would beat that file).
IMAGE_CONFIG_ENV = "ZEROLENS_IMAGE_CONFIG"
# prometheus-client's multiprocess directory (the web tier's gunicorn workers share their samples there)
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A bad setting; the message names the key and where it came from."""


def setting(
    default: Any,
    doc: str,
    *,
    above: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A field with its one-line meaning (`doc`) and the range its value must be in."""
    bounds = {"above": above, "minimum": minimum, "maximum": maximum, "choices": choices}
    return dataclasses.field(default=default, metadata={"doc": doc, **bounds})


@dataclass(frozen=True)
class ImageLimits:
    """Limits on untrusted uploads, shared by both tiers."""

    max_upload_bytes: int = setting(20 * 1024 * 1024, "largest request body in bytes (413 above it)", above=0)
    max_image_pixels: int = setting(
        50_000_000, "largest image, width × height: the decompression-bomb guard", above=0
    )
    # An image thin in one dimension (49,000,000 × 1) passes the area limit. 30,000 admits any phone panorama.
    max_image_side: int = setting(30_000, "longest image side in pixels", above=0)
    # Estimated from the header before decoding (services/imaging.py has the table per format): PNGs and
    # progressive JPEGs decode at full size, baseline JPEGs at up to 1/8. 192 MiB admits a phone's 12 Mpx
    # HEIC or AVIF (estimated ~167 and ~176 MiB); not a 12 Mpx WebP (~246 MiB): send those as JPEG.
    max_decode_bytes: int = setting(
        192 * 1024 * 1024, "memory one image's decode may take, in bytes", above=0
    )
    # Decoding threads reserve their photo's estimate here first, and wait (then 503/OVERLOADED) while it is
    # in use: per-photo room does not multiply by threads. Below max_decode_bytes it caps that one too.
    decode_memory_bytes: int = setting(
        256 * 1024 * 1024, "memory all the decodes running at once in one process may take", above=0
    )


@dataclass(frozen=True)
class ZmqLink:
    """The web → model ZeroMQ hop, shared by both tiers: CurveZMQ keys (services/keys.py) or plaintext."""

    # curve: the model server admits only clients whose key is in curve_keys_dir, and the hop is encrypted.
    # plaintext must be chosen explicitly: any peer that reaches the model port can then use it.
    zmq_security: str = setting(
        "curve", "curve (keys, encrypted) or plaintext", choices=("curve", "plaintext")
    )
    curve_keys_dir: str = setting(
        "", "directory of the CurveZMQ keys (`python -m services.keys DIR` writes them)"
    )
    heartbeat_ivl_ms: int = setting(1_000, "ZMTP heartbeat interval: a silent cut is noticed in ~3", above=0)


@dataclass(frozen=True)
class Telemetry:
    """Logs and traces, shared by both tiers (services/logs.py, services/tracing.py)."""

    # console reads well in a terminal (`make run`); json is one object per line for a log collector.
    log_format: str = setting(
        "console", "log lines: console (readable) or json (one object per line)", choices=("console", "json")
    )
    # e.g. http://otel-collector:4318; spans go to its /v1/traces. Empty: OpenTelemetry is never imported.
    otlp_endpoint: str = setting("", "OTLP/HTTP collector that receives traces; empty: no tracing")


@dataclass(frozen=True)
class WebConfig(ImageLimits, ZmqLink, Telemetry):
    """The Flask/gunicorn web tier."""

    # "host:port" (a host name is resolved to ALL its addresses, e.g. a headless Service) or a comma-separated
    # list of "tcp://addr:port" endpoints.
    model_server: str = setting(
        "127.0.0.1:5576", "where the model servers are: host:port, or tcp:// endpoints"
    )
    resolve_interval_s: float = setting(5.0, "how often the model server name is re-resolved", above=0)
    request_timeout_ms: int = setting(
        10_000,
        "whole-request deadline, carried to the model server (504)",
        above=0,
        maximum=MAX_DEADLINE_AHEAD_MS,
    )
    attempt_timeout_ms: int = setting(
        4_000, "one try; then the socket is rebuilt and the request resent", above=0
    )
    retries: int = setting(2, "extra tries after the first, within request_timeout_ms", minimum=0)
    ready_timeout_ms: int = setting(1_000, "budget of the model ping behind /readyz", above=0)
    top_k: int = setting(5, "predictions returned when the caller does not ask", above=0, maximum=MAX_TOP_K)
    # They go to the model tier at once and batch there; the request's body limit (max_upload_bytes) holds.
    max_images_per_request: int = setting(
        64, "photos one request may carry (the JSON API's form, an infer request)", above=0, maximum=1024
    )
    # Decoding then scales with the web pods, and a GPU pod's few cores only run the model.
    decode_in_web: bool = setting(True, "decode and resize in the web tier; send the model its input pixels")
    retry_after_s: int = setting(1, "Retry-After header on a 503", minimum=0)
    # Slow clients (services/web/front.py) hold a socket, never a thread.
    client_header_timeout_s: float = setting(
        10.0, "a request's head must arrive within this, else 408", above=0
    )
    client_body_timeout_s: float = setting(10.0, "longest pause while a body arrives, else 408", above=0)
    # Counted from the request's first byte, or from a proxy's X-Request-Start. Under overload a FIFO queue
    # makes every answer as late as the queue is long: this bounds that wait, and the uploads held meanwhile.
    max_queue_wait_ms: int = setting(
        1_000, "a request that waited longer for a thread is answered 503", above=0
    )
    # gunicorn (services/web/gunicorn.conf.py). About one process per core: with decode_in_web the threads
    # decode photos, and Pillow releases the GIL while it decodes and resizes.
    web_bind: str = setting("0.0.0.0:8000", "address gunicorn listens on, host:port")
    web_workers: int = setting(2, "gunicorn worker processes", above=0)
    web_threads: int = setting(4, "threads per worker: requests each worker serves at once", above=0)
    web_log_level: str = setting("info", "gunicorn's log level", choices=LOG_LEVELS)
    # "*" only when nothing but the ingress controller can reach the pods (e.g. with a NetworkPolicy).
    forwarded_allow_ips: str = setting("127.0.0.1,::1", "proxies trusted for X-Forwarded-* headers")
    # A proxy that reuses a connection gunicorn has just closed as idle answers that request 502; above
    # ingress-nginx's 60 s upstream keep-alive, it never does. An idle connection costs a socket, no thread.
    web_keepalive_s: int = setting(75, "seconds an idle kept-alive connection stays open", above=0)


@dataclass(frozen=True)
class ModelConfig(ImageLimits, ZmqLink, Telemetry):
    """The model server."""

    host: str = setting("0.0.0.0", "interface of the ZeroMQ and health ports")
    model_log_level: str = setting(
        "info", "the model server's log level; debug adds a line per reply", choices=LOG_LEVELS
    )
    port: int = setting(5576, "ZeroMQ ROUTER frontend port", minimum=0, maximum=65535)  # 0: any free port
    health_port: int = setting(8081, "HTTP port of /livez, /readyz and /metrics", minimum=0, maximum=65535)
    # Artifacts come from `make model` (python -m services.exporter).
    model_name: str = setting("efficientnet_lite0", "model name reported in replies and metrics")
    # keras runs on the backend KERAS_BACKEND names: tensorflow (the default), jax or torch (no TensorFlow).
    model_runtime: str = setting(
        "tflite",
        "tflite (fast on CPU) or keras (TensorFlow, JAX or PyTorch; uses a GPU)",
        choices=("tflite", "keras"),
    )
    # int8 halves the inference CPU at a small accuracy cost (docs/performance.md); tflite runtime only.
    model_precision: str = setting(
        "float", "tflite model: float (model.tflite) or int8 (model_int8.tflite)", choices=("float", "int8")
    )
    model_dir: str = setting(
        "build/models/efficientnet_lite0",
        "directory of model.keras, model.tflite, model_int8.tflite, labels.json",
    )
    # Instead of model_dir (needs the internet once).
    keras_application: str = setting(
        "", "a keras.applications model with ImageNet weights instead of model_dir"
    )
    input_size: int = setting(224, "model input size in pixels", above=0)
    preprocessing: str = setting(
        "raw",
        "input scaling: raw, tf ([-1,1]), torch (mean/std) or caffe (BGR)",
        choices=("raw", "tf", "torch", "caffe"),
    )
    crop_fraction: float = setting(0.875, "centre crop before resizing (224/256)", above=0, maximum=1)
    inference_threads: int = setting(2, "TFLite threads for a lone image while nothing else runs", above=0)
    # Under load decoders and web workers want the cores too: a multi-threaded invoke stalls whenever one of
    # its threads is descheduled, one single-threaded invoke per core wastes nothing.
    batch_inference_threads: int = setting(
        1, "TFLite threads for every other inference (under load)", above=0
    )
    # An invoke after an idle spell otherwise shares one core with its own worker (see model/affinity.py).
    # auto: only when the CPU quota covers every CPU the process may run on (not in a shared pool of CPUs).
    pin_inference_threads: str = setting(
        "auto",
        "pin the lone image's threads to CPUs of their own: auto, on, off",
        choices=("auto", "on", "off"),
    )
    inference_workers: int = setting(
        2, "batches run at once, each with its own interpreters (memory × this)", above=0
    )
    # On a CPU the cost per image rises with the batch (cache), so batches stay small; GPUs want 32+.
    max_batch_size: int = setting(4, "a batch closes when it holds this many images", above=0)
    max_batch_delay_ms: float = setting(2.0, "...or this long after its first image", minimum=0)
    allowed_batch_sizes: str = setting("1,2,4", "batch shapes kept ready; a batch runs as chunks of these")
    max_queue_size: int = setting(
        256, "requests admitted but unanswered; over it OVERLOADED at once", above=0
    )
    # A peer that floods requests and never reads the replies gets OVERLOADED and leaves the rest of the
    # queue to everyone else. A web worker thread has one request in flight (two around a retry).
    max_in_flight_per_client: int = setting(32, "of those, how many one client connection may hold", above=0)
    workers: int = setting(2, "inproc socket workers behind the proxy", above=0)
    decode_threads: int = setting(2, "photo decode threads, working while the model runs", above=0)
    drain_timeout_s: float = setting(
        25.0, "on SIGTERM, time to finish work in flight before exiting", minimum=0
    )
    # Past it /readyz fails (traffic goes to other pods); six times longer the call is taken as hung: /livez
    # fails and the process exits, so the orchestrator restarts it.
    inference_timeout_s: float = setting(
        5.0, "an inference call running longer makes the server unready", above=0
    )

    def batch_sizes(self) -> list[int]:
        """allowed_batch_sizes as a sorted list that always ends at max_batch_size."""
        sizes = sorted({int(s) for s in self.allowed_batch_sizes.split(",") if s.strip()})
        sizes = [s for s in sizes if 0 < s < self.max_batch_size]
        return [*sizes, self.max_batch_size]


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


def _check_range(cfg: WebConfig | ModelConfig, f: dataclasses.Field) -> None:
    value, meta = getattr(cfg, f.name), f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{f.name} = {value!r}: must be one of {', '.join(meta['choices'])}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise ConfigError(f"{f.name} = {value!r}: must be greater than {meta['above']}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ConfigError(f"{f.name} = {value!r}: must be {meta['minimum']} or more")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ConfigError(f"{f.name} = {value!r}: must be {meta['maximum']} or less")


def _validate(cfg: WebConfig | ModelConfig) -> None:
    for f in dataclasses.fields(cfg):
        _check_range(cfg, f)
    if isinstance(cfg, ModelConfig):
        try:
            cfg.batch_sizes()
        except ValueError:
            raise ConfigError(
                f"allowed_batch_sizes = {cfg.allowed_batch_sizes!r}: integers, comma-separated"
            ) from None
    if isinstance(cfg, WebConfig) and cfg.attempt_timeout_ms > cfg.request_timeout_ms:
        raise ConfigError("attempt_timeout_ms must not exceed request_timeout_ms")


def _read_file(path: str, kinds: dict[str, type]) -> dict[str, Any]:
    """The settings in a YAML file, each converted to its field's type."""
    import yaml  # only needed when a file is given

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} in {path}; known: {', '.join(sorted(kinds))}")
    return {key: _coerce(key, raw, kinds[key], path) for key, raw in data.items()}


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
    for file_env in (IMAGE_CONFIG_ENV, CONFIG_FILE_ENV):
        if environ.get(file_env):
            values |= _read_file(environ[file_env], kinds)

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
