"""Everything that measures a target: request records, metric definitions, the load
generator, readiness checks and their CLI (python -m checks ...)."""
