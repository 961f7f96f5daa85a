"""How results are shown: a line per photo for people, the API's JSON, and JSONL or CSV records."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, TextIO

from services.cli.api import Answer
from services.cli.outcomes import Outcome, UsageError

FORMATS = ("jsonl", "csv")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# One record per photo, in this column order in CSV.
FIELDS = ("path", "status", "http_status", "label", "probability", "predictions", "error", "request_id")


def format_for(output: str | None, chosen: str | None) -> str | None:
    """The record format: the one chosen, else the one --output's suffix names; None without either.

    :raise UsageError: when --output's suffix names no format and none was chosen.
    """
    if chosen is not None or output is None:
        return chosen
    fmt = SUFFIX_FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the format of {output}: name it .jsonl or .csv, or add --format")
    return fmt


def _percent(probability: float) -> str:
    return f"{probability * 100:.1f} %"


def human_line(path: Path, answer: Answer) -> str:
    """`cat.jpg  tabby 71.2 %, tiger cat 12.0 %` for a photo classified, else what went wrong."""
    if answer.outcome is Outcome.OK:
        predictions = (answer.body or {})["predictions"]
        return f"{path}  " + ", ".join(f"{p['label']} {_percent(p['probability'])}" for p in predictions)
    code = f"{answer.http_status} {answer.error_status}: " if answer.http_status else ""
    return f"{path}  {answer.outcome.label}: {code}{answer.message}"


def api_json(path: Path, answer: Answer) -> str:
    """The API's JSON answer for a photo with its `path` added; an `error` object when none came back."""
    body = answer.body
    if body is None:
        error = {"code": answer.http_status, "status": answer.error_status, "message": answer.message}
        body = {"error": error}
    return json.dumps({"path": str(path), **body}, ensure_ascii=False)


def record(path: Path, answer: Answer) -> dict[str, Any]:
    """A photo's output record: path, status, top label and probability, predictions or error, request id."""
    ok = answer.outcome is Outcome.OK
    predictions = (answer.body or {}).get("predictions") if ok else None
    top = predictions[0] if predictions else {}
    return {
        "path": str(path),
        "status": answer.outcome.label,
        "http_status": answer.http_status,
        "label": top.get("label"),
        "probability": top.get("probability"),
        "predictions": predictions,
        "error": None if ok else answer.message,
        "request_id": answer.request_id,
    }


class RecordWriter:
    """Writes records to a text stream as JSON lines or CSV rows, one per photo as it is done."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        self.stream = stream
        self.rows = csv.DictWriter(stream, FIELDS, lineterminator="\n") if fmt == "csv" else None
        if self.rows is not None:
            self.rows.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        """Write one record and flush it, so an interrupted run keeps what it finished."""
        if self.rows is None:
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:  # a CSV cell holds the predictions as JSON: parseable, and one column whatever top_k is
            predictions = row["predictions"]
            self.rows.writerow({**row, "predictions": "" if predictions is None else json.dumps(predictions)})
        self.stream.flush()
