"""The int8 model: post-training quantization calibrated on real photos, with the few layers that lose the
most to int8 kept in float.

Weights and activations are int8 (XNNPACK's QS8 kernels) except FLOAT_LAYERS, which run in float (F32):
the input normalisation, the stem conv and block 0's depthwise conv (the largest layer-wise error, ~3
quantization steps RMS against ~0.3 elsewhere), the linear projections and residual adds of blocks 0–3,
whose unbounded outputs get wide, coarse int8 ranges, and the pooling and classifier. The graph ends at the
logits, output as float32: the runtime applies the softmax in float. A quantized softmax (steps of 1/256) or
int8 logits (steps of ~0.06) tie or swap close top-1 calls.

Calibration photos: the real sample photos of scikit-image and scikit-learn, as random crops, flips, scales
and brightness changes drawn with CALIBRATION_SEED. bench/accuracy.py measures the int8 model on variants
drawn with another seed, so the photos it is judged on are not the ones it was calibrated on.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CALIBRATION_SEED = 20_240_611
CALIBRATION_PER_PHOTO = 16  # 6 photos: 96 images
# The output tensors (first fused name) of the ops kept in float, by Keras layer name; the last one is the
# classifier's (the graph's output), so that the logits are not rounded to int8 steps (~0.06) and tie.
FLOAT_LAYERS = re.compile(
    r"(/(normalise_\d+/(mul|add)|stem_relu6_\d+/Relu6|block0_dw_relu6_\d+/Relu6|avg_pool_\d+/Mean"
    r"|block[0-3]_project_bn_\d+/batchnorm/add_1|block[0-3]_add_\d+/Add)|^StatefulPartitionedCall(_\d+)?:0)$"
)


def sample_photos() -> dict[str, Any]:
    """The real photos (PIL RGB images) that calibrate the int8 model, and that bench/photos.py varies (they
    are listed here because the image's build stage holds only this package)."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_image

    arrays = {
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "astronaut": data.astronaut(),
        "rocket": data.rocket(),
        "china": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
    }
    return {name: Image.fromarray(arr).convert("RGB") for name, arr in arrays.items()}


def random_view(img: Any, rng: np.random.Generator) -> Any:
    """A random square crop of 35–100 % of the short side (so a random scale too), mirrored half the time,
    with brightness × 0.6–1.4."""
    from PIL import Image, ImageEnhance

    w, h = img.size
    side = int(min(w, h) * rng.uniform(0.35, 1.0))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = img.crop((x, y, x + side, y + side))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return ImageEnhance.Brightness(out).enhance(rng.uniform(0.6, 1.4))


def calibration_images(size: int) -> list[np.ndarray]:
    """The representative dataset: CALIBRATION_PER_PHOTO random variants of each sample photo."""
    from PIL import Image

    rng = np.random.default_rng(CALIBRATION_SEED)
    photos = sample_photos().values()
    views = [random_view(img, rng) for img in photos for _ in range(CALIBRATION_PER_PHOTO)]
    return [np.array(view.resize((size, size), Image.Resampling.BICUBIC), np.uint8) for view in views]


def logits_model(model: Any) -> Any:
    """`model` ending at its last layer's logits: the same Dense weights without the softmax."""
    import keras

    last = model.layers[-1]
    logits = keras.layers.Dense(last.units, name="logits")
    out = keras.Model(model.inputs, logits(last.input), name=f"{model.name}_logits")
    logits.set_weights(last.get_weights())
    return out


def _float_nodes(calibrated: bytes) -> list[str]:
    """The output tensors of the ops FLOAT_LAYERS keeps in float, by their names in the calibrated model."""
    from ai_edge_litert.interpreter import Interpreter  # tf.lite.Interpreter is deprecated

    names = (t["name"] for t in Interpreter(model_content=calibrated).get_tensor_details())
    return sorted({name for name in names if FLOAT_LAYERS.search(name.split(";")[0])})


def to_int8(saved_model: Path, size: int) -> bytes:
    """Mixed int8/float TFLite from a SavedModel that ends at the logits: int8 weights and activations but
    for FLOAT_LAYERS, float32 input (pixels 0–255) and float32 logits out."""
    import tensorflow as tf

    images = calibration_images(size)

    def representative() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    # The debugger calibrates once and quantizes with a denylist; it keeps the float input and output. It runs
    # TensorFlow's own (deprecated) interpreter inside, whose warning says nothing about the model written.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*tf\.lite\.Interpreter is deprecated", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative
        )
        nodes = _float_nodes(debugger.calibrated_model)
        log.info("int8 model: %d tensors of FLOAT_LAYERS kept in float", len(nodes))
        if not nodes:  # another architecture: its layers have other names
            log.warning("no layer of FLOAT_LAYERS found: every op is quantized")
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
        return debugger.get_nondebug_quantized_model()


def to_dynamic_range(saved_model: Path) -> bytes:
    """Dynamic-range TFLite (int8 weights, float activations); bench/precision.py compares it, not shipped."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()
