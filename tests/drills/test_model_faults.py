"""F1, F2, F6: a model server killed, stopped with a deep queue, or started after the web tier, under load."""

from __future__ import annotations

import re
import signal
import threading
import time

import pytest
import requests

from tests.drills.load import FAST_REFUSAL_S, HUNG_S, Load, percentile
from tests.support.servers import Proc, free_port, model_server, web_server

pytestmark = pytest.mark.integration

ANSWERS = {"200", "503", "504"}  # what a client may see while the model tier fails: never 500, never a reset


def model_metric(model: Proc, sample: str) -> float:
    """A sample from the model server's /metrics (0 when the series does not exist yet)."""
    text = requests.get(f"http://127.0.0.1:{model.ports['health']}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_f1_kill_9_under_load_loses_nothing(tmp_path, photos, spawn, drill_record):
    outage_s = 3.0
    model = spawn(model_server(tmp_path))
    port = model.ports["zmq"]
    web = spawn(web_server(tmp_path, port))
    with Load(web.ports["http"], photos["coffee.jpg"].data, clients=16) as load:
        killed_at = time.monotonic()
        model.proc.kill()
        model.proc.wait()
        threading.Event().wait(outage_s)  # the length of the outage, part of the scenario
        restarted = spawn(model_server(tmp_path, port=port))
        ready_at = time.monotonic()
        first_ok = load.wait_for("200", after=ready_at, timeout_s=10)
        # and a few more seconds of load on the restarted server
        load.wait_for("200", after=(first_ok.end if first_ok else ready_at) + 2, timeout_s=10)
    during = load.counts(killed_at)
    latencies = [o.latency_s for o in load.between(killed_at)]
    recovered_s = min((o.end for o in load.between(killed_at) if o.result == "200"), default=None)
    drill_record(
        "F1",
        f"kill -9 of the model server under c=16, restarted after {outage_s:g} s",
        requests=sum(during.values()),
        answered_200=during["200"],
        answered_503=during["503"],
        answered_504=during["504"],
        lost=sum(n for r, n in during.items() if r not in ANSWERS),
        first_200_after_ready_s=round(recovered_s - ready_at, 2) if recovered_s else "never",
        max_latency_s=round(max(latencies), 2),
        inferred_after_restart=model_metric(restarted, "zerolens_model_batch_size_sum"),
    )
    assert set(during) <= ANSWERS, during
    assert first_ok is not None, "no 200 after the restart"
    assert recovered_s - ready_at <= 2.0
    assert max(latencies) < HUNG_S


def test_f2_sigterm_with_a_deep_queue_answers_200_or_a_fast_503(tmp_path, photos, spawn, drill_record):
    model = spawn(model_server(tmp_path, max_batch_size=4))
    # 64 request threads in the web tier, so the model server holds a deep queue
    web = spawn(web_server(tmp_path, model.ports["zmq"], web_threads=32))
    with Load(web.ports["http"], photos["coffee.jpg"].data, clients=64) as load:
        load.wait_for("200", after=time.monotonic() + 1, timeout_s=30)  # a second of full load
        stopped_at = time.monotonic()
        model.proc.send_signal(signal.SIGTERM)
        exit_code = model.proc.wait(60)
        gone_at = time.monotonic()
        load.wait_for("503", after=gone_at + 1, timeout_s=10)  # and a second with no server at all
    in_flight = [o for o in load.outcomes if o.start < stopped_at < o.end]
    after = load.between(stopped_at)
    refused = [o.latency_s for o in after if o.result == "503"]
    drill_record(
        "F2",
        "SIGTERM to the model server with a deep queue (c=64)",
        in_flight_at_sigterm=len(in_flight),
        in_flight_answered_200=sum(o.result == "200" for o in in_flight),
        started_after=len(after),
        statuses_after=", ".join(f"{r}×{n}" for r, n in sorted(load.counts(stopped_at).items())),
        drain_s=round(gone_at - stopped_at, 2),
        refused_p99_ms=round(percentile(refused, 99) * 1000, 1),
        refused_max_ms=round(max(refused, default=0) * 1000, 1),
        exit_code=exit_code,
    )
    assert exit_code == 0
    assert {o.result for o in in_flight + after} <= {"200", "503"}, load.counts(stopped_at)
    assert percentile(refused, 99) <= FAST_REFUSAL_S


def test_f6_web_tier_first_model_later(tmp_path, photos, spawn, drill_record):
    wait_s = 10.0
    port = free_port()
    web = spawn(web_server(tmp_path, port))
    with Load(web.ports["http"], photos["coffee.jpg"].data, clients=4) as load:
        started = load.outcomes[0].start
        threading.Event().wait(wait_s)  # the model tier is missing for this long, part of the scenario
        launched_at = time.monotonic()
        model = spawn(model_server(tmp_path, port=port))
        ready_at = time.monotonic()
        first_ok = load.wait_for("200", after=launched_at, timeout_s=10)
        load.wait_for("200", after=ready_at + 1, timeout_s=10)
    before = load.between(started, launched_at)
    latencies = [o.latency_s for o in before]
    ok_web = sum(o.result == "200" for o in load.outcomes)
    ok_model = model_metric(model, "zerolens_model_batch_size_sum")  # images inferred
    drill_record(
        "F6",
        f"web tier started {wait_s:g} s before the model server (c=4)",
        requests_without_model=len(before),
        statuses_without_model=", ".join(
            f"{r}×{n}" for r, n in sorted(load.counts(started, launched_at).items())
        ),
        refused_p99_ms=round(percentile(latencies, 99) * 1000, 1),
        refused_max_ms=round(max(latencies) * 1000, 1),
        model_start_s=round(ready_at - launched_at, 2),
        first_200_after_ready_s=round(first_ok.end - ready_at, 2) if first_ok else "never",
        answered_200=ok_web,
        inferred_by_model=ok_model,
    )
    assert {o.result for o in before} == {"503"}
    assert max(latencies) <= FAST_REFUSAL_S
    assert first_ok is not None and first_ok.end - ready_at <= 1.0
    assert ok_model == ok_web  # nothing queued during the outage was run later (stale)
