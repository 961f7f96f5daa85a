"""The running system (gunicorn, model server) answers every operation as /openapi.json says."""

from __future__ import annotations

import pytest
import schemathesis

from tests.support.openapi import check_every_operation

pytestmark = pytest.mark.integration


def test_running_system_answers_as_documented(stack):
    _, web = stack
    url = f"http://127.0.0.1:{web.ports['http']}/openapi.json"
    check_every_operation(schemathesis.openapi.from_url(url), examples=5)
