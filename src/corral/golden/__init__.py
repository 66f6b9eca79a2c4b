"""Golden tasks: a suite of tasks with tool fixtures and expectations, run against a model,
checked, and compared with a saved baseline to catch drift (``corral golden run``).

The parts: :mod:`.suite` (the file's schema), :mod:`.load` (reading it, with the line of each
problem), :mod:`.fixtures` (fixture tools), :mod:`.scripted` and :mod:`.models` (the model a
spec names), :mod:`.runner` (the runs), :mod:`.expect` and :mod:`.jsonpath` (the checks),
:mod:`.figures` and :mod:`.baseline` (what a run measured, the baseline and the drift rule).
docs/golden.md describes the file format and the rule.
"""
