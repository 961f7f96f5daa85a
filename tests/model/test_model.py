"""The converted EfficientNet-Lite0 on real photos, through both runtimes, plus the exporter's guarantees."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

import numpy as np
import pytest
from PIL import Image

from services import config, imaging
from services.exporter import export
from services.model.runtime import ModelError, Runtime, load_runtime, preprocess_into, warm_up

pytestmark = pytest.mark.integration  # TensorFlow: exports the model and runs both runtimes

CATS = {"tabby", "tiger cat", "Egyptian cat"}


def jpeg(photo: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def model_input(photo: np.ndarray) -> np.ndarray:
    """Exactly what the model server feeds the runtime: decoded JPEG bytes, centre crop, 224 px."""
    return np.asarray(imaging.load_rgb(jpeg(photo), 224, 0.875))


@pytest.fixture(scope="session")
def model_inputs() -> dict[str, np.ndarray]:
    """The real photos (chelsea, coffee, china) as the runtime gets them: 224×224×3 uint8 arrays.

    Not the root conftest's `photos` (uploads as a browser sends them): these are already decoded.
    """
    from skimage import data
    from sklearn.datasets import load_sample_image

    raw = {"chelsea": data.chelsea(), "coffee": data.coffee(), "china": load_sample_image("china.jpg")}
    return {name: model_input(photo) for name, photo in raw.items()}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("models") / "efficientnet_lite0"
    export.export(out, runtime_check=True)  # a few seconds
    return str(out)


def make_config(model_dir: str, **overrides: object) -> config.ModelConfig:
    return config.load(config.ModelConfig, {"model_dir": model_dir, **overrides}, environ={})


@pytest.fixture(scope="session", params=["tflite", "keras"])
def runtime(request: pytest.FixtureRequest, model_dir: str) -> Runtime:
    cfg = make_config(model_dir, model_runtime=request.param, max_batch_size=4, allowed_batch_sizes="1,2,4")
    rt = load_runtime(cfg)
    warm_up(rt, cfg.batch_sizes())
    return rt


def top(rt: Runtime, image: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
    probs = rt.predict_batch(image[None])[0]
    return [(rt.labels[i], float(probs[i])) for i in np.argsort(probs)[::-1][:k]]


def test_labels_are_in_keras_order(runtime: Runtime) -> None:
    assert len(runtime.labels) == 1000
    assert (runtime.labels[281], runtime.labels[282], runtime.labels[967]) == (
        "tabby",
        "tiger cat",
        "espresso",
    )


def test_chelsea_is_a_cat(runtime: Runtime, model_inputs: dict[str, np.ndarray]) -> None:
    assert {label for label, _ in top(runtime, model_inputs["chelsea"])} & CATS


def test_coffee_is_espresso(runtime: Runtime, model_inputs: dict[str, np.ndarray]) -> None:
    label, p = top(runtime, model_inputs["coffee"])[0]
    assert label == "espresso" and p > 0.8


def test_china_is_a_palace(runtime: Runtime, model_inputs: dict[str, np.ndarray]) -> None:
    assert top(runtime, model_inputs["china"])[0][0] == "palace"


def test_output_is_probabilities(runtime: Runtime, model_inputs: dict[str, np.ndarray]) -> None:
    out = runtime.predict_batch(np.stack(list(model_inputs.values())))
    assert out.shape == (3, 1000) and out.dtype == np.float32
    assert (out >= 0).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("n", [3, 5])  # 3 pads up to 4; 5 runs as 4 + 1
def test_a_batch_equals_singles(runtime: Runtime, model_inputs: dict[str, np.ndarray], n: int) -> None:
    images = np.stack(
        [*model_inputs.values(), model_inputs["coffee"][::-1], model_inputs["china"][:, ::-1]][:n]
    )
    batch = runtime.predict_batch(images)
    singles = np.concatenate([runtime.predict_batch(image[None]) for image in images])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_an_empty_batch_and_a_wrong_shape(runtime: Runtime) -> None:
    assert runtime.predict_batch(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 1000)
    with pytest.raises(ValueError, match="uint8"):
        runtime.predict_batch(np.zeros((1, 200, 200, 3), np.uint8))


def test_tflite_and_keras_agree(model_dir: str, model_inputs: dict[str, np.ndarray]) -> None:
    images = np.stack(list(model_inputs.values()))
    outs = [
        load_runtime(make_config(model_dir, model_runtime=r)).predict_batch(images)
        for r in ("tflite", "keras")
    ]
    assert np.abs(outs[0] - outs[1]).max() < 1e-4


def test_tflite_inference_workers_run_side_by_side(
    model_dir: str, model_inputs: dict[str, np.ndarray]
) -> None:
    rt = load_runtime(make_config(model_dir, inference_workers=2, inference_threads=1))
    images = np.stack(list(model_inputs.values()))
    expected = rt.predict_batch(images)
    with ThreadPoolExecutor(4) as pool:  # more callers than interpreter sets: they take turns
        results = list(pool.map(lambda _: rt.predict_batch(images), range(8)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)


class _CountingInterpreter:
    """Delegates to a TFLite interpreter and counts its invokes."""

    def __init__(self, inner: object) -> None:
        self.inner, self.invokes = inner, 0

    def invoke(self) -> None:
        self.invokes += 1
        self.inner.invoke()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_tflite_lone_image_takes_the_multithreaded_interpreter(
    model_dir: str, model_inputs: dict[str, np.ndarray]
) -> None:
    rt = load_runtime(
        make_config(model_dir, inference_workers=2, inference_threads=2, batch_inference_threads=1)
    )
    assert rt._solo is not None
    solo = rt._solo[1] = _CountingInterpreter(rt._solo[1])
    images = np.stack(list(model_inputs.values()))
    together = rt.predict_batch(images)  # a batch: the single-threaded interpreters
    assert solo.invokes == 0
    alone = np.concatenate([rt.predict_batch(image[None]) for image in images])
    assert solo.invokes == len(images)  # nothing else was running: each lone image took it
    np.testing.assert_allclose(alone, together, atol=1e-5)
    with ThreadPoolExecutor(4) as pool:  # concurrent lone images: the solo one or a pool set, never both
        results = list(pool.map(lambda i: rt.predict_batch(images[i % len(images)][None]), range(24)))
    for i, got in enumerate(results):
        np.testing.assert_allclose(got[0], together[i % len(images)], atol=1e-5)


class _AffinityRecorder(_CountingInterpreter):
    """Records the CPUs the calling thread may use while it invokes."""

    def invoke(self) -> None:
        self.seen = os.sched_getaffinity(0)
        super().invoke()


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs (Linux)"
)
def test_tflite_lone_image_pool_is_pinned(model_dir: str, model_inputs: dict[str, np.ndarray]) -> None:
    allowed = os.sched_getaffinity(0)
    unpinned = load_runtime(make_config(model_dir, inference_threads=2, pin_inference_threads="off"))
    assert unpinned._pinning is None
    rt = load_runtime(make_config(model_dir, inference_threads=2, pin_inference_threads="on"))
    assert rt._pinning is not None and len(rt._pinning.worker_cpus) == 1
    solo = rt._solo[1] = _AffinityRecorder(rt._solo[1])
    image = model_inputs["chelsea"][None]
    np.testing.assert_allclose(rt.predict_batch(image), unpinned.predict_batch(image), atol=1e-5)
    assert solo.invokes == 1
    assert solo.seen == allowed - rt._pinning.worker_cpus  # off the pool's CPU while it ran
    assert os.sched_getaffinity(0) == allowed  # and back afterwards


def test_config_that_contradicts_the_manifest_is_refused(model_dir: str) -> None:
    with pytest.raises(ModelError, match="preprocessing"):
        load_runtime(make_config(model_dir, preprocessing="tf"))


def _broken_copy(model_dir: str, tmp_path, name: str, data: bytes, resign: bool = False) -> str:
    """A copy of the artifacts with `name` replaced by `data` (and, with resign, its hash recorded)."""
    out = tmp_path / "broken"
    shutil.copytree(model_dir, out)
    (out / name).write_bytes(data)
    if resign:  # as a hand-edited manifest would: only loading the file can tell
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["files"][name] = hashlib.sha256(data).hexdigest()
        (out / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


@pytest.mark.parametrize("runtime", ["tflite", "keras"])
def test_labels_altered_after_export_are_refused(model_dir: str, tmp_path, runtime: str) -> None:
    labels = json.loads(Path(model_dir, "labels.json").read_text())
    rotated = json.dumps(labels[1:] + labels[:1], indent=0).encode()  # same names, every answer wrong
    broken = _broken_copy(model_dir, tmp_path, "labels.json", rotated)
    with pytest.raises(ModelError, match=r"labels.json does not match its manifest \(sha256"):
        load_runtime(make_config(broken, model_runtime=runtime))


def test_the_tflite_runtime_checks_the_keras_file_too(model_dir: str, tmp_path) -> None:
    broken = _broken_copy(model_dir, tmp_path, "model.keras", b"PK\x03\x04")
    with pytest.raises(ModelError, match="model.keras does not match its manifest"):
        load_runtime(make_config(broken, model_runtime="tflite"))


@pytest.mark.parametrize(
    ("runtime", "name", "damage", "says"),
    [
        (
            "tflite",
            "model.tflite",
            "truncate",
            r"cannot be loaded \(ValueError: The model is not a valid Flatbuffer",
        ),
        ("keras", "model.keras", "truncate", r"cannot be loaded \(not a .keras zip archive\)"),
        ("keras", "model.keras", "flip", r"cannot be loaded \(BadZipFile: Bad CRC-32"),
    ],
)
def test_a_model_file_that_matches_a_rewritten_manifest_but_does_not_load(
    model_dir: str, tmp_path, runtime: str, name: str, damage: str, says: str
) -> None:
    data = bytearray(Path(model_dir, name).read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # the zip directory intact, a stored member's bytes not
        data[len(data) // 3 : len(data) // 3 + 4096] = bytes(b ^ 0xFF for b in data[len(data) // 3 :][:4096])
    broken = _broken_copy(model_dir, tmp_path, name, bytes(data), resign=True)
    with pytest.raises(ModelError, match=f"{name} {says}") as info:
        load_runtime(make_config(broken, model_runtime=runtime))
    assert "\n" not in str(info.value)


def test_labels_of_the_wrong_length_are_refused(model_dir: str, tmp_path) -> None:
    labels = json.loads(Path(model_dir, "labels.json").read_text())
    broken = _broken_copy(model_dir, tmp_path, "labels.json", json.dumps(labels[:-1]).encode(), resign=True)
    with pytest.raises(ModelError, match="labels.json holds 999 labels, the manifest says 1000 classes"):
        load_runtime(make_config(broken))


def test_a_keras_application_needs_no_artifacts(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import keras

    def application(weights: str) -> keras.Model:  # stands in for the download of real weights
        inputs = keras.Input((224, 224, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        return keras.Model(inputs, keras.layers.Dense(1000, activation="softmax")(pooled))

    monkeypatch.setattr(keras.applications, "MobileNetV2", application)
    cfg = make_config(
        str(tmp_path / "none"), model_runtime="keras", keras_application="MobileNetV2", preprocessing="tf"
    )
    rt = load_runtime(cfg)
    assert rt.name == "mobilenetv2" and rt.labels[967] == "espresso"
    assert rt.predict_batch(np.zeros((1, 224, 224, 3), np.uint8)).shape == (1, 1000)


def test_export_is_idempotent(model_dir: str) -> None:
    before = {p: os.stat(os.path.join(model_dir, p)).st_mtime_ns for p in os.listdir(model_dir)}
    manifest = export.export(model_dir)
    assert manifest["files"].keys() == {"model.keras", "model.tflite", "model_int8.tflite", "labels.json"}
    assert manifest["input_size"] == 224 and manifest["preprocessing"] == "raw"
    after = {p: os.stat(os.path.join(model_dir, p)).st_mtime_ns for p in os.listdir(model_dir)}
    assert {p: t for p, t in after.items() if p != "manifest.json"} == {
        p: t for p, t in before.items() if p != "manifest.json"
    }


def test_export_rebuilds_a_damaged_directory(model_dir: str, tmp_path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(model_dir, out)
    (out / "labels.json").write_text("[]")
    export.export(out)
    assert len(json.loads((out / "labels.json").read_text())) == 1000


def test_export_rejects_a_checkpoint_with_the_wrong_sha256(tmp_path) -> None:
    fake = tmp_path / "efficientnet-lite0.pth"
    fake.write_bytes(b"PK\x03\x04 not the pinned weights")
    with pytest.raises(export.ExportError, match="does not match the pinned"):
        export.export(tmp_path / "out", source=fake)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == [fake.name]  # no half-built temporary left behind


@pytest.mark.parametrize("mode", ["raw", "tf", "torch", "caffe"])
def test_preprocessing_modes(mode: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    x = images.astype(np.float64)
    expected = {
        "raw": x,
        "tf": x / 127.5 - 1,
        "torch": (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
        "caffe": x[..., ::-1] - [103.939, 116.779, 123.68],
    }[mode]
    out = np.empty(images.shape, np.float32)
    preprocess_into(images, mode, out)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _uint8_model(size: int, classes: int) -> bytes:
    """A fully quantized TFLite model, uint8 pixels in and uint8 scores out, as some published ones are."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def scores(x: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(tf.matmul(tf.reduce_mean(x, axis=[1, 2]), tf.fill([3, classes], 0.001)))

    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([scores.get_concrete_function()], scores)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)] for _ in range(4)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    return converter.convert()


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")  # none are needed here
def test_a_model_without_float32_pixels_in_and_scores_out_is_refused(model_dir: str, tmp_path) -> None:
    quantized = _uint8_model(224, 1000)
    broken = _broken_copy(model_dir, tmp_path, "model.tflite", quantized, resign=True)
    with pytest.raises(ModelError, match=r"model.tflite takes uint8, not float32: .*make model") as info:
        load_runtime(make_config(broken))
    assert "\n" not in str(info.value)


def test_the_int8_model_gives_logits_and_the_runtime_answers_probabilities(
    model_dir: str, model_inputs: dict[str, np.ndarray]
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.path.join(model_dir, "model_int8.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32  # pixels 0–255, normalised in-graph
    assert interpreter.get_output_details()[0]["dtype"] == np.float32  # logits: the softmax runs in float
    rt = load_runtime(make_config(model_dir, model_precision="int8"))
    probs = rt.predict_batch(np.stack(list(model_inputs.values())))
    assert (probs >= 0).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert top(rt, model_inputs["coffee"])[0][0] == "espresso"


def test_the_tflite_path_never_imports_tensorflow(model_dir: str) -> None:
    code = (
        "import sys; from services import config; from services.model.runtime import load_runtime; "
        f"load_runtime(config.load(config.ModelConfig, {{'model_dir': {model_dir!r}}}, environ={{}})); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_checkpoint_tensor_is_used_exactly_once() -> None:
    from services.exporter import efficientnet_lite
    from services.exporter.checkpoint import read_state_dict

    state = read_state_dict(export.default_checkpoint())
    model = efficientnet_lite.build_model()
    with pytest.raises(ValueError, match="lacks _fc.bias"):
        efficientnet_lite.load_torch_weights(model, {k: v for k, v in state.items() if k != "_fc.bias"})
    with pytest.raises(ValueError, match="1 checkpoint tensors were not used"):
        efficientnet_lite.load_torch_weights(model, {**state, "_blocks.16._bn0.weight": state["_bn0.weight"]})
    efficientnet_lite.load_torch_weights(model, state)
