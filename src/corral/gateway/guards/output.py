"""Output checks: a tool's output made JSON as pydantic writes it, validated against its
output schema, cleaned (HTML stripped, registered secrets scrubbed before the cap, capped);
one that fails stops the run with ``invalid_tool_output`` — or, with the output guard
observed, is let through as plain text or JSON, scrubbed and capped all the same.

Imports the gateway's hygiene and the per-call state.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from corral import _safe
from corral.exceptions import Stop
from corral.gateway import _outputs
from corral.gateway.hygiene import OutputProblem, Scrubber, clean_output

if TYPE_CHECKING:
    from corral.gateway.call import Call
    from corral.gateway.effective import Effective


def checked(value: Any, eff: Effective, scrub: Scrubber | None) -> Any:
    """``value`` (JSON data) as the model sees it: valid against the output schema, cleaned
    and capped; raises the problem found."""
    problems = eff.tool.validate_output(value, eff.output_schema)
    if problems:
        raise OutputProblem("schema", "; ".join(problems))
    observation = clean_output(
        value,
        strip_html=eff.strip_html,
        max_chars=eff.max_output_chars,
        scrub=scrub,
        cut_json=eff.output_schema is None,  # a validated value is never cut
    )
    if type(observation) is not str or "\0" in observation:
        observation = _outputs.as_json(observation)
    return observation


def invalid(call: Call, value: Any, exc: OutputProblem, scrub: Scrubber | None) -> Any:
    """An output that failed its checks: stop ``invalid_tool_output`` (a write's key
    completed with the failure: the side effect happened), or, observed, let it through."""
    core, eff, key, name = call.run, call.eff, call.idem_key, call.tool_name
    assert eff is not None
    problem = core.redactor.text(str(exc))  # a schema problem quotes the output
    core.events.add("tool_call", tool=name, outcome="invalid_output", attempt=call.attempt,
                    problem=problem, **call.ids)  # fmt: skip
    stop = Stop(
        "invalid_tool_output", name, tool=name, message=problem, extra={"problem": exc.detail}
    )
    if call.claimed and key is not None and not core.observes("output"):
        # The side effect happened: record it, so a resumed run does not do it again.
        core.store_call(core.store.complete, key,
                        {"error": problem, "reason": "invalid_tool_output"},
                        tenant=core.tenant)  # fmt: skip
    core.events.flush()
    core.deny(stop, "output")
    return _let_through(value, exc, eff, scrub)


def _let_through(value: Any, found: OutputProblem, eff: Effective, scrub: Scrubber | None) -> Any:
    """What the model sees of an output that failed its checks, in observe mode: the output
    as plain JSON when it is one (a schema or size problem), else its text form; scrubbed
    all the same (before any cut), capped, and never raising."""
    if found.detail in ("schema", "output_too_large"):
        # Not JSON after all, or too deep to scrub: shown as text below.
        with contextlib.suppress(Exception):
            shown = _outputs.as_json(_outputs.plain(value))
            return shown if scrub is None else scrub.secrets_only(shown)
    # Read well past the cap, so that the cut below (after scrubbing) is what bounds it and
    # no secret straddles a cut made before the scrubbing.
    raw = _safe.text(value, 2 * eff.max_output_chars + 4096)
    return clean_output(raw, strip_html=False, max_chars=eff.max_output_chars, scrub=scrub)
