"""`zerolens health`: whether the service answers and can classify now, in one line and an exit status."""

from __future__ import annotations

import argparse

from services.cli.api import Answer, Api
from services.cli.outcomes import Outcome

LIVE_PATH = "/healthz"
READY_PATH = "/readyz"


def _failure(path: str, answer: Answer) -> tuple[str, Outcome]:
    """The verdict when a probe did not answer as a ready service does."""
    if answer.http_status is None:  # no answer at all: the message names the connection or the timeout
        return f"not ready: {answer.message}", answer.outcome
    reason = (answer.body or {}).get("reason")
    if answer.outcome is Outcome.UNAVAILABLE:
        return f"not ready: {reason or answer.message}", Outcome.UNAVAILABLE
    # a 4xx on a health path is no refusal of ours: --url points at something that is not zerolens
    return f"not ready: {path} answered {answer.http_status}: {answer.message}", Outcome.SERVER_ERROR


def verdict(live: Answer, ready: Answer | None) -> tuple[str, Outcome]:
    """The line to print and the outcome, from the liveness answer and the readiness one (None: not asked)."""
    if live.outcome is not Outcome.OK or ready is None:
        return _failure(LIVE_PATH, live)
    if ready.outcome is not Outcome.OK:
        return _failure(READY_PATH, ready)
    body = ready.body or {}
    if body.get("status") != "ready":
        return f"not ready: {READY_PATH} answered {body!r:.200}", Outcome.SERVER_ERROR
    return f"ready: model {body.get('model', 'unknown')}", Outcome.OK


def run(args: argparse.Namespace) -> int:
    """Probe /healthz, then /readyz, print the verdict; exit 0 when ready."""
    with Api(args.url, args.timeout) as api:
        live = api.get(LIVE_PATH)
        ready = api.get(READY_PATH) if live.outcome is Outcome.OK else None
    line, outcome = verdict(live, ready)
    print(line)
    return outcome.value
