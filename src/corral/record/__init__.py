"""What corral records and exports: the audit log, traces, metrics, event sinks, redaction.

- ``audit``: verify, checkpoint and export the hash-chained audit log;
- ``tracing``: OpenTelemetry spans of runs (GenAI conventions);
- ``metrics``: Prometheus metrics;
- ``sinks``: where a run's events go besides the store;
- ``redact``: what is scrubbed before anything is recorded;
- ``decisions``: reading refusals back out of events.

Imports ``corral.stores`` and the top-level modules.
"""
