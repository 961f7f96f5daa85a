"""artifacts.verify / read_labels: every file the manifest lists matches its sha256, or one clear error."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from services import artifacts
from services.artifacts import ArtifactError, read_labels, verify

LABELS = ["tench", "goldfish", "great white shark"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A small directory shaped like the exporter's: two model files, labels.json and its manifest."""
    files = {
        "model.tflite": b"TFL3 not really a model",
        "model.keras": b"PK not really a zip",
        "labels.json": json.dumps(LABELS).encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    manifest = {"name": "tiny", "num_classes": 3, "files": {n: _sha(d) for n, d in files.items()}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_an_intact_directory_passes(model_dir: Path) -> None:
    manifest = verify(model_dir, needed=("model.tflite", "labels.json"))
    assert manifest["name"] == "tiny"
    assert read_labels(model_dir, manifest) == LABELS


@pytest.mark.parametrize("name", ["model.tflite", "model.keras", "labels.json"])
def test_every_listed_file_is_checked_not_only_the_loaded_one(model_dir: Path, name: str) -> None:
    path = model_dir / name
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ArtifactError, match=rf"{path} does not match its manifest \(sha256 [0-9a-f]{{12}}…"):
        verify(model_dir, needed=("model.tflite",))


def test_labels_rotated_by_one_are_refused(model_dir: Path) -> None:
    (model_dir / "labels.json").write_text(json.dumps(LABELS[1:] + LABELS[:1]))
    with pytest.raises(
        ArtifactError, match="labels.json does not match its manifest.*rebuild with `make model`"
    ):
        verify(model_dir)


def test_a_file_the_runtime_needs_must_be_listed(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    del manifest["files"]["labels.json"]
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    verify(model_dir, needed=("model.tflite",))  # listed files still all match
    with pytest.raises(ArtifactError, match="manifest.json does not list labels.json"):
        verify(model_dir, needed=("model.tflite", "labels.json"))


@pytest.mark.parametrize("name", ["model.tflite", "labels.json"])
def test_a_missing_file_is_named(model_dir: Path, name: str) -> None:
    (model_dir / name).unlink()
    with pytest.raises(ArtifactError, match=rf"{model_dir / name} is missing"):
        verify(model_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(model_dir: Path) -> None:
    (model_dir / "model.keras").chmod(0)
    with pytest.raises(ArtifactError, match="model.keras cannot be read"):
        verify(model_dir)


def test_a_directory_in_place_of_a_file_is_named(model_dir: Path) -> None:
    (model_dir / "model.keras").unlink()
    (model_dir / "model.keras").mkdir()
    with pytest.raises(ArtifactError, match="model.keras cannot be read"):
        verify(model_dir)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "manifest.json is missing"),
        (b"", "manifest.json is not valid JSON"),
        (b'{"files": {', "manifest.json is not valid JSON"),
        (b"\xff\xfe{}", "manifest.json is not valid JSON"),
        (b"[]", 'manifest.json has no "files" table'),
        (b'{"name": "tiny"}', 'manifest.json has no "files" table'),
        (b'{"files": ["model.tflite"]}', 'manifest.json has no "files" table'),
        (b'{"files": {"model.tflite": 42}}', 'manifest.json has no "files" table'),
    ],
)
def test_a_bad_manifest_is_one_clear_error(model_dir: Path, content: bytes | None, says: str) -> None:
    if content is None:
        (model_dir / "manifest.json").unlink()
    else:
        (model_dir / "manifest.json").write_bytes(content)
    with pytest.raises(ArtifactError, match=says) as info:
        verify(model_dir)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["../labels.json", "/etc/hostname", "", ".", "manifest.json", "sub/x"])
def test_the_manifest_lists_only_files_of_the_directory(model_dir: Path, name: str) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["files"][name] = _sha(b"")
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a file of the model"):
        verify(model_dir)


def _resign_labels(directory: Path, labels: object) -> dict:
    data = json.dumps(labels).encode()
    (directory / "labels.json").write_bytes(data)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["labels.json"] = _sha(data)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return verify(directory)  # a manifest rewritten by hand to match: verify alone cannot tell


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        (LABELS[:2], "holds 2 labels, the manifest says 3 classes"),
        ([*LABELS, "extra"], "holds 4 labels, the manifest says 3 classes"),
        ({"0": "tench"}, "not a list of class names"),
        (["tench", 1, "shark"], "not a list of class names"),
    ],
)
def test_labels_of_the_wrong_shape_are_refused(model_dir: Path, labels: object, says: str) -> None:
    manifest = _resign_labels(model_dir, labels)
    with pytest.raises(ArtifactError, match=says):
        read_labels(model_dir, manifest)


def test_labels_need_the_class_count(model_dir: Path) -> None:
    _edit_manifest(model_dir, num_classes=None)
    with pytest.raises(ArtifactError, match="the manifest says None classes"):
        read_labels(model_dir, verify(model_dir))


def test_unparsable_labels_are_named(model_dir: Path) -> None:
    manifest = verify(model_dir)
    (model_dir / "labels.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ArtifactError, match=r"labels.json is not valid JSON \("):
        read_labels(model_dir, manifest)


def test_the_built_artifacts_verify() -> None:
    """The directory `make model` writes passes the check the model server runs at every start."""
    directory = Path(__file__).resolve().parents[2] / "build" / "models" / "efficientnet_lite0"
    if not (directory / artifacts.MANIFEST).exists():
        pytest.skip("no built artifacts")
    manifest = verify(directory, needed=("model.tflite", "model.keras", "labels.json"))
    assert len(read_labels(directory, manifest)) == manifest["num_classes"] == 1000


def test_the_manifest_lists_the_tflite_file_of_every_precision() -> None:
    from services.exporter import export

    assert artifacts.TFLITE_FILES == {"float": "model.tflite", "int8": "model_int8.tflite"}
    assert set(artifacts.TFLITE_FILES.values()) <= set(export.FILES)  # each hashed into manifest.json
