"""Models for ``--model python:golden_models:FACTORY`` in tests/test_golden.py: a noisy one
whose tokens per request and wording vary from run to run (a cycle of four), and a heavy
one past that spread."""

from __future__ import annotations

import itertools

from corral.golden.scripted import GoldenScript
from corral.golden.suite import ScriptTurn

_runs = itertools.count()
#: Tokens per request of the noisy model's runs, in the order it plays them (cycling).
NOISY = (100, 110, 120, 130)
ANSWERS = ("Refunds take 14 days.", "Refunds take about 14 days.")


def _model(per_request: int, answer: str) -> GoldenScript:
    half = per_request - 10
    return GoldenScript(
        [
            ScriptTurn(call="kb.search", args={"q": "refund"}, input_tokens=half, output_tokens=10),
            ScriptTurn(answer=answer, input_tokens=half, output_tokens=10),
        ]
    )


def noisy() -> GoldenScript:
    """The next run of the noisy model: every four runs play each of :data:`NOISY` once."""
    n = next(_runs)
    return _model(NOISY[n % len(NOISY)], ANSWERS[n % len(ANSWERS)])


def heavy() -> GoldenScript:
    """A model past the noisy one's spread: 160 tokens per request."""
    return _model(160, ANSWERS[0])
