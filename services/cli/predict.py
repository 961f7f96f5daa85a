"""`zerolens predict`: classify photos a few at a time, show each result, and write records on request."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from services.cli import output, photos
from services.cli.api import Answer, Api
from services.cli.outcomes import Outcome, UsageError, exit_status


def _is_prediction(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("label"), str)
        and isinstance(item.get("probability"), int | float)
    )


def checked(answer: Answer) -> Answer:
    """The answer, or a server error when a success does not carry the API's list of predictions."""
    if answer.outcome is not Outcome.OK:
        return answer
    predictions = (answer.body or {}).get("predictions")
    if isinstance(predictions, list) and all(_is_prediction(p) for p in predictions):
        return answer
    message = "the answer has no list of predictions: is --url a zerolens web tier?"
    return Answer(Outcome.SERVER_ERROR, answer.http_status, answer.body, message, answer.request_id)


def classify_photo(api: Api, path: Path, top_k: int) -> Answer:
    """Read one photo and classify it (a photo that cannot be read is REJECTED without a request)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Answer(Outcome.REJECTED, message=f"cannot read the file: {exc.strerror or exc}")
    return checked(api.classify(data, path.name, photos.content_type(path), top_k))


def classify_all(
    api: Api, paths: Sequence[Path], top_k: int, concurrency: int, done: Callable[[], None]
) -> Iterator[tuple[Path, Answer]]:
    """(path, answer) in the order of `paths`, `concurrency` requests in flight; `done` runs as each ends."""
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="zerolens-predict")
    try:
        futures = [pool.submit(classify_photo, api, path, top_k) for path in paths]
        for future in futures:
            future.add_done_callback(lambda _: done())
        for path, future in zip(paths, futures, strict=True):
            yield path, future.result()
    finally:  # after Ctrl-C: send nothing more, and let the requests in flight end with their timeout
        pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def progress(total: int, show: bool) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (or nothing when not shown); yields the function that advances it."""
    bar = tqdm(total=total, unit="photo", file=sys.stderr, disable=not show, dynamic_ncols=True)
    lock = threading.Lock()  # advanced from the pool's threads: tqdm's counter is not atomic

    def advance() -> None:
        with lock:
            bar.update()

    try:
        yield advance
    finally:
        bar.close()


def _records(stack: contextlib.ExitStack, path: str | None, fmt: str | None) -> output.RecordWriter | None:
    """The record writer: to --output, to stdout with --format alone, or none."""
    if fmt is None:
        return None
    if path is None:
        return output.RecordWriter(sys.stdout, fmt)
    try:  # opened before the first request: a path that cannot be written fails before any work
        stream = stack.enter_context(open(path, "w", encoding="utf-8", newline=""))  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return output.RecordWriter(stream, fmt)


def _show(path: Path, answer: Answer, as_json: bool, stdout_taken: bool) -> None:
    """Print a photo's result: JSON or a line on stdout (unless records go there), a failure's on stderr."""
    if as_json:
        line, stream = output.api_json(path, answer), sys.stdout
    else:
        line = output.human_line(path, answer)
        stream = sys.stdout if answer.outcome is Outcome.OK else sys.stderr
    if not (stdout_taken and stream is sys.stdout):
        # through tqdm, which clears the bar first, so that a line and the bar never overwrite each other
        tqdm.write(line, file=stream)


def summary(outcomes: Counter[Outcome]) -> str:
    """`3 photos: 2 ok, 1 rejected`."""
    total = sum(outcomes.values())
    counts = ", ".join(f"{count} {outcome.label}" for outcome, count in sorted(outcomes.items()))
    return f"{total} photo{'s' if total != 1 else ''}: {counts}"


def run(args: argparse.Namespace) -> int:
    """Classify the photos named on the command line; the exit status says how the worst one ended."""
    fmt = output.format_for(args.output, args.format)
    if fmt is not None and args.output is None and args.json:
        raise UsageError("--json and --format both print to stdout: write the records with --output FILE")
    paths, searched = photos.expand(args.photos)
    several = len(paths) > 1 or searched
    show_bar = args.progress if args.progress is not None else several and sys.stderr.isatty()
    outcomes: Counter[Outcome] = Counter()
    with contextlib.ExitStack() as stack:
        records = _records(stack, args.output, fmt)
        api = stack.enter_context(Api(args.url, args.timeout, args.retries, args.concurrency))
        advance = stack.enter_context(progress(len(paths), show_bar))
        for path, answer in classify_all(api, paths, args.top_k, args.concurrency, advance):
            outcomes[answer.outcome] += 1
            if records is not None:
                records.write(output.record(path, answer))
            _show(path, answer, args.json, stdout_taken=fmt is not None and args.output is None)
    if several:
        print(summary(outcomes), file=sys.stderr)
    return exit_status(outcomes)
