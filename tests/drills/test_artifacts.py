"""F13: broken or altered model artifacts (truncated model, altered labels.json, bad manifest): the model
server exits 2 after one log line naming the file, never binds its ZeroMQ port, never reports ready; a web
tier in front of it answers 503 with Retry-After meanwhile.

Each case breaks a copy of the artifacts under tmp_path; the built directory itself is never touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

from tests.support.servers import Proc, ensure_model, http_status, model_server, web_server

pytestmark = [pytest.mark.integration, pytest.mark.drill]

Breaker = Callable[[Path], None]


def _resign(directory: Path, name: str) -> None:
    """Record `name`'s current sha256 in the manifest, as a hand-edited manifest would."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    path.write_text(json.dumps(manifest))


def _truncate(name: str, resign: bool = False) -> Breaker:
    def breaker(directory: Path) -> None:
        data = (directory / name).read_bytes()
        (directory / name).write_bytes(data[: len(data) // 2])
        if resign:
            _resign(directory, name)

    return breaker


def _rotate_labels(directory: Path) -> None:
    """Every class named after its neighbour: the same names, the same length, all answers wrong."""
    labels = json.loads((directory / "labels.json").read_text())
    (directory / "labels.json").write_text(json.dumps(labels[1:] + labels[:1], indent=0))


def _short_labels(directory: Path) -> None:
    labels = json.loads((directory / "labels.json").read_text())
    (directory / "labels.json").write_text(json.dumps(labels[:-1], indent=0))
    _resign(directory, "labels.json")


def _unlist(name: str) -> Breaker:
    def breaker(directory: Path) -> None:
        manifest = json.loads((directory / "manifest.json").read_text())
        del manifest["files"][name]
        (directory / "manifest.json").write_text(json.dumps(manifest))

    return breaker


def _write(name: str, data: bytes) -> Breaker:
    return lambda directory: (directory / name).write_bytes(data)


def _remove(name: str) -> Breaker:
    return lambda directory: (directory / name).unlink()


class Case(NamedTuple):
    breaker: Breaker  # what it does to the copy
    names: str  # the file the one line must name
    says: str  # and what it must say about it
    runtime: str = "tflite"


CASES = {
    "truncated model.tflite": Case(_truncate("model.tflite"), "model.tflite", "does not match its manifest"),
    "truncated model.tflite, manifest re-signed": Case(
        _truncate("model.tflite", resign=True), "model.tflite", "cannot be loaded"
    ),
    "truncated model.keras (keras runtime)": Case(
        _truncate("model.keras"), "model.keras", "does not match its manifest", runtime="keras"
    ),
    "truncated model.keras (tflite runtime)": Case(
        _truncate("model.keras"), "model.keras", "does not match its manifest"
    ),
    "labels.json rotated by one": Case(_rotate_labels, "labels.json", "does not match its manifest"),
    "labels.json one short, manifest re-signed": Case(_short_labels, "labels.json", "holds 999 labels"),
    "labels.json garbage": Case(_write("labels.json", b"\xff\xfe]"), "labels.json", "does not match"),
    "labels.json missing": Case(_remove("labels.json"), "labels.json", "is missing"),
    "labels.json not in the manifest": Case(_unlist("labels.json"), "manifest.json", "does not list"),
    "manifest.json garbage": Case(_write("manifest.json", b'{"files": {'), "manifest.json", "not valid JSON"),
    "manifest.json missing": Case(_remove("manifest.json"), "manifest.json", "is missing"),
}


@dataclass
class Outcome:
    exit_code: int
    exit_s: float
    log: str
    readyz: set[int]  # what /readyz answered while it ran (0: nothing listening yet)
    zmq_bound: bool  # something accepted a connection on the ZeroMQ port

    @property
    def ready_seen(self) -> bool:
        return 200 in self.readyz

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if "ERROR" in line]


def _broken_copy(tmp: Path, case: str) -> Path:
    directory = tmp / "".join(c if c.isalnum() else "-" for c in case)
    shutil.copytree(ensure_model(), directory)
    CASES[case].breaker(directory)
    return directory


def _run_broken(server: Proc, also: Callable[[], None] | None = None) -> Outcome:
    """Run the model server to its exit, watching its readiness and ZeroMQ port all along."""
    readyz = f"http://127.0.0.1:{server.ports['health']}/readyz"
    seen: set[int] = set()
    bound: list[bool] = []

    def watch() -> None:
        seen.add(http_status(readyz, timeout=0.5))
        with socket.socket() as probe:
            probe.settimeout(0.5)
            bound.append(probe.connect_ex(("127.0.0.1", server.ports["zmq"])) == 0)
        if also is not None:
            also()

    started = time.monotonic()
    exit_code = server.run_to_exit(timeout_s=60, watch=watch)
    elapsed = time.monotonic() - started
    return Outcome(exit_code, elapsed, server.log_path.read_text(errors="replace"), seen, any(bound))


def test_broken_artifacts_exit_2_with_one_line(tmp_path: Path, drill_record: Callable[..., None]) -> None:
    outcomes: dict[str, Outcome] = {}
    for case, spec in CASES.items():
        directory = _broken_copy(tmp_path, case)
        outcomes[case] = _run_broken(model_server(tmp_path, spec.runtime, model_dir=str(directory)))

    drill_record(
        "F13",
        "Broken or altered artifacts: exit 2 with one line, never serves",
        cases=len(outcomes),
        exit_codes=", ".join(sorted({str(o.exit_code) for o in outcomes.values()})),
        worst_exit_s=round(max(o.exit_s for o in outcomes.values()), 2),
        error_lines=", ".join(sorted({str(len(o.error_lines)) for o in outcomes.values()})),
        tracebacks=sum("Traceback" in o.log for o in outcomes.values()),
        readyz_answers=", ".join(sorted({str(s) for o in outcomes.values() for s in o.readyz})),
        ever_ready=sum(o.ready_seen for o in outcomes.values()),
        zmq_bound=sum(o.zmq_bound for o in outcomes.values()),
    )
    for case, outcome in outcomes.items():
        name, says = CASES[case].names, CASES[case].says
        assert outcome.exit_code == 2, f"{case}: exit {outcome.exit_code}\n{outcome.log}"
        assert "Traceback" not in outcome.log, f"{case}:\n{outcome.log}"
        assert len(outcome.error_lines) == 1, f"{case}:\n{outcome.log}"
        line = outcome.error_lines[0]
        assert "model artifacts: " in line and name in line and says in line, f"{case}: {line}"
        assert not outcome.ready_seen and not outcome.zmq_bound, f"{case}: it served\n{outcome.log}"
        assert outcome.exit_s < 30, f"{case}: took {outcome.exit_s:.1f} s to exit"


def _predict(web: Proc, jpeg: bytes) -> tuple[int, str | None, float]:
    """POST a photo to the API: (status, Retry-After, seconds)."""
    started = time.monotonic()
    resp = requests.post(
        f"http://127.0.0.1:{web.ports['http']}/api/v1/predict",
        data=jpeg,
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
    )
    return resp.status_code, resp.headers.get("Retry-After"), time.monotonic() - started


def test_the_web_tier_answers_503_while_no_model_serves(
    tmp_path: Path, cat_jpeg, drill_record: Callable[..., None]
) -> None:
    directory = _broken_copy(tmp_path, "labels.json rotated by one")
    server = model_server(tmp_path, model_dir=str(directory))
    web = web_server(tmp_path, server.ports["zmq"])
    answers: list[tuple[int, str | None, float]] = []

    def while_loading() -> None:  # once, while the model server is up but not serving
        if len(answers) == 1:
            answers.append(_predict(web, cat_jpeg.data))

    try:
        web.start()
        answers.append(_predict(web, cat_jpeg.data))  # before the model server starts
        outcome = _run_broken(server, also=while_loading)
        answers.append(_predict(web, cat_jpeg.data))  # after it exited
        web_ready = http_status(f"http://127.0.0.1:{web.ports['http']}/readyz", timeout=10)
    finally:
        web.stop()
        server.stop()

    drill_record(
        "F13",
        "Web tier while the model server refuses broken artifacts",
        model_exit_code=outcome.exit_code,
        predict_statuses=", ".join(sorted({str(status) for status, _, _ in answers})),
        predicts=len(answers),
        retry_after=", ".join(sorted({str(retry) for _, retry, _ in answers})),
        worst_503_s=round(max(s for _, _, s in answers), 2),
        web_readyz=web_ready,
    )
    assert outcome.exit_code == 2 and len(outcome.error_lines) == 1, outcome.log
    assert len(answers) == 3  # before, while it loaded, after it exited
    for status, retry_after, _ in answers:
        assert status == 503 and retry_after is not None and int(retry_after) > 0, answers
    assert web_ready == 503
