"""Everything that measures a target: workloads, request records, metric definitions, the load
generator, readiness checks and their CLI (python -m checks ...)."""
