"""Everything that measures a target: workloads, load generation, metrics, readiness checks."""
