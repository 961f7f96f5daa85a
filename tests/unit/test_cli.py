"""The `zerolens` command-line client: arguments, output formats, exit statuses and retries against the web
app with a fake model served on a free port, and the installed console script against the real stack."""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from services import cli
from services.cli import api as cli_api
from services.cli import photos as cli_photos
from services.cli.outcomes import Outcome, exit_status
from services.protocol import Status
from services.web.model_client import ModelUnavailable
from tests.conftest import FakeModelClient, Upload
from tests.support.environ import clean_environ
from tests.support.servers import ROOT, free_port

ZEROLENS = Path(sys.executable).parent / "zerolens"  # the console script pip installed next to python
CATS = {"tabby", "tiger cat", "Egyptian cat"}
RETRY_AFTER_S = 3  # what the served app asks for on a 503


def zerolens(*argv: str) -> int:
    """Run the command in this process and return its exit status, argparse's own exits included."""
    try:
        return cli.main(list(argv))
    except SystemExit as exc:  # --help, --version and argparse's usage errors
        return int(exc.code or 0)


@contextlib.contextmanager
def serving(app: Callable[..., Any]) -> Iterator[str]:
    """Serve a WSGI app from a thread on a free loopback port; yields its base URL, stops it on exit."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def url(make_app: Callable[..., Any]) -> Iterator[str]:
    """The web app (fake model client) over real HTTP; a 503 from it says Retry-After: RETRY_AFTER_S."""
    with serving(make_app(retry_after_s=RETRY_AFTER_S)) as base:
        yield base


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the client would have slept before its retries, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(cli_api, "pause", waited.append)
    return waited


@pytest.fixture
def album(tmp_path: Path, photos: dict[str, Upload], bad_uploads: dict[str, Upload]) -> Path:
    """A directory of two photos, a text file named .jpg (415), an empty .png (400) and files to skip."""
    root = tmp_path / "album"
    (root / "trip" / ".thumbnails").mkdir(parents=True)
    (root / "chelsea.jpg").write_bytes(photos["chelsea.jpg"].data)
    (root / "trip" / "coffee.JPG").write_bytes(photos["coffee.jpg"].data)
    (root / "trip" / "notes.jpg").write_bytes(bad_uploads["text"].data)
    (root / "trip" / "zero.png").write_bytes(b"")
    (root / "README.txt").write_text("not a photo\n")
    (root / "._chelsea.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata next to a photo
    (root / "trip" / ".thumbnails" / "coffee.jpg").write_bytes(photos["coffee.jpg"].data)
    return root


@pytest.fixture
def cat(tmp_path: Path, photos: dict[str, Upload]) -> Path:
    """The chelsea photo as a file."""
    path = tmp_path / "cat.jpg"
    path.write_bytes(photos["chelsea.jpg"].data)
    return path


def _busy_once(fake_model: FakeModelClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the fake model answer OVERLOADED to the first photo and classify from then on."""
    classify = fake_model.classify

    def busy_then_ok(*args: Any, **kwargs: Any) -> Any:
        reply = classify(*args, **kwargs)
        fake_model.status = Status.OK
        return reply

    fake_model.status = Status.OVERLOADED
    monkeypatch.setattr(fake_model, "classify", busy_then_ok)


# ---- arguments and photos ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["predict"],
        ["predict", "{cat}", "--top-k", "0"],
        ["predict", "{cat}", "--top-k", "101"],
        ["predict", "{cat}", "--top-k", "five"],
        ["predict", "{cat}", "--concurrency", "0"],
        ["predict", "{cat}", "--timeout", "0"],
        ["predict", "{cat}", "--retries", "-1"],
        ["predict", "{cat}", "--url", "ftp://example.com"],
        ["predict", "{cat}", "--format", "xml"],
        ["predict", "{cat}", "--output", "{tmp}/out.txt"],
        ["predict", "{cat}", "--output", "{tmp}/no/such/dir/out.jsonl"],
        ["predict", "{cat}", "--json", "--format", "csv"],
        ["predict", "{tmp}/missing.jpg"],
        ["predict", "{tmp}/empty-dir"],
        ["predict", "{tmp}/*.gif"],
        ["health", "--url", "localhost:8000"],
    ],
)
def test_usage_errors_exit_2_before_any_request(
    argv: list[str], cat: Path, tmp_path: Path, url: str, fake_model: FakeModelClient
) -> None:
    (tmp_path / "empty-dir").mkdir()
    argv = [a.format(cat=cat, tmp=tmp_path) for a in argv]
    assert zerolens(*argv, *(["--url", url] if argv[:1] == ["predict"] else [])) == 2
    assert fake_model.calls == []


def test_help_documents_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert zerolens("--help") == 0
    epilog = capsys.readouterr().out.split("exit status:")[1]
    documented = {int(line.split()[0]) for line in epilog.splitlines() if line.strip()[:1].isdigit()}
    assert documented == {0, 2, *(o.value for o in Outcome)}


def test_directories_are_searched_for_photos_and_globs_expanded(album: Path) -> None:
    found, searched = cli_photos.expand([str(album), str(album / "chelsea.jpg")])
    names = [p.relative_to(album).as_posix() for p in found]
    assert names == ["chelsea.jpg", "trip/coffee.JPG", "trip/notes.jpg", "trip/zero.png"]
    assert searched  # a photo named twice is sent once; README and dot-files are skipped

    found, searched = cli_photos.expand([str(album / "trip" / "*.jpg")])
    assert [p.name for p in found] == ["notes.jpg"] and searched  # glob matching is case-sensitive
    assert cli_photos.expand([str(album / "README.txt")]) == ([album / "README.txt"], False)


def test_exit_status_is_the_highest_outcome() -> None:
    assert exit_status([]) == 0
    assert exit_status([Outcome.OK, Outcome.REJECTED, Outcome.UNAVAILABLE]) == 4
    assert exit_status([Outcome.SERVER_ERROR, Outcome.UNREACHABLE]) == 6


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, 1.0), ("", 1.0), ("3", 3.0), ("0.5", 0.5), ("-5", 0.0), ("99999", 60.0), ("soon", 1.0)],
)
def test_retry_after_is_read_and_bounded(header: str | None, seconds: float) -> None:
    assert cli_api.retry_wait_s(header) == seconds


def test_retry_after_may_be_an_http_date() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert cli_api.retry_wait_s("Sat, 01 Mar 2025 12:00:10 GMT", now=now) == 10.0
    assert cli_api.retry_wait_s("Sat, 01 Mar 2025 11:00:00 GMT", now=now) == 0.0


# ---- output -------------------------------------------------------------------------------------------


def test_prints_the_top_labels_of_a_photo(
    cat: Path, url: str, fake_model: FakeModelClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert zerolens("predict", str(cat), "--top-k", "2", "--url", url) == 0
    out, err = capsys.readouterr()
    assert out == f"{cat}  tiger cat 60.0 %, Egyptian cat 30.0 %\n"
    assert err == ""  # one photo: no progress bar, no summary
    assert [call["top_k"] for call in fake_model.calls] == [2]


def test_json_prints_the_api_answer_with_the_path(
    cat: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert zerolens("predict", str(cat), "--json", "--url", url) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["path"] == str(cat)
    assert answer["model"] == "fake_net"
    assert [p["label"] for p in answer["predictions"]][:2] == ["tiger cat", "Egyptian cat"]


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {Path(row["path"]).name: row for row in rows}


def test_a_directory_to_jsonl_gives_a_record_per_photo(
    album: Path, tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    assert zerolens("predict", str(album), "--output", str(out), "--url", url) == 3  # two refused
    records = _by_name([json.loads(line) for line in out.read_text().splitlines()])
    assert list(records) == ["chelsea.jpg", "coffee.JPG", "notes.jpg", "zero.png"]
    cat = records["chelsea.jpg"]
    assert (cat["status"], cat["http_status"], cat["label"], cat["error"]) == ("ok", 200, "tiger cat", None)
    assert cat["probability"] == pytest.approx(0.6) and len(cat["predictions"]) == 5
    assert (records["notes.jpg"]["status"], records["notes.jpg"]["http_status"]) == ("rejected", 415)
    assert (records["zero.png"]["status"], records["zero.png"]["http_status"]) == ("rejected", 400)
    assert records["zero.png"]["error"] and records["zero.png"]["label"] is None
    assert all(r["request_id"] for r in records.values())
    printed, err = capsys.readouterr()
    assert len(printed.splitlines()) == 2  # the photos classified; the refusals on stderr
    assert "notes.jpg  rejected: 415 UNSUPPORTED_MEDIA_TYPE" in err
    assert err.rstrip().endswith("4 photos: 2 ok, 2 rejected")


def test_csv_records_parse_back(album: Path, tmp_path: Path, url: str) -> None:
    out = tmp_path / "results.csv"
    photos = [str(album / "chelsea.jpg"), str(album / "trip")]
    assert zerolens("predict", *photos, "--output", str(out), "--url", url) == 3
    with out.open(newline="") as stream:
        rows = _by_name(list(csv.DictReader(stream)))
    assert list(rows["chelsea.jpg"]) == list(cli.output.FIELDS)
    assert rows["chelsea.jpg"]["status"] == "ok" and rows["chelsea.jpg"]["label"] == "tiger cat"
    assert float(rows["chelsea.jpg"]["probability"]) == pytest.approx(0.6)
    assert json.loads(rows["chelsea.jpg"]["predictions"])[1]["label"] == "Egyptian cat"
    assert rows["notes.jpg"]["http_status"] == "415" and rows["notes.jpg"]["predictions"] == ""


def test_format_alone_prints_records_on_stdout(
    cat: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert zerolens("predict", str(cat), "--format", "jsonl", "--url", url) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["label"] == "tiger cat"


def test_a_progress_bar_only_on_a_terminal_or_when_asked(
    album: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = [str(album / "chelsea.jpg"), str(album / "trip" / "coffee.JPG")]
    assert zerolens("predict", *photos, "--url", url) == 0
    assert "2/2" not in capsys.readouterr().err  # stderr is not a terminal here
    assert zerolens("predict", *photos, "--progress", "--url", url) == 0
    assert "2/2" in capsys.readouterr().err


def test_the_url_comes_from_zerolens_url(
    cat: Path, url: str, monkeypatch: pytest.MonkeyPatch, fake_model: FakeModelClient
) -> None:
    monkeypatch.setenv("ZEROLENS_URL", url)
    assert zerolens("predict", str(cat)) == 0
    assert len(fake_model.calls) == 1


# ---- exit statuses and retries ------------------------------------------------------------------------


@pytest.mark.parametrize(("upload", "code"), [("empty", 400), ("text", 415), ("bomb_png", 400)])
def test_refused_photos_exit_3(
    upload: str,
    code: int,
    bad_uploads: dict[str, Upload],
    tmp_path: Path,
    url: str,
    waits: list[float],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / bad_uploads[upload].filename
    path.write_bytes(bad_uploads[upload].data)
    assert zerolens("predict", str(path), "--url", url) == 3
    assert f"{path}  rejected: {code} " in capsys.readouterr().err
    assert waits == []  # a refusal is final


def test_a_503_is_retried_after_its_retry_after(
    cat: Path, url: str, fake_model: FakeModelClient, monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    _busy_once(fake_model, monkeypatch)
    assert zerolens("predict", str(cat), "--url", url) == 0
    assert waits == [RETRY_AFTER_S]
    assert len(fake_model.calls) == 2


def test_still_busy_after_the_retries_exits_4(
    cat: Path,
    url: str,
    fake_model: FakeModelClient,
    waits: list[float],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_model.status = Status.OVERLOADED
    assert zerolens("predict", str(cat), "--retries", "2", "--url", url) == 4
    assert waits == [RETRY_AFTER_S, RETRY_AFTER_S]
    assert len(fake_model.calls) == 3
    assert "unavailable: 503 SERVICE_UNAVAILABLE" in capsys.readouterr().err


def test_a_504_exits_4_without_a_retry(
    cat: Path, url: str, fake_model: FakeModelClient, waits: list[float]
) -> None:
    fake_model.status = Status.DEADLINE_EXCEEDED
    assert zerolens("predict", str(cat), "--url", url) == 4
    assert waits == [] and len(fake_model.calls) == 1


def test_a_model_server_failure_exits_6(
    cat: Path, url: str, fake_model: FakeModelClient, tmp_path: Path
) -> None:
    fake_model.status = Status.INTERNAL
    out = tmp_path / "results.jsonl"
    assert zerolens("predict", str(cat), "--output", str(out), "--url", url) == 6
    record = json.loads(out.read_text())
    assert (record["status"], record["http_status"]) == ("server_error", 502)


def test_connection_refused_exits_5(cat: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    assert zerolens("predict", str(cat), "--url", nobody) == 5
    assert f"cannot connect to {nobody}" in capsys.readouterr().err


def test_no_answer_within_the_timeout_exits_4(cat: Path) -> None:
    with socket.create_server(("127.0.0.1", free_port())) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        assert zerolens("predict", str(cat), "--timeout", "0.2", "--url", f"http://127.0.0.1:{port}") == 4


def _not_zerolens(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/html")])
    return [b"<html><body>some other service</body></html>"]


def test_an_answer_that_is_not_the_api_exits_6(cat: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serving(_not_zerolens) as other:
        assert zerolens("predict", str(cat), "--url", other) == 6
        assert zerolens("health", "--url", other) == 6
    assert "not JSON" in capsys.readouterr().err


# ---- health -------------------------------------------------------------------------------------------


def test_health_ready_exits_0(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert zerolens("health", "--url", url) == 0
    assert capsys.readouterr().out == "ready: model fake_net\n"


def test_health_not_ready_exits_4(
    url: str, fake_model: FakeModelClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_model.raises = ModelUnavailable("no model server answered")
    assert zerolens("health", "--url", url) == 4
    assert capsys.readouterr().out == "not ready: no model server answered\n"


def test_health_unreachable_exits_5(capsys: pytest.CaptureFixture[str]) -> None:
    assert zerolens("health", "--url", f"http://127.0.0.1:{free_port()}") == 5
    assert capsys.readouterr().out.startswith("not ready: cannot connect to")


# ---- packaging ----------------------------------------------------------------------------------------

IMPORT_PROBE = textwrap.dedent(
    """
    import json, sys
    import services.cli, services.cli.predict, services.cli.health
    forbidden = ("flask", "werkzeug", "zmq", "numpy", "tensorflow", "PIL", "services.web", "services.model")
    loaded = [m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden)]
    print(json.dumps(sorted(loaded)))
    """
)


def test_the_client_loads_neither_tier() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, env=clean_environ(), capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == []
