"""Drive every operation of an OpenAPI document against the app that serves it (schemathesis)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance


def check_every_operation(api: Any, examples: int) -> None:
    """Generated requests for each operation get answers as documented (status, type, headers, schema)."""
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
        )
        def answers_as_documented(case: schemathesis.Case) -> None:
            # A schema cannot say "a decodable photo": schema-valid bytes are rightly refused (400/415).
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        answers_as_documented()
