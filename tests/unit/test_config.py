"""Layering and validation of the typed configuration (services/config.py)."""

from __future__ import annotations

import pytest

from services import config
from services.config import ConfigError, ModelConfig, WebConfig


def test_defaults_work_locally():
    web = config.load(WebConfig, environ={})
    model = config.load(ModelConfig, environ={})
    assert web.model_server == "127.0.0.1:5576"
    assert model.port == 5576 and model.health_port == 8081
    assert model.batch_sizes() == [1, 2, 4]


def test_yaml_then_environment_then_overrides(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("max_batch_size: 8\nmax_batch_delay_ms: 3\nmodel_runtime: keras\n")
    env = {"ZEROLENS_CONFIG": str(path), "ZEROLENS_MAX_BATCH_SIZE": "32", "ZEROLENS_WORKERS": "3"}
    cfg = config.load(ModelConfig, overrides={"workers": 4}, environ=env)
    assert cfg.max_batch_size == 32  # environment beats the file
    assert cfg.max_batch_delay_ms == 3.0 and isinstance(cfg.max_batch_delay_ms, float)
    assert cfg.model_runtime == "keras"
    assert cfg.workers == 4  # explicit overrides beat everything
    assert cfg.batch_sizes() == [1, 2, 4, 32]


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "web.yaml"
    path.write_text("model_servr: x:1\n")
    with pytest.raises(ConfigError, match="unknown setting 'model_servr' in .*web.yaml"):
        config.load(WebConfig, environ={"ZEROLENS_CONFIG": str(path)})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ZEROLENS_MAX_BATCH_SIZE": "many"}, r"max_batch_size = 'many' from \$ZEROLENS_MAX_BATCH_SIZE"),
        ({"ZEROLENS_MODEL_RUNTIME": "onnx"}, "model_runtime = 'onnx': must be one of tflite, keras"),
        ({"ZEROLENS_MODEL_PRECISION": "int4"}, "model_precision = 'int4': must be one of float, int8"),
        ({"ZEROLENS_MAX_QUEUE_SIZE": "0"}, "max_queue_size = 0: must be greater than 0"),
        ({"ZEROLENS_CROP_FRACTION": "1.5"}, "crop_fraction"),
        ({"ZEROLENS_MAX_BATCH_DELAY_MS": "-1"}, "max_batch_delay_ms"),
        ({"ZEROLENS_ALLOWED_BATCH_SIZES": "1,x"}, "allowed_batch_sizes"),
    ],
)
def test_bad_values_fail_naming_the_key(env, message):
    with pytest.raises(ConfigError, match=message):
        config.load(ModelConfig, environ=env)


def test_wrong_type_in_yaml(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("workers: [1, 2]\n")
    with pytest.raises(ConfigError, match="workers = \\[1, 2\\] from .*expected int"):
        config.load(ModelConfig, environ={"ZEROLENS_CONFIG": str(path)})


def test_attempt_timeout_within_request_timeout():
    with pytest.raises(ConfigError, match="attempt_timeout_ms"):
        config.load(WebConfig, overrides={"attempt_timeout_ms": 5000, "request_timeout_ms": 1000}, environ={})


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot read config file /nope.yaml"):
        config.load(WebConfig, environ={"ZEROLENS_CONFIG": "/nope.yaml"})


def test_request_timeout_stays_within_what_the_model_server_accepts() -> None:
    with pytest.raises(ConfigError, match="request_timeout_ms"):
        config.load(WebConfig, overrides={"request_timeout_ms": 10 * 60 * 1000}, environ={})


def test_an_images_defaults_sit_below_the_settings_file_and_the_environment(tmp_path):
    image = tmp_path / "image.yaml"
    image.write_text("model_dir: /opt/zerolens/model\nmodel_runtime: keras\nworkers: 3\n")
    settings = tmp_path / "model.yaml"
    settings.write_text("model_runtime: tflite\n")
    environ = {"ZEROLENS_IMAGE_CONFIG": str(image), "ZEROLENS_CONFIG": str(settings), "ZEROLENS_WORKERS": "5"}
    cfg = config.load(config.ModelConfig, environ=environ)
    assert (cfg.model_dir, cfg.model_runtime, cfg.workers) == ("/opt/zerolens/model", "tflite", 5)
    image.write_text("modle_dir: /x\n")
    with pytest.raises(ConfigError, match=f"unknown setting 'modle_dir' in {image}"):
        config.load(config.ModelConfig, environ={"ZEROLENS_IMAGE_CONFIG": str(image)})


def test_model_precision_is_float_unless_int8_is_chosen(tmp_path):
    assert config.load(ModelConfig, environ={}).model_precision == "float"
    assert config.load(ModelConfig, environ={"ZEROLENS_MODEL_PRECISION": "int8"}).model_precision == "int8"
    path = tmp_path / "model.yaml"
    path.write_text("model_precision: int8\n")
    assert config.load(ModelConfig, environ={"ZEROLENS_CONFIG": str(path)}).model_precision == "int8"


def test_int8_needs_the_tflite_runtime(tmp_path):
    from services.model.runtime import ModelError, load_runtime

    cfg = config.load(
        ModelConfig,
        {"model_dir": str(tmp_path), "model_runtime": "keras", "model_precision": "int8"},
        environ={},
    )
    with pytest.raises(ModelError, match="model_precision=int8 needs model_runtime=tflite"):
        load_runtime(cfg)  # refused before anything is read or loaded


def test_gpu_batch_sizes_up_to_256_are_accepted():
    sizes = "1,2,4,8,16,32,64,128,256"
    cfg = config.load(ModelConfig, {"max_batch_size": 256, "allowed_batch_sizes": sizes}, environ={})
    assert cfg.batch_sizes() == [1, 2, 4, 8, 16, 32, 64, 128, 256]
