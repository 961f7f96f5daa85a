"""The naive design zerolens started from, re-implemented faithfully as a benchmark baseline (never served).

docs/architecture.md ("Where it started") names the project it comes from.

Web: a Flask view saves every upload to disk, base64-encodes it into JSON, and opens a NEW ZeroMQ context
and REQ socket per request, then waits for the answer without a timeout. Model server: ROUTER/DEALER proxy,
one dispatcher that starts a thread per request, and each thread calls Keras `model.predict` on one image.
Run the server with `python -m bench.baselines.seed server PORT MODEL_DIR` and the web tier with gunicorn
`bench.baselines.seed:create_app()` (env SEED_MODEL_PORT).
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import sys
import tempfile
import threading

import zmq

BACKEND = "inproc://seed-backend"


def create_app():
    """The seed's Flask app."""
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    upload_dir = tempfile.mkdtemp(prefix="seed-uploads-")
    port = int(os.environ["SEED_MODEL_PORT"])

    @app.post("/api/v1/predict")
    def predict():
        upload = request.files["image"]
        path = os.path.join(upload_dir, f"{threading.get_ident()}-{upload.filename}")
        upload.save(path)  # the seed kept every upload on disk
        with open(path, "rb") as fh:
            payload = json.dumps({"image": base64.b64encode(fh.read()).decode()})
        context = zmq.Context()  # a new context and socket per request
        socket = context.socket(zmq.REQ)
        socket.connect(f"tcp://127.0.0.1:{port}")
        socket.send_string(payload)
        reply = json.loads(socket.recv_string())  # no timeout: waits forever if the server is gone
        socket.close()
        context.term()
        return jsonify(reply)

    @app.get("/healthz")
    def healthz():
        return "ok"

    return app


def serve(port: int, model_dir: str) -> None:
    """The seed's model server: proxy, dispatcher, a thread per request, model.predict each time."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from PIL import Image

    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
    with open(os.path.join(model_dir, "labels.json")) as fh:
        labels = json.load(fh)
    context = zmq.Context()
    frontend = context.socket(zmq.ROUTER)
    frontend.bind(f"tcp://127.0.0.1:{port}")
    backend = context.socket(zmq.DEALER)
    backend.bind(BACKEND)
    threading.Thread(target=zmq.proxy, args=(frontend, backend), daemon=True).start()
    replies: queue.Queue = queue.Queue()

    def handle(envelope: list[bytes], message: bytes) -> None:
        data = base64.b64decode(json.loads(message)["image"])
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
        probs = model.predict(np.asarray(img, dtype=np.float32)[None], verbose=0)[0]
        top = np.argsort(probs)[::-1][:5]
        body = {"predictions": [{"label": labels[i], "probability": float(probs[i])} for i in top]}
        replies.put([*envelope, json.dumps(body).encode()])

    worker = context.socket(zmq.DEALER)
    worker.connect(BACKEND)
    print("seed model server ready", flush=True)
    while True:
        if worker.poll(1):  # the dispatcher polls forever
            frames = worker.recv_multipart()
            threading.Thread(target=handle, args=(frames[:-1], frames[-1]), daemon=True).start()
        while not replies.empty():
            worker.send_multipart(replies.get())


if __name__ == "__main__" and sys.argv[1:2] == ["server"]:
    serve(int(sys.argv[2]), sys.argv[3])
