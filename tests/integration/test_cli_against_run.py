"""The `zerolens` console script against what `make run` starts: real photos, a directory, health."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Upload
from tests.support.environ import clean_environ
from tests.support.servers import Proc, local_run

ZEROLENS = Path(sys.executable).parent / "zerolens"  # the console script pip installed next to python
CATS = {"tabby", "tiger cat", "Egyptian cat"}


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {Path(row["path"]).name: row for row in rows}


@pytest.mark.integration
def test_the_console_script_classifies_real_photos(
    spawn: Callable[[Proc], Proc], photos: dict[str, Upload], tmp_path: Path
) -> None:
    service = spawn(local_run(tmp_path))  # what `make run` starts, on free ports
    url = f"http://127.0.0.1:{service.ports['http']}"
    album = tmp_path / "album"
    (album / "more").mkdir(parents=True)
    for name in ("chelsea.jpg", "coffee.jpg"):
        (album / name).write_bytes(photos[name].data)
    (album / "more" / "china.jpg").write_bytes(photos["china.jpg"].data)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(ZEROLENS), *argv, "--url", url]
        return subprocess.run(command, env=clean_environ(), capture_output=True, text=True, timeout=120)

    one = run("predict", str(album / "chelsea.jpg"), "--top-k", "5")
    assert one.returncode == 0, one.stderr
    path, labels = one.stdout.rstrip("\n").split("  ", 1)
    assert path == str(album / "chelsea.jpg")
    assert CATS & {label.rsplit(" ", 2)[0] for label in labels.split(", ")}

    out = tmp_path / "album.jsonl"
    many = run("predict", str(album), "--output", str(out))
    assert many.returncode == 0, many.stderr
    records = _by_name([json.loads(line) for line in out.read_text().splitlines()])
    assert sorted(records) == ["chelsea.jpg", "china.jpg", "coffee.jpg"]
    assert all(r["status"] == "ok" and r["request_id"] for r in records.values())
    assert CATS & {p["label"] for p in records["chelsea.jpg"]["predictions"]}

    health = run("health")
    assert (health.returncode, health.stdout) == (0, "ready: model efficientnet_lite0\n"), health.stderr
