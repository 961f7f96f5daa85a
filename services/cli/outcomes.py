"""What became of a photo or a health probe, and the exit status each outcome leads to."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

USAGE = 2  # argparse's own status for bad arguments; also a missing photo or an unusable --output
INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT


class UsageError(Exception):
    """A command line that cannot run as given (exit status USAGE): the message says what to change."""


class Outcome(IntEnum):
    """One photo's (or probe's) outcome; its value is the exit status it leads to."""

    OK = 0
    REJECTED = 3  # the service refused the photo (4xx), or it could not be read here
    UNAVAILABLE = 4  # 503/504 (or no answer within --timeout) after the retries: busy or not ready
    UNREACHABLE = 5  # no connection: nothing listens at --url, or the host is unknown
    SERVER_ERROR = 6  # 5xx, a broken connection or an answer that is not the API's

    @property
    def label(self) -> str:
        """The outcome's name in output records ("ok", "rejected", "server_error", ...)."""
        return self.name.lower()


def exit_status(outcomes: Iterable[Outcome]) -> int:
    """The exit status of a run: the highest of its outcomes' codes, 0 when every photo was classified."""
    return max(outcomes, default=Outcome.OK).value


EPILOG = """\
exit status:
  0  every photo classified (health: the service is ready)
  2  usage error: bad arguments, a photo that does not exist, an unusable --output
  3  the service refused some photos (4xx: not JPEG/PNG, empty, too large), or one could not be read
  4  the service is busy or not ready: 503/504 or no answer within --timeout, after --retries
  5  cannot connect to --url
  6  server error: another 5xx, a broken connection or an unexpected answer
When photos end differently, the highest status applies.
"""
