"""The environment a test's child process starts with: the developer's shell minus zerolens's settings."""

from __future__ import annotations

import os

# ZEROLENS_* settings would override what a test sets; PROMETHEUS_* ones switch prometheus-client into
# multiprocess mode (or change its output) behind the test's back.
_PREFIXES = ("ZEROLENS_", "PROMETHEUS_")


def clean_environ(**extra: str) -> dict[str, str]:
    """os.environ without any ZEROLENS_* or PROMETHEUS_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_PREFIXES)}
    return env | extra
