"""The web tier stays small: creating the app imports no model runtime and opens no ZeroMQ object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = (
    "numpy",
    "tensorflow",
    "keras",
    "ai_edge_litert",
    "tflite_runtime",
    "torch",
    "jax",
    "services.model",
)

PROBE = textwrap.dedent(
    """
    import json, sys
    import services.web
    from services.web import model_client
    app = services.web.create_app()
    with app.test_client() as client:
        status = client.get("/").status_code
    forbidden = json.loads(sys.argv[1])
    loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
    print(json.dumps({"loaded": loaded, "context": model_client._context is not None, "page": status}))
    """
)


def test_web_app_imports_no_model_runtime_and_creates_no_zmq_context() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZEROLENS_", "PROMETHEUS_"))}
    env["ZEROLENS_MODEL_SERVER"] = "tcp://127.0.0.1:9"  # points nowhere; nothing may connect at start
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(FORBIDDEN)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"loaded": [], "context": False, "page": 200}
