"""The HTTP side of the command-line client: one exchange per call, 503s retried after their Retry-After."""

from __future__ import annotations

import email.utils
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx

from services.cli.outcomes import Outcome

PREDICT_PATH = "/api/v1/predict"
FIELD = "image"  # the API's multipart field
RETRY_STATUSES = (429, 503)  # "try again later"; a 504 already spent a whole deadline, so it is not retried
DEFAULT_RETRY_WAIT_S = 1.0  # when a 503 names no Retry-After
MAX_RETRY_WAIT_S = 60.0  # a server asking for longer is not coming back soon: give up instead of hanging
UNAVAILABLE_STATUSES = (429, 503, 504)


def pause(seconds: float) -> None:
    """Wait before a retry (a module function so that tests can record the waits instead)."""
    time.sleep(seconds)


def retry_wait_s(value: str | None, now: datetime | None = None) -> float:
    """Seconds to wait from a Retry-After value (seconds or an HTTP date), within 0..MAX_RETRY_WAIT_S."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_WAIT_S
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_WAIT_S
        if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete form may omit the zone
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return DEFAULT_RETRY_WAIT_S
    return min(max(seconds, 0.0), MAX_RETRY_WAIT_S)


def outcome_for_status(code: int) -> Outcome:
    """The outcome an HTTP status code stands for."""
    if 200 <= code < 300:
        return Outcome.OK
    if code in UNAVAILABLE_STATUSES:
        return Outcome.UNAVAILABLE
    if 400 <= code < 500:
        return Outcome.REJECTED
    return Outcome.SERVER_ERROR  # 5xx, and 1xx/3xx, which the API never answers


@dataclass(frozen=True)
class Answer:
    """How one exchange ended: its outcome, the HTTP status and JSON body when there was an answer."""

    outcome: Outcome
    http_status: int | None = None
    body: dict[str, Any] | None = None
    message: str = ""  # why it failed, for people; empty on success
    request_id: str | None = None

    @property
    def error_status(self) -> str:
        """The API's error status name ("UNSUPPORTED_MEDIA_TYPE"), or the outcome's when it gave none."""
        error = (self.body or {}).get("error")
        if isinstance(error, dict) and isinstance(error.get("status"), str):
            return error["status"]
        return self.outcome.name


def _json_body(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def answer_from_response(response: httpx.Response, sent_id: str) -> Answer:
    """The Answer for an HTTP response; a 2xx whose body is not a JSON object is a server error."""
    body = _json_body(response)
    request_id = response.headers.get("X-Request-ID") or sent_id
    outcome = outcome_for_status(response.status_code)
    if outcome is Outcome.OK:
        if body is None:
            return Answer(
                Outcome.SERVER_ERROR, response.status_code, None, "the answer is not JSON", request_id
            )
        return Answer(Outcome.OK, response.status_code, body, "", request_id)
    error = (body or {}).get("error")
    if isinstance(error, dict) and error.get("message"):
        message = str(error["message"])
    else:  # not the API (a proxy's page, another service): its first words say more than the code alone
        message = f"{response.reason_phrase}: {response.text[:200].strip()}".rstrip(": ")
    return Answer(outcome, response.status_code, body, message, request_id)


def answer_from_error(exc: httpx.TransportError, url: str, sent_id: str) -> Answer:
    """The Answer when no HTTP response came back."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Answer(Outcome.UNREACHABLE, message=f"cannot connect to {url}: {exc}", request_id=sent_id)
    if isinstance(exc, httpx.TimeoutException):
        return Answer(Outcome.UNAVAILABLE, message=f"no answer in time ({exc})", request_id=sent_id)
    return Answer(Outcome.SERVER_ERROR, message=f"connection broken: {exc!r}", request_id=sent_id)


class Api:
    """A zerolens web tier at `url`: pooled connections shared by threads (httpx.Client is thread-safe)."""

    def __init__(self, url: str, timeout_s: float, retries: int = 0, connections: int = 1) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.Client(base_url=self.url, timeout=timeout_s, limits=limits)

    def __enter__(self) -> Api:
        """The Api itself; its connections are closed when the block ends."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the connection pool."""
        self.client.close()

    def classify(self, data: bytes, filename: str, content_type: str, top_k: int) -> Answer:
        """POST one photo to the predict API, retrying 503s up to `retries` times."""
        files = {FIELD: (filename, data, content_type)}
        return self._exchange("POST", PREDICT_PATH, self.retries, files=files, params={"top_k": top_k})

    def get(self, path: str) -> Answer:
        """GET a path once (health probes: a 503 there is the answer, not something to wait out)."""
        return self._exchange("GET", path, 0)

    def _exchange(self, method: str, path: str, retries: int, **kwargs: Any) -> Answer:
        attempt = 0
        while True:
            # a fresh id per attempt: each is its own request in the service's logs and metrics
            sent_id = uuid.uuid4().hex
            try:
                response = self.client.request(method, path, headers={"X-Request-ID": sent_id}, **kwargs)
            except httpx.TransportError as exc:
                return answer_from_error(exc, self.url, sent_id)
            if response.status_code not in RETRY_STATUSES or attempt >= retries:
                return answer_from_response(response, sent_id)
            attempt += 1
            pause(retry_wait_s(response.headers.get("Retry-After")))
