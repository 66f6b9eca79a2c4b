"""The API's OpenAPI document as published in ``docs/openapi.json`` (``make openapi``
writes it; a test checks that it is the server's own)."""

from __future__ import annotations

import json
import sys
from typing import Any


def document() -> dict[str, Any]:
    """The OpenAPI document of :func:`corral.server.create_app` (any store: the document
    does not depend on it)."""
    from corral.server.app import create_app
    from corral.stores.memory import MemoryStore

    schema: dict[str, Any] = create_app(MemoryStore()).openapi()
    return schema


def text() -> str:
    """The document as published: indented, keys sorted, one trailing newline."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(text())
