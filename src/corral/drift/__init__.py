"""Live drift: the figures of recent runs compared with those of the runs before them.

- :mod:`corral.drift.figures`: the two windows, read from the store, and their figures;
- :mod:`corral.drift.compare`: each figure judged against its threshold, the runs that
  moved it most, and what changed between the windows (models, tool definitions, policy);
- :mod:`corral.drift.report`: the report as ``corral drift`` prints it and its JSON.

Imports the stores, the policy, and the figures' definitions (:mod:`corral.record.figures`).
"""
