"""The API's description: the OpenAPI 3.1 document at /openapi.json and a page of it at /docs.

The document is written by hand in openapi.yaml, beside this module, and shipped in the package; the page
is rendered here from it, so it needs no script and nothing from another site. Tests check the document
against the app's routes and answers, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response, jsonify, render_template

bp = Blueprint("apidocs", __name__)
METHODS = ("get", "post", "put", "patch", "delete")


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document, with this package's version."""
    text = resources.files("services.web").joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # a source tree, not installed
        doc["info"]["version"] = importlib.metadata.version("zerolens")
    return doc


def operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every operation of the document, in its order, with its path, method and path-level parameters."""
    found = []
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                op = item[method]
                params = [*item.get("parameters", []), *op.get("parameters", [])]
                found.append({"path": path, "method": method.upper(), "op": op, "parameters": params})
    return found


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A component the node refers to ($ref), or the node itself."""
    ref = node.get("$ref", "")
    if not ref.startswith("#/"):
        return node
    for part in ref[2:].split("/"):
        doc = doc[part]
    return doc


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document."""
    return jsonify(document())


@bp.get("/docs")
def docs() -> str:
    """The document as a page."""
    doc = document()
    return render_template(
        "apidocs.html",
        doc=doc,
        operations=operations(doc),
        resolve=lambda node: _resolve(doc, node),
        pretty=_pretty,
    )
