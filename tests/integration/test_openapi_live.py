"""The running system (gunicorn, model server) answers every operation as /openapi.json says."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.integration


def test_running_system_answers_as_documented(stack):
    _, web = stack
    api = schemathesis.openapi.from_url(f"http://127.0.0.1:{web.ports['http']}/openapi.json")
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def answers_as_documented(case: schemathesis.Case) -> None:
            # A schema cannot say "a decodable photo": schema-valid bytes are rightly refused (400/415).
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        answers_as_documented()
