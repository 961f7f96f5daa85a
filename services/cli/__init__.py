"""The `zerolens` command: classify photos and check health over the web tier's HTTP API."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from urllib.parse import urlsplit

from services.cli import health, output, predict
from services.cli.outcomes import EPILOG, INTERRUPTED, USAGE, UsageError
from services.protocol import MAX_TOP_K

URL_ENV = "ZEROLENS_URL"
DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT_S = 30.0  # the web tier answers or gives up (504) well within this
MAX_CONCURRENCY = 64  # more connections than a web tier has threads only queue up on its side


def _int_from(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, not {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, not {text!r}")
    return text


def _version() -> str:
    try:
        return metadata.version("zerolens")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _connection_options() -> argparse.ArgumentParser:
    """The options every command shares: where the service is and how long to wait for it."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        type=_url,
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        help=f"the web tier (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for each answer (default %(default)s)",
    )
    return common


def _add_predict(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sub = commands.add_parser(
        "predict",
        parents=[common],
        help="classify photos",
        description="Classify photos: files, directories (searched for photo suffixes) and globs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("photos", nargs="+", metavar="PHOTO", help="a photo, a directory or a glob")
    sub.add_argument(
        "--top-k",
        type=_int_from(1, MAX_TOP_K),
        default=5,
        metavar="N",
        help=f"labels per photo, 1..{MAX_TOP_K} (default %(default)s)",
    )
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer per photo")
    sub.add_argument("--output", metavar="FILE", help="write a record per photo to FILE.jsonl or FILE.csv")
    sub.add_argument(
        "--format", choices=output.FORMATS, help="the records' format (alone: records to stdout)"
    )
    sub.add_argument(
        "--concurrency",
        type=_int_from(1, MAX_CONCURRENCY),
        default=4,
        metavar="N",
        help="requests in flight (default %(default)s)",
    )
    sub.add_argument(
        "--retries",
        type=_int_from(0, 10),
        default=2,
        metavar="N",
        help="retries of a 503, after its Retry-After (default %(default)s)",
    )
    sub.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="a progress bar on stderr (default: with several photos, when stderr is a terminal)",
    )
    sub.set_defaults(run=predict.run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `zerolens` and its commands."""
    parser = argparse.ArgumentParser(
        prog="zerolens",
        description="Classify photos with a zerolens service, or check that it is ready.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _connection_options()
    _add_predict(commands, common)
    sub = commands.add_parser(
        "health",
        parents=[common],
        help="check that the service is ready",
        description="Check /healthz and /readyz; print `ready: model NAME` or `not ready: REASON`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.set_defaults(run=health.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zerolens` with `argv` (default: the command line) and return its exit status."""
    args = build_parser().parse_args(argv)  # a bad argument exits with USAGE here, as argparse does
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"zerolens {args.command}: error: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return INTERRUPTED
