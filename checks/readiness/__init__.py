"""Judging readiness: the checks (performance, resources, security, monitoring, reliability),
SLO profiles and the verdict (python -m checks run)."""
