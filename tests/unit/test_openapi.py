"""The OpenAPI document: valid 3.1, one operation for every route, and the app answers as it says."""

from __future__ import annotations

import re

import schemathesis
from openapi_spec_validator import validate

from services.web import apidocs
from tests.support.openapi import check_every_operation

# Routes with a method but no operation: Flask's static files.
UNDOCUMENTED = {"/static/{filename}"}


def test_document_is_valid_openapi_3_1(client):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_is_documented_and_every_operation_is_a_route(app):
    routes = {
        (re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    routes = {(path, method) for path, method in routes if path not in UNDOCUMENTED}
    documented = {(op["path"], op["method"].lower()) for op in apidocs.operations(apidocs.document())}
    assert routes == documented


def test_operation_ids_are_unique():
    ids = [op["op"]["operationId"] for op in apidocs.operations(apidocs.document())]
    assert len(ids) == len(set(ids))


def test_docs_page_lists_every_operation_without_outside_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for op in apidocs.operations(apidocs.document()):
        assert f'id="{op["op"]["operationId"]}"' in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # works offline: nothing from another site


def test_app_answers_as_documented(make_app):
    """Generated requests for every operation (in process, fake model tier) get documented answers."""
    check_every_operation(schemathesis.openapi.from_wsgi("/openapi.json", make_app()), examples=15)
