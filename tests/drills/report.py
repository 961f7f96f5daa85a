"""Drill results: each drill saves one JSON row under build/drills/; `python -m tests.drills.report` writes
docs/reliability.md from them (`make drills` runs the drills, then this)."""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "build" / "drills"
DOC = ROOT / "docs" / "reliability.md"


@dataclass
class Row:
    drill: str  # F1, B2, S1 …
    title: str
    test: str  # pytest node id
    figures: dict[str, float | int | str]


def save(row: Row, passed: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{row.drill}-{row.test}")[:150]
    data = {**asdict(row), "passed": passed, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))


def _order(drill: str) -> tuple[str, int]:
    match = re.fullmatch(r"([A-Z]+)(\d+)", drill)
    return (match.group(1), int(match.group(2))) if match else (drill, 0)


def _figure(value: float | int | str) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda r: (_order(r["drill"]), r["test"]))
    lines = [
        "# Reliability drills",
        "",
        "Each row is one drill of `tests/drills/`, run by `make test` (CI) and by `make drills`, which",
        "writes this file from the figures the drills measured. Real processes on loopback or in network",
        "namespaces (gunicorn, the model server, ZeroMQ over TCP); every bound is asserted by the test.",
        "",
        "| drill | what | result | measured |",
        "|---|---|---|---|",
    ]
    for r in rows:
        figures = "; ".join(f"{k.replace('_', ' ')}: {_figure(v)}" for k, v in r["figures"].items())
        lines.append(f"| {r['drill']} | {r['title']} | {'pass' if r['passed'] else 'FAIL'} | {figures} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))] if RESULTS.exists() else []
    if not rows:
        print(f"no drill results under {RESULTS}: run `make drills`", file=sys.stderr)
        return 1
    DOC.write_text(render(rows))
    print(f"wrote {DOC} ({len(rows)} drills)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
