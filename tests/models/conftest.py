"""Fixtures: protocol servers on 127.0.0.1, started and stopped around each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import AnthropicServer, OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """An OpenAI-compatible server on a free local port; stopped after the test."""
    with OpenAIServer() as server:
        yield server
    assert server.problems == [], server.problems


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    """An Anthropic Messages server on a free local port; stopped after the test."""
    with AnthropicServer() as server:
        yield server
    assert server.problems == [], server.problems
