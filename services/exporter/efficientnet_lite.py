"""EfficientNet-Lite0 in Keras 3, and the assignment of its PyTorch (lukemelas-style) weights to it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import keras
import numpy as np
from keras import layers

INPUT_SIZE = 224
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage; Lite drops squeeze-excite
# and swish (ReLU6 quantises better) and keeps the stem (32) and head (1280) fixed.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _conv(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str) -> keras.KerasTensor:
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)


def _bn_relu6(x: keras.KerasTensor, name: str, activation: bool = True) -> keras.KerasTensor:
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


def _mbconv(
    x: keras.KerasTensor, index: int, kernel: int, stride: int, expand: int, c_in: int, c_out: int
) -> keras.KerasTensor:
    name = f"block{index}"
    inputs = x
    if expand != 1:
        x = _conv(x, c_in * expand, 1, 1, f"{name}_expand_conv")
        x = _bn_relu6(x, f"{name}_expand")
    # TF-style "same" (stride 2 on an even size pads 0 before, 1 after), as in TensorFlow where these weights
    # were trained and in the PyTorch port's static-same-padding convs. Checked against torch-style symmetric
    # padding (ZeroPadding2D + "valid"): that lowers confidence, e.g. espresso 0.949 → 0.930, daisy 0.36→0.18.
    x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = _bn_relu6(x, f"{name}_dw")
    x = _conv(x, c_out, 1, 1, f"{name}_project_conv")
    x = _bn_relu6(x, f"{name}_project", activation=False)
    if stride == 1 and c_in == c_out:  # drop-connect is training-only
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_model() -> keras.Model:
    """EfficientNet-Lite0 taking float32 RGB 0–255 of shape (N, 224, 224, 3) to 1000 softmax probabilities."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), dtype="float32", name="image")
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="normalise")(inputs)  # (x - 127) / 128
    x = _conv(x, STEM_CHANNELS, 3, 2, "stem_conv")
    x = _bn_relu6(x, "stem")
    index = 0
    for repeats, kernel, stride, expand, c_in, c_out in STAGES:
        for r in range(repeats):
            x = _mbconv(x, index, kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out)
            index += 1
    x = _conv(x, HEAD_CHANNELS, 1, 1, "head_conv")
    x = _bn_relu6(x, "head")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


# Keras layer name → torch module prefix (EfficientNet-PyTorch naming, as in the packaged checkpoint).
_NAMES = (
    (r"stem_conv", "_conv_stem"),
    (r"stem_bn", "_bn0"),
    (r"block(\d+)_expand_conv", r"_blocks.\1._expand_conv"),
    (r"block(\d+)_expand_bn", r"_blocks.\1._bn0"),
    (r"block(\d+)_dwconv", r"_blocks.\1._depthwise_conv"),
    (r"block(\d+)_dw_bn", r"_blocks.\1._bn1"),
    (r"block(\d+)_project_conv", r"_blocks.\1._project_conv"),
    (r"block(\d+)_project_bn", r"_blocks.\1._bn2"),
    (r"head_conv", "_conv_head"),
    (r"head_bn", "_bn1"),
    (r"predictions", "_fc"),
)


def torch_prefix(layer_name: str) -> str:
    for pattern, replacement in _NAMES:
        if re.fullmatch(pattern, layer_name):
            return re.sub(pattern, replacement, layer_name)
    raise KeyError(f"no torch module for Keras layer {layer_name!r}")


def _torch_to_keras(layer: layers.Layer, take: Callable[[str], np.ndarray]) -> list[np.ndarray]:
    """The layer's weights in Keras order and layout, taken from the torch tensors."""
    if isinstance(layer, layers.BatchNormalization):
        take("num_batches_tracked")  # a training counter: nothing in Keras holds it
        return [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    if isinstance(layer, layers.DepthwiseConv2D):
        return [take("weight").transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) → (kh, kw, C, 1)
    if isinstance(layer, layers.Conv2D):
        return [take("weight").transpose(2, 3, 1, 0)]  # (O, I, kh, kw) → (kh, kw, I, O)
    if isinstance(layer, layers.Dense):
        return [take("weight").T, take("bias")]  # (out, in) → (in, out)
    raise TypeError(f"unexpected layer with weights: {layer.name} ({type(layer).__name__})")


def load_torch_weights(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> None:
    """Assign every tensor of `state_dict` to `model`, each exactly once.

    :raise ValueError: on a missing, unused or wrongly shaped tensor (a wrong checkpoint, not a warning).
    """
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = torch_prefix(layer.name)

        def take(attr: str, prefix: str = prefix, owner: str = layer.name) -> np.ndarray:
            key = f"{prefix}.{attr}"
            if key not in state_dict:
                raise ValueError(f"checkpoint lacks {key} (for Keras layer {owner})")
            if key in used:
                raise ValueError(f"checkpoint tensor {key} would be assigned twice")
            used.add(key)
            return np.asarray(state_dict[key])

        values = _torch_to_keras(layer, take)
        for variable, value in zip(layer.weights, values, strict=True):
            if tuple(variable.shape) != value.shape:
                raise ValueError(f"{variable.path} is {tuple(variable.shape)}, the tensor {value.shape}")
            variable.assign(value.astype(np.float32))  # set_weights would read every old value back first
    unused = sorted(set(state_dict) - used)
    if unused:
        raise ValueError(f"{len(unused)} checkpoint tensors were not used, e.g. {unused[:5]}")
