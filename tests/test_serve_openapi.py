"""docs/openapi.json is the server's own OpenAPI document: regenerate it with
``make openapi`` when the API changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="corral serve needs the serve extra")

from corral.server import openapi

PUBLISHED = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def test_the_published_document_is_the_servers() -> None:
    assert PUBLISHED.read_text() == openapi.text(), "docs/openapi.json is stale: make openapi"


def test_every_v1_operation_documents_its_refusals_and_no_dashboard_page_is_in_it() -> None:
    paths = json.loads(PUBLISHED.read_text())["paths"]
    assert all(p.startswith(("/v1/", "/healthz", "/readyz", "/metrics")) for p in paths)
    for path, item in paths.items():
        if path.startswith("/v1/"):
            for method, operation in item.items():
                codes = set(operation["responses"])
                assert {"401", "403", "404", "422"} <= codes, (method, path)
