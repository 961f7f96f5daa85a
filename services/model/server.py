"""The model server's ZeroMQ shape: ROUTER frontend on tcp ↔ zmq.proxy ↔ DEALER backend on inproc ↔ workers.

This is zguide's asyncsrv pattern, which the naive design zerolens started from also used
(docs/architecture.md, "Where it started"), without that design's thread per request: a fixed set of workers
feeds one Pipeline (decoder pool + dynamic batcher). Shutdown follows pyzmq's device example: terminating the
context makes zmq.proxy raise ContextTerminated, and each thread closes the sockets it created.
"""

from __future__ import annotations

import logging
import threading

import zmq
from zmq.auth.thread import ThreadAuthenticator

from services import keys, protocol
from services.config import ModelConfig
from services.model.metrics import ServerMetrics
from services.model.pipeline import Pipeline
from services.model.runtime import Runtime
from services.model.worker import Worker

log = logging.getLogger(__name__)

BACKEND = "inproc://zerolens-backend"
# An inference call running longer than inference_timeout_s makes the server unready; this many times longer,
# it is taken as hung for good (a call into the runtime cannot be interrupted) and liveness fails: restart.
HUNG_AFTER_TIMEOUTS = 6
MESSAGE_MARGIN_BYTES = 64 * 1024  # header and envelope on top of the largest allowed image


def max_frame_bytes(cfg: ModelConfig) -> int:
    """ZMQ_MAXMSGSIZE: the largest frame, i.e. the image (a little over the limit still gets TOO_LARGE)."""
    return cfg.max_upload_bytes + MESSAGE_MARGIN_BYTES


def max_message_bytes(cfg: ModelConfig) -> int:
    """The largest whole request: one maximal frame plus the small ones around it; above it, dropped."""
    return max_frame_bytes(cfg) + MESSAGE_MARGIN_BYTES


class ModelServer:
    """Starts the proxy, the workers and the pipeline; `readiness` and `liveness` feed the health port."""

    def __init__(
        self,
        cfg: ModelConfig,
        runtime: Runtime,
        metrics: ServerMetrics,
        curve_keys: keys.ServerKeys | None = None,
    ) -> None:
        """`curve_keys`: the keys already read (python -m services.model reads them before loading the
        model, to fail fast); read from cfg at start when not given."""
        self.cfg = cfg
        self.metrics = metrics
        self.context = zmq.Context()
        self.pipeline = Pipeline(cfg, runtime, metrics)
        self.model_name = runtime.name  # as its replies name it
        self.workers: list[Worker] = []
        self.port = cfg.port
        self._bound = threading.Event()
        self._bind_error: Exception | None = None
        self._proxy = threading.Thread(target=self._run_proxy, name="proxy", daemon=True)
        self._started = False
        self._curve = curve_keys
        self._auth: ThreadAuthenticator | None = None

    def _run_proxy(self) -> None:
        # Sockets are created in the thread that uses them (zguide chapter 2).
        frontend = self.context.socket(zmq.ROUTER)
        backend = self.context.socket(zmq.DEALER)
        for sock in (frontend, backend):
            sock.linger = 0  # replies left at shutdown go to clients that will retry anyway
        # ZMTP pings to clients: a vanished web pod's queues are freed after ~3 intervals
        frontend.heartbeat_ivl = self.cfg.heartbeat_ivl_ms
        frontend.heartbeat_timeout = 3 * self.cfg.heartbeat_ivl_ms
        # A bigger frame is refused and its connection cut before it takes memory. This bounds frames, not
        # messages: libzmq buffers every frame of a multipart message before delivering it, however many
        # there are; the workers drop what is over max_message_bytes once it arrives (docs/protocol.md).
        frontend.maxmsgsize = max_frame_bytes(self.cfg)
        # Whole messages a peer may have waiting in the server before TCP pushes back on it: a peer that
        # floods is held at its own socket, and it may not have more admitted than this anyway. Replies
        # never block: a ROUTER drops those for a peer over its sndhwm (one that does not read).
        frontend.rcvhwm = self.cfg.max_in_flight_per_client
        frontend.ipv6 = ":" in self.cfg.host
        if self._curve is not None:
            keys.make_server(frontend, self._curve)  # before bind: the mechanism is fixed at bind
        try:
            backend.bind(BACKEND)  # bound before the workers connect
            frontend.bind(protocol.tcp_endpoint(self.cfg.host, self.cfg.port))
            if self.cfg.port == 0:  # tests ask for any free port
                self.port = int(frontend.last_endpoint.decode().rsplit(":", 1)[1])
        except zmq.ZMQError as exc:
            self._bind_error = exc
            frontend.close()
            backend.close()
            self._bound.set()
            return
        self._bound.set()
        try:
            zmq.proxy(frontend, backend)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:
            log.error("proxy stopped: %s", exc)
        finally:
            frontend.close()
            backend.close()

    def start(self) -> ModelServer:
        """Bind, then start the pipeline and the workers.

        :raise ConfigError: CurveZMQ keys missing or bad. :raise zmq.ZMQError: when the port is taken.
        """
        try:
            self._curve = self._curve or keys.server_keys(self.cfg)
        except Exception:
            self.context.term()
            raise
        if self._curve is not None:
            # Started before the frontend binds, and stopped only after the workers: while no ZAP handler
            # answers, libzmq admits every client that knows the server's public key (no allow-list).
            self._auth = ThreadAuthenticator(self.context)
            self._auth.start()
            self._auth.configure_curve_callback("*", keys.AllowList(self._curve.clients))
        self._proxy.start()
        self._bound.wait()
        if self._bind_error is not None:
            self._stop_authenticator()
            self.context.term()
            raise self._bind_error
        self.pipeline.start()
        for i in range(self.cfg.workers):
            worker = Worker(
                i, self.context, BACKEND, self.pipeline, self.metrics, max_message_bytes(self.cfg)
            )
            worker.start()
            self.workers.append(worker)
        self._started = True
        self.metrics.ready.set(1)
        log.info(
            "serving %s on %s (%d workers, %d decoders, batches up to %d within %.1f ms)",
            self.cfg.model_name,
            protocol.tcp_endpoint(self.cfg.host, self.port),
            self.cfg.workers,
            self.cfg.decode_threads,
            self.cfg.max_batch_size,
            self.cfg.max_batch_delay_ms,
        )
        return self

    def _stop_authenticator(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def liveness(self) -> tuple[bool, str]:
        """Dead only when something that cannot come back has stopped or hung: a restart is the fix."""
        if self._started and not (self._proxy.is_alive() and self.pipeline.batcher.is_alive()):
            return False, "proxy or batcher thread stopped"
        running_s = self.pipeline.batcher.longest_call_s()
        if running_s > HUNG_AFTER_TIMEOUTS * self.cfg.inference_timeout_s:
            return False, f"an inference call has hung for {running_s:.0f} s"
        return True, "alive"

    def readiness(self) -> tuple[bool, str]:
        """(True, the model's name) when it takes requests, else (False, why not)."""
        if not self._started:
            return False, "loading the model"
        if self.pipeline.draining:
            return False, "draining: finishing the requests in flight, taking no new ones"
        if not all(w.is_alive() for w in self.workers):
            return False, "a worker thread stopped"
        running_s = self.pipeline.batcher.longest_call_s()
        if running_s > self.cfg.inference_timeout_s:  # send traffic elsewhere while it may still return
            return False, f"an inference call has run for {running_s:.1f} s (inference_timeout_s)"
        alive, reason = self.liveness()
        return (True, self.model_name) if alive else (False, reason)

    def stop(self, drain_timeout_s: float) -> None:
        """Stop taking work, finish what is in flight (up to drain_timeout_s), then close everything."""
        self.metrics.ready.set(0)
        if self._started:
            finished = self.pipeline.drain(drain_timeout_s)
            log.info("drained: %s", "all requests answered" if finished else "timed out, dropping the rest")
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join(timeout=5)
        self.pipeline.close()
        # Before term(), which waits for the authenticator's sockets too. A peer admitted in the instant
        # between the two finds no worker behind the proxy: nothing reaches the pipeline.
        self._stop_authenticator()
        self.context.term()  # makes zmq.proxy raise ContextTerminated; returns once every socket is closed
        self._proxy.join(timeout=5)
