"""services/config.py is the one source of the settings: what is generated from it is current, every setting
has its chart value, and the chart refuses exactly what the services refuse."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from services import config
from services.config import ConfigError
from tests.deploy.conftest import ROOT, helm_template_error, render

SCRIPT = ROOT / "scripts" / "settings.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_script", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_current() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_setting_without_a_chart_value_is_named(gen: ModuleType, tmp_path: Path, monkeypatch) -> None:
    lines = gen.VALUES.read_text().splitlines(keepends=True)
    values = tmp_path / "values.yaml"
    values.write_text("".join(line for line in lines if "(`top_k`)" not in line))
    monkeypatch.setattr(gen, "VALUES", values)
    with pytest.raises(SystemExit, match="no `## @param` line names top_k"):
        gen.value_paths()


def test_a_chart_default_unlike_the_services_default_is_named(gen: ModuleType, tmp_path: Path, monkeypatch):
    values = tmp_path / "values.yaml"
    values.write_text(gen.VALUES.read_text().replace("  topK: 5\n", "  topK: 7\n"))
    monkeypatch.setattr(gen, "VALUES", values)
    assert gen.check_defaults(gen.value_paths()) == ["values.yaml web.topK = 7, but top_k defaults to 5"]


def bounded(gen: ModuleType) -> list[tuple[str, str, object]]:
    """(setting, chart value, a value just out of its range) for every setting with a range."""
    out = []
    for name, path in sorted(gen.value_paths().items()):
        meta = gen.fields()[name].metadata
        if meta["choices"]:
            out.append((name, path, "nonsense"))
        elif meta["above"] is not None:
            out.append((name, path, meta["above"]))
        elif meta["minimum"] is not None:
            out.append((name, path, meta["minimum"] - 1))
        if meta["maximum"] is not None:
            out.append((name, path, meta["maximum"] + 1))
    return out


def test_the_chart_refuses_what_the_services_refuse(gen: ModuleType) -> None:
    cases = bounded(gen)
    assert len(cases) > 20  # every range of config.py, not a sample
    for name, path, bad in cases:
        tiers = [cls for cls in gen.TIERS.values() if name in {f.name for f in dataclasses.fields(cls)}]
        for cls in tiers:
            with pytest.raises(ConfigError, match=name):
                config.load(cls, overrides={name: bad}, environ={})
        assert path in helm_template_error("--set-json", f"{path}={json.dumps(bad)}")


def test_each_settings_file_holds_the_chart_values(gen: ModuleType) -> None:
    docs = render("--set", "web.topK=9", "--set", "model.batching.maxQueueSize=64")
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    assert "top_k: 9" in maps["zerolens-web"]["web.yaml"].splitlines()
    assert "max_queue_size: 64" in maps["zerolens-model"]["model.yaml"].splitlines()
